"""Reference structures: find a dataset (registry name or local path), read it, select a subset.

A dataset is one or more files. Each file's format is recognised by its content,
never by its name, after undoing bz2 compression if the file starts with "BZh":

- an ASE database (SQLite, as the authors' `0123D_pbe.db`, or ASE's JSON
  backend); a bz2-compressed database is first decompressed once into
  `<cache_dir>/.decompressed/`;
- Alexandria entries JSON, `{"entries": [ComputedStructureEntry dicts]}` (or a
  bare list of such dicts), read with json + numpy + ase only;
- extended XYZ.

Every structure becomes one reference record, an `ase.Atoms` with pbc on all
three axes as stored and

    info["id"]             mat_id (see `_unique_ids` for collisions)
    info["dimension"]      "0D".."3D": the dimensionality of periodic_axes (the one rule)
    info["dimension_label"] "0D".."3D": the data's label, else the file's, else = dimension
    info["energy_ref_ev"]  total (uncorrected) PBE energy, eV
    info["periodic_axes"]  metrics.geometry.periodic_axes, e.g. "ab" for a layer
    info["source"]         file name
    arrays["forces_ref"]   (n, 3) eV/Å, where the data has forces
    info["stress_ref"]     6 Voigt components (xx yy zz yz xz xy), eV/Å^3, ASE's sign
                           convention (positive = tensile), where the data has stress

One rule decides a structure's dimensionality everywhere (subset, cell mask, extent,
fragmentation limit, tables): the number of periodic axes found in its geometry. The
cell mask needs those axes, and a label cannot say which lattice vectors they are. The
dataset's label is kept beside it as `dimension_label`, taken in this order from the
structure's own data (key id_dimension, dimension or dimensionality: an entry's `data`,
a database row's key-value pairs, an extxyz frame's info) or from a label standing alone
in the file name ("alexandria_2D.json.bz2"); where the two disagree, a warning lists the
ids, and the results flag them (`dimension_mismatch`).

Alexandria's `data.stress` is VASP's stress tensor in kbar with VASP's sign
(positive = compressive, the "in kB" line of OUTCAR, as pymatgen stores it);
ASE's VASP readers convert it the same way: stress_ase = -0.1 GPa * stress_kbar.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ase import Atoms

from adapters.wire import DIMENSIONS
from orchestrator.datasets.extxyz import extxyz_id, id_from_extxyz, write_extxyz
from orchestrator.datasets.formats import read_files_cached, sniff
from orchestrator.datasets.registry import fetch_dataset, identity_of, is_data_name
from orchestrator.datasets.subsets import select, subset_key
from orchestrator.errors import BenchError
from orchestrator.fetch import sha256_of

#: The package's face: the rest (formats, records, registry) is its own business.
__all__ = ["Dataset", "load_dataset", "select", "subset_key", "sniff", "write_extxyz", "extxyz_id", "id_from_extxyz"]

log = logging.getLogger("orchestrator.datasets")


@dataclass
class Dataset:
    name: str                      # registry name or the local path given
    files: list[Path]              # local, verified files
    sha256: dict[str, str]         # filename -> sha256
    structures: list[Atoms] = field(repr=False)  # reference records, sorted by (dimension, id)
    skipped: dict[str, str] = field(default_factory=dict)  # id -> why it is not a structure to relax

    @property
    def identity(self) -> str:
        """Short stable hash over the files' contents: the same data under another
        name or path has the same identity; any changed file changes it."""
        return identity_of(self.sha256)

    def counts(self) -> dict[str, int]:
        out = {d: 0 for d in DIMENSIONS}
        for atoms in self.structures:
            out[atoms.info["dimension"]] = out.get(atoms.info["dimension"], 0) + 1
        return out


def load_dataset(spec: str, registry: dict, cache_dir: Path, *, show_progress: bool = True) -> Dataset:
    """The dataset named `spec` in `registry` (downloaded into `cache_dir/<name>/`, or
    taken from there; or, for an entry with `path`, the files shipped there), or the
    local file or folder at path `spec`."""
    cache_dir = Path(cache_dir).expanduser()
    registry = registry or {}
    try:
        if spec in registry and "path" in registry[spec]:
            files, sums = _local_files(registry[spec]["path"], {})
            _check_pin(spec, registry[spec], files, sums)
        elif spec in registry:
            files, sums = fetch_dataset(spec, registry[spec], cache_dir, show_progress=show_progress)
        else:
            files, sums = _local_files(spec, registry)
        structures, skipped, files = read_files_cached(files, sums, cache_dir)
        sums = {p.name: sums[p.name] for p in files}  # a stray file never changes the identity
    except OSError as err:  # disk full, permissions, a file vanishing: the user's to fix
        raise BenchError(f"dataset {spec}: {err}") from err
    dataset = Dataset(str(spec), files, sums, structures, skipped)
    counts = ", ".join(f"{d} {n}" for d, n in dataset.counts().items())
    log.info("dataset %s (identity %s): %d structures (%s) from %d file(s)",
             spec, dataset.identity, len(structures), counts, len(files))
    return dataset


def _local_files(spec: str, registry: dict) -> tuple[list[Path], dict[str, str]]:
    path = Path(spec).expanduser()
    if not path.exists():
        names = ", ".join(sorted(registry)) or "none"
        raise BenchError(f"dataset {spec!r} is neither a registry name (known: {names}) nor an existing file or folder")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and is_data_name(p.name))
        if not files:
            raise BenchError(f"dataset folder {path} holds no data file")
    else:
        files = [path]
    return files, {p.name: sha256_of(p) for p in files}


def _check_pin(name: str, entry: dict, files: list[Path], sums: dict[str, str]) -> None:
    """A shipped file must still be the one its registry entry pins."""
    if entry.get("sha256") and [sums[p.name] for p in files] != [entry["sha256"]]:
        raise BenchError(f"dataset {name}: {files[0]} has sha256 {sums[files[0].name]}, but the registry pins "
                         f"{entry['sha256']}")
