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

import bz2
import hashlib
import io
import json
import logging
import os
import random
import re
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols
from ase.units import GPa

from adapters.wire import DIMENSIONS
from metrics.geometry import dimension_of, periodic_axes
from orchestrator import runfolder
from orchestrator.errors import BenchError
from orchestrator.download import fetch_dataset, identity_of, is_data_name, sha256_of

log = logging.getLogger("orchestrator.datasets")

#: Keys that carry a per-structure dimensionality label, in order of preference.
DIMENSION_KEYS = ("id_dimension", "dimension", "dimensionality")
#: Keys that carry the total uncorrected reference energy (eV), in order of preference.
ENERGY_KEYS = ("uncorrected_energy", "energy_ref_ev", "energy_total", "energy")
ID_KEYS = ("mat_id", "id")
#: Files in a dataset folder that are never data.
KBAR = 0.1 * GPa  # eV/Å^3 per kbar
#: Positions, cell (Å) and energy (eV) within this are the same structure seen twice.
SAME_TOL = 1e-4
#: How many ids a warning lists before it says "and N more".
SHOW_IDS = 10


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


# --------------------------------------------------------------------------- finding the files

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


# --------------------------------------------------------------------------- formats

def sniff(path: Path) -> tuple[str, bool]:
    """(format, compressed) of a file by its first bytes: "db" (SQLite ASE database),
    "json" (entries or ASE JSON database), "extxyz", or "unknown"."""
    with open(path, "rb") as handle:
        raw = handle.read(16)
    compressed = raw.startswith(b"BZh")
    if compressed:
        with bz2.open(path, "rb") as handle:
            raw = handle.read(512)
    else:
        with open(path, "rb") as handle:
            raw = handle.read(512)
    if raw.startswith(b"SQLite format 3\x00"):
        return "db", compressed
    text = raw.lstrip()
    if text[:1] in (b"{", b"["):
        return "json", compressed
    first = text.split(b"\n", 1)[0].strip()
    if first.isdigit():
        return "extxyz", compressed
    return "unknown", compressed


class NotADataset(BenchError):
    """A file whose content is none of the recognised formats."""


#: Bump when what read_files makes of the same files changes (checks, ids, periodic axes).
PARSED_FORMAT = 1


def read_files_cached(files: list[Path], sums: dict[str, str], cache_dir: Path
                      ) -> tuple[list[Atoms], dict[str, str], list[Path]]:
    """read_files, kept in cache_dir/parsed/ under the files' sha256 (and this reader's and
    ASE's versions): parsing and checking 40,000 structures takes ~20 s, loading them back
    ~1.5 s, so a rerun, a report or a no-op bench does not pay it again."""
    import pickle

    import ase

    key = hashlib.sha256(json.dumps([sorted((p.name, sums[p.name]) for p in files), PARSED_FORMAT,
                                     ase.__version__]).encode()).hexdigest()[:24]
    cached = Path(cache_dir) / "parsed" / f"{key}.pickle"
    if cached.is_file():
        try:
            structures, skipped, names = pickle.loads(cached.read_bytes())
            by_name = {p.name: p for p in files}
            return structures, skipped, [by_name[name] for name in names]
        except Exception:  # a damaged or foreign cache file: parse again, and replace it
            log.info("%s: not a usable parsed cache; reading the files again", cached)
    structures, skipped, used = read_files(files, sums, cache_dir)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(pickle.dumps((structures, skipped, [p.name for p in used]), protocol=5))
        tmp.replace(cached)
    except OSError as err:  # a read-only cache: parse every time
        log.info("cannot keep the parsed dataset in %s (%s)", cached.parent, err)
    return structures, skipped, used


def read_files(files: list[Path], sums: dict[str, str], cache_dir: Path
               ) -> tuple[list[Atoms], dict[str, str], list[Path]]:
    """Reference records from every file, checked, with unique ids, sorted by (dimension, id);
    the structures skipped as invalid (id -> reason; see invalid_reason); the files read.
    In a dataset of several files, one in no recognised format is skipped with a warning
    (an index may list more than structures); a single such file is an error."""
    structures, skipped, used = [], {}, []
    for path in files:
        try:
            kind, compressed, records = _read_file(path, sums, cache_dir)
        except (EOFError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BenchError(f"{path}: damaged or not a dataset ({type(err).__name__}: {err}); download it "
                             "again (delete it from the cache) or move it out of the dataset folder") from None
        except NotADataset as err:
            if len(files) == 1:
                raise
            log.warning("skipped %s", err)
            continue
        if not records:
            raise BenchError(f"{path}: holds no structure")
        used.append(path)
        file_label = dimension_from_name(path.name)
        records, invalid = _finish(records, path, file_label)
        skipped.update(invalid)
        structures.extend(records)
        counts = {d: 0 for d in DIMENSIONS}
        for atoms in records:
            counts[atoms.info["dimension"]] += 1
        log.info("%s: %s%s, %d structures (%s)", path.name, kind, " (bz2)" if compressed else "", len(records),
                 ", ".join(f"{d} {n}" for d, n in counts.items()))
    if not structures:
        raise BenchError(f"none of {', '.join(p.name for p in files)} holds structures in a recognised format")
    structures = _unique_ids(structures)
    structures.sort(key=lambda a: (a.info["dimension"], a.info["id"]))
    return structures, skipped, used


def _read_file(path: Path, sums: dict[str, str], cache_dir: Path) -> tuple[str, bool, list[Atoms]]:
    kind, compressed = sniff(path)
    if kind == "db":
        db_path = _decompressed(path, sums.get(path.name) or sha256_of(path), cache_dir) if compressed else path
        return kind, compressed, _read_ase_db(db_path, "db", path)
    if kind == "json":
        return kind, compressed, _read_json(path, compressed)
    if kind == "extxyz":
        return kind, compressed, _read_extxyz(path, compressed)
    raise NotADataset(f"{path}: not a recognised dataset format (ASE database, Alexandria entries JSON "
                      f"or extxyz, each plain or bz2-compressed)")


#: Two atoms closer than this (Å, periodic images included) sit on top of each other.
MIN_DISTANCE_A = 0.5


def invalid_reason(atoms: Atoms) -> str | None:
    """Why a record is no structure to relax, or None: no atoms, non-finite positions or
    cell, a singular cell, an unknown element, two atoms on top of each other."""
    if len(atoms) == 0:
        return "no atoms"
    if not np.isfinite(atoms.positions).all():
        return "non-finite positions"
    if not np.isfinite(atoms.cell.array).all():
        return "non-finite cell"
    if abs(np.linalg.det(atoms.cell.array)) < 1e-6:
        return "singular (zero-volume) cell"
    if ((atoms.numbers < 1) | (atoms.numbers >= len(chemical_symbols))).any():
        return "unknown element"
    if _closest_distance(atoms) < MIN_DISTANCE_A:
        return f"atoms closer than {MIN_DISTANCE_A} Å"
    return None


def _closest_distance(atoms: Atoms) -> float:
    """The shortest distance between two atoms, periodic images included: over the 27
    neighbouring cells for small structures (fast), with ASE's neighbor list for large ones."""
    from ase.neighborlist import neighbor_list

    if len(atoms) > 64:
        found = neighbor_list("d", atoms, MIN_DISTANCE_A)
        return float(found.min()) if len(found) else np.inf
    shifts = np.array(np.meshgrid([-1, 0, 1], [-1, 0, 1], [-1, 0, 1], indexing="ij")).reshape(3, -1).T
    images = shifts @ atoms.cell.array  # (27, 3)
    delta = atoms.positions[None, :, None, :] - atoms.positions[:, None, None, :] + images[None, None]
    distance = np.linalg.norm(delta, axis=-1)  # (n, n, 27)
    distance[np.arange(len(atoms)), np.arange(len(atoms)), 13] = np.inf  # an atom and itself
    return float(distance.min())


def _finish(records: list[Atoms], path: Path, file_label: str | None) -> tuple[list[Atoms], dict[str, str]]:
    """The valid records with periodic_axes, dimension (from the geometry), dimension_label
    and source filled in, and the invalid ones (id -> reason), skipped with one warning;
    label/geometry disagreements are reported."""
    disagree, valid, invalid = [], [], {}
    for atoms in records:
        reason = invalid_reason(atoms)
        if reason:
            invalid[atoms.info["id"]] = reason
            continue
        valid.append(atoms)
        axes = periodic_axes(atoms)
        detected = dimension_of(axes)
        label = atoms.info.pop("_label", None) or file_label
        atoms.info["periodic_axes"] = axes
        atoms.info["dimension"] = detected
        atoms.info["dimension_label"] = label or detected
        atoms.info["source"] = path.name
        if label and label != detected:
            disagree.append(f"{atoms.info['id']} ({label}, geometry {detected} '{axes}')")
    if invalid:
        log.warning("%s: skipped %d structure(s) that cannot be relaxed: %s", path.name, len(invalid),
                    _some([f"{sid} ({why})" for sid, why in invalid.items()]))
    if disagree:
        log.warning("%s: %d structure(s) whose dimensionality label disagrees with the periodic axes found in "
                    "their geometry; the geometry decides, the label is kept as dimension_label: %s",
                    path.name, len(disagree), _some(disagree))
    return valid, invalid


def _some(items: list[str]) -> str:
    more = len(items) - SHOW_IDS
    return ", ".join(items[:SHOW_IDS]) + (f" and {more} more" if more > 0 else "")


def normalise_dimension(value) -> str | None:
    """"2D", "2d", 2 or "2" -> "2D"; None for a missing value; an error for anything else."""
    if value is None or value == "":
        return None
    text = str(value).strip().upper()
    if not text.endswith("D"):
        text += "D"
    if text not in DIMENSIONS:
        raise BenchError(f"dimensionality {value!r} is not one of {', '.join(DIMENSIONS)}")
    return text


def dimension_from_name(name: str) -> str | None:
    """A label such as "2D" standing alone in a file name ("alexandria_2D.json.bz2");
    "0123D_pbe.db" names no single dimensionality."""
    found = {m.upper() for m in re.findall(r"(?<![0-9A-Za-z])([0-3][dD])(?![0-9A-Za-z])", name)}
    return found.pop() if len(found) == 1 else None


def _label(mapping: dict, where: str) -> str | None:
    for key in DIMENSION_KEYS:
        if mapping.get(key) not in (None, ""):
            try:
                return normalise_dimension(mapping[key])
            except BenchError as err:
                raise BenchError(f"{where}: {key}: {err}") from None
    return None


def _first(mapping: dict, keys: tuple[str, ...]):
    for key in keys:
        if mapping.get(key) is not None:
            return key, mapping[key]
    return None, None


# --- Alexandria entries JSON

def _read_json(path: Path, compressed: bool) -> list[Atoms]:
    opener = bz2.open if compressed else open
    with opener(path, "rt", encoding="utf-8") as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as err:
            raise BenchError(f"{path}: not valid JSON ({err})") from None
    if isinstance(data, dict) and "ids" in data and "nextid" in data:
        return _read_ase_db(path, "json", path, compressed)
    entries = data.get("entries") if isinstance(data, dict) else data
    if not isinstance(entries, list) or (entries and not (isinstance(entries[0], dict) and "structure" in entries[0])):
        raise NotADataset(f"{path}: JSON but neither Alexandria entries ({{\"entries\": [...]}} of "
                         f"ComputedStructureEntry dicts) nor an ASE database")
    file_label = _label(data, str(path)) if isinstance(data, dict) else None
    return [_entry_to_atoms(entry, f"{path.name} entry {i}", file_label) for i, entry in enumerate(entries)]


def _entry_to_atoms(entry: dict, where: str, file_label: str | None) -> Atoms:
    """One pymatgen ComputedStructureEntry dict as a reference record (no pymatgen needed)."""
    try:
        structure, data = entry["structure"], entry.get("data") or {}
        sites = structure["sites"]
        symbols = []
        for site in sites:
            species = site["species"]
            if len(species) != 1 or float(species[0].get("occu", 1)) != 1.0:
                raise BenchError(f"{where}: a site with partial occupancy {species} is not a structure to relax")
            symbols.append(species[0]["element"])
        atoms = Atoms(numbers=[atomic_numbers.get(s, 0) for s in symbols], positions=[s["xyz"] for s in sites],
                      cell=structure["lattice"]["matrix"], pbc=True)
        mat_id = data.get("mat_id") or entry.get("entry_id")
        energy = entry["energy"]
    except (KeyError, TypeError, IndexError) as err:
        raise BenchError(f"{where}: not a ComputedStructureEntry dict (missing {err})") from None
    if not mat_id:
        raise BenchError(f"{where}: no data.mat_id")
    atoms.info["id"] = str(mat_id)
    atoms.info["energy_ref_ev"] = float(energy)
    label = _label(data, where) or _label(entry, where) or file_label
    if label:
        atoms.info["_label"] = label
    forces = [site.get("properties", {}).get("forces") for site in sites]
    if all(f is not None for f in forces):
        atoms.arrays["forces_ref"] = np.array(forces, dtype=float).reshape(len(atoms), 3)
    if data.get("stress") is not None:
        atoms.info["stress_ref"] = _voigt(-KBAR * np.asarray(data["stress"], dtype=float), where)
    return atoms


def _voigt(stress: np.ndarray, where: str) -> np.ndarray:
    if stress.shape == (3, 3):
        return stress.reshape(9)[[0, 4, 8, 5, 2, 1]]
    if stress.shape == (6,):
        return stress
    raise BenchError(f"{where}: stress of shape {stress.shape}, expected 3x3 or 6 Voigt components")


# --- ASE database

def _record(numbers, positions, cell, keys: dict, *, stored: dict, default_id: str, where: str,
            energy_hint: str) -> Atoms:
    """A reference record from one database row or extxyz frame.

    keys: its key-value pairs or info (id, energy, dimensionality label);
    stored: the energy, forces and stress it carries as computed results.
    """
    atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=True)
    _, mat_id = _first(keys, ID_KEYS)
    atoms.info["id"] = str(mat_id) if mat_id not in (None, "") else default_id
    _, energy = _first(keys, ENERGY_KEYS)
    if energy is None:
        energy = stored["energy"]
    if energy is None:
        raise BenchError(f"{where}: no reference energy ({energy_hint})")
    atoms.info["energy_ref_ev"] = float(energy)
    label = _label(keys, where)
    if label:
        atoms.info["_label"] = label
    if stored["forces"] is not None:
        atoms.arrays["forces_ref"] = np.array(stored["forces"], dtype=float)
    if stored["stress"] is not None:
        atoms.info["stress_ref"] = _voigt(np.asarray(stored["stress"], dtype=float), where)
    return atoms


def _read_ase_db(db_path: Path, backend: str, original: Path, compressed: bool = False) -> list[Atoms]:
    import ase.db

    if backend == "json" and compressed:
        db_path = _plain_copy(original)
    try:
        db = ase.db.connect(str(db_path), type=backend, create_indices=False, use_lock_file=False) \
            if backend == "db" else ase.db.connect(str(db_path), type=backend, use_lock_file=False)
        with db:  # one connection for all rows, not one per row
            rows = list(db.select())
    except (sqlite3.DatabaseError, ValueError, KeyError) as err:
        raise BenchError(f"{original}: an ASE database that cannot be read ({err})") from None
    finally:
        if backend == "json" and compressed:
            db_path.unlink(missing_ok=True)
    records = []
    for row in rows:
        records.append(_record(
            row.numbers, row.positions, row.cell, dict(row.key_value_pairs),
            stored={"energy": row.get("energy"), "forces": row.get("forces"), "stress": row.get("stress")},
            default_id=f"{original.name}:{row.id}", where=f"{original.name} row {row.id}",
            energy_hint="key-value pair uncorrected_energy, or a stored energy"))
    return records


def _decompressed(path: Path, sha: str, cache_dir: Path) -> Path:
    """A bz2-compressed database decompressed once into the cache, named by its content."""
    target = cache_dir / ".decompressed" / f"{sha[:16]}-{path.name.removesuffix('.bz2')}"
    if target.exists():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only cache: decompress next to other temporary files
        target = Path(tempfile.gettempdir()) / "umlip-0123d-decompressed" / target.name
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
    log.info("decompressing %s into %s", path.name, target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as out, bz2.open(path, "rb") as src:
            for block in iter(lambda: src.read(1 << 20), b""):
                out.write(block)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _plain_copy(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(suffix=".json")
    with os.fdopen(fd, "wb") as out, bz2.open(path, "rb") as src:
        for block in iter(lambda: src.read(1 << 20), b""):
            out.write(block)
    return Path(tmp)


# --- extxyz

def _read_extxyz(path: Path, compressed: bool) -> list[Atoms]:
    from ase.io import read

    opener = bz2.open if compressed else open
    with opener(path, "rt", encoding="utf-8") as handle:
        try:
            frames = read(handle, index=":", format="extxyz")
        except Exception as err:  # ase raises many kinds on malformed extxyz
            raise BenchError(f"{path}: looks like extxyz but cannot be read ({type(err).__name__}: {err})") from None
    with opener(path, "rt", encoding="utf-8") as handle:
        raw_ids = _extxyz_ids(handle)
    records = []
    for i, frame in enumerate(frames):
        calc = frame.calc.results if frame.calc is not None else {}
        info = {**frame.info, **(raw_ids[i] if i < len(raw_ids) else {})}
        records.append(_record(
            frame.numbers, frame.positions, frame.cell, info,
            stored={"energy": calc.get("energy", calc.get("free_energy")),
                    "forces": frame.arrays.get("forces_ref", calc.get("forces")),
                    "stress": frame.info.get("stress_ref", calc.get("stress"))},
            default_id=f"{path.name}:{i}", where=f"{path.name} frame {i}",
            energy_hint="info uncorrected_energy, energy_ref_ev or energy"))
    return records


_ID_PATTERN = re.compile(r'(?:^|\s)(' + "|".join(ID_KEYS) + r')=("(?:[^"\\]|\\.)*"|\S+)')


def _extxyz_ids(handle) -> list[dict[str, str]]:
    """The id keys of every frame's comment line as written, as text (ASE's parser turns
    "0042" into 42 and "T" into True), decoded where this tool encoded them (extxyz_id)."""
    ids = []
    while True:
        count = handle.readline()
        if not count.strip():
            return ids
        comment = handle.readline()
        ids.append({key: id_from_extxyz(re.sub(r"\\(.)", r"\1", value[1:-1]) if value.startswith('"') else value)
                    for key, value in _ID_PATTERN.findall(comment)})
        for _ in range(int(count)):
            handle.readline()


#: Marks an id written percent-encoded into an extxyz file (see extxyz_id).
ENCODED_ID = "id:"


def extxyz_id(sid: str) -> str:
    """An id as an extxyz file can hold it. ASE's extxyz reader turns "0042" into 42, "T"
    into True, drops tabs and backslashes, and a newline breaks the file: an id it would
    not read back as itself is written percent-encoded behind ENCODED_ID (id_from_extxyz
    decodes it; `urllib.parse.unquote` does too)."""
    from ase.io.extxyz import key_val_dict_to_str, key_val_str_to_dict

    if not sid.startswith(ENCODED_ID) and "\n" not in sid:
        if key_val_str_to_dict(key_val_dict_to_str({"id": sid})).get("id") == sid:
            return sid
    return ENCODED_ID + quote(sid, safe="")


def id_from_extxyz(value) -> str:
    """The id an extxyz file holds (see extxyz_id)."""
    text = str(value)
    return unquote(text[len(ENCODED_ID):]) if text.startswith(ENCODED_ID) else text


def write_extxyz(path: Path, structures) -> None:
    """Reference records as extxyz (bz2-compressed when the name ends in .bz2), written
    atomically, that load_dataset reads back to the same records. periodic_axes and
    dimension are left out: ASE writes the 0D value "" as a bare `periodic_axes=`, which
    swallows the next key on reading, and the loader derives both from the geometry
    again; the label is written as `id_dimension`, as the authors' database has it."""
    from ase.io import write

    path = Path(path)
    records = []
    for atoms in structures:
        copy = atoms.copy()
        copy.info = {k: v for k, v in atoms.info.items() if k not in ("periodic_axes", "dimension", "dimension_label")}
        copy.info["id"] = extxyz_id(atoms.info["id"])
        if "dimension_label" in atoms.info:
            copy.info["id_dimension"] = atoms.info["dimension_label"]
        records.append(copy)
    with runfolder.replacing(path) as tmp, tmp.open("wb") as raw:
        with (bz2.open(raw, "wt") if path.name.endswith(".bz2") else io.TextIOWrapper(raw)) as out:
            write(out, records, format="extxyz")


# --------------------------------------------------------------------------- ids

def _same(a: Atoms, b: Atoms) -> bool:
    return (len(a) == len(b) and (a.numbers == b.numbers).all()
            and np.allclose(a.positions, b.positions, atol=SAME_TOL)
            and np.allclose(a.cell[:], b.cell[:], atol=SAME_TOL)
            and abs(a.info["energy_ref_ev"] - b.info["energy_ref_ev"]) <= SAME_TOL * len(a))


def _unique_ids(structures: list[Atoms]) -> list[Atoms]:
    """One record per id. The same mat_id twice (files in name order, then file order):
    an identical structure (same atoms, positions and cell within 1e-4 Å, energy within
    1e-4 eV/atom) is kept once, e.g. when a folder holds the same data as a database and as
    JSON; a different one keeps its mat_id with "~2", "~3", ... appended, with a warning,
    never taking an id that another structure of the data has (a real "x~2" stays x~2)."""
    seen: dict[str, list[Atoms]] = {}
    taken = {atoms.info["id"] for atoms in structures}
    out, dropped, renamed = [], [], []
    for atoms in structures:
        sid = atoms.info["id"]
        twins = seen.setdefault(sid, [])
        if any(_same(atoms, twin) for twin in twins):
            dropped.append(f"{sid} ({atoms.info['source']})")
            continue
        twins.append(atoms)
        if len(twins) > 1:
            new = f"{sid}~{len(twins)}"
            while new in taken:
                new += "~"
            taken.add(new)
            atoms.info["id"] = new
            renamed.append(f"{sid} -> {new} ({atoms.info['source']})")
        out.append(atoms)
    if dropped:
        log.info("%d structure(s) appear more than once with identical content and are kept once: %s",
                 len(dropped), _some(dropped))
    if renamed:
        log.warning("%d structure(s) share a mat_id with a different structure and were renamed: %s",
                    len(renamed), _some(renamed))
    return out


# --------------------------------------------------------------------------- subsets

def _as_list(value) -> list | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [v for v in re.split(r"[,\s]+", value) if v]
    return list(value) or None


def _subset_args(dimensions, limit_per_dimension, seed, elements, ids):
    dims = _as_list(dimensions)
    dims = sorted({normalise_dimension(d) for d in dims}) if dims else None
    els = _as_list(elements)
    if els:
        unknown = [e for e in els if e not in chemical_symbols[1:]]
        if unknown:
            raise BenchError(f"subset elements: {', '.join(map(str, unknown))} not a chemical symbol")
        els = sorted(set(els))
    id_list = _as_list(ids)
    id_list = sorted({str(i) for i in id_list}) if id_list else None
    if limit_per_dimension is not None:
        if isinstance(limit_per_dimension, bool) or int(limit_per_dimension) != limit_per_dimension \
                or limit_per_dimension < 1:
            raise BenchError(f"subset limit_per_dimension must be a positive integer, not {limit_per_dimension!r}")
        limit_per_dimension = int(limit_per_dimension)
    return dims, limit_per_dimension, int(seed or 0), els, id_list


def select(structures, *, dimensions=None, limit_per_dimension=None, seed=0, elements=None, ids=None) -> list[Atoms]:
    """The structures kept by every given filter, in their input order.

    dimensions: labels to keep ("0D".."3D"). elements: keep a structure that contains
    ANY of these elements. ids: keep exactly these ids (an id not in the data is an
    error). limit_per_dimension: then at most N per dimensionality, drawn as
    random.Random(seed).sample(sorted ids, N) separately for each dimensionality, so a
    dimensionality's draw does not depend on which others are selected.
    """
    dims, limit, seed, els, id_list = _subset_args(dimensions, limit_per_dimension, seed, elements, ids)
    keep = list(structures)
    if id_list:
        known = {a.info["id"] for a in keep}
        missing = [i for i in id_list if i not in known]
        if missing:
            raise BenchError(f"subset ids not in the dataset: {_some(missing)}")
        wanted = set(id_list)
        keep = [a for a in keep if a.info["id"] in wanted]
    if dims:
        keep = [a for a in keep if a.info["dimension"] in dims]
    if els:
        wanted_z = {atomic_numbers[e] for e in els}
        keep = [a for a in keep if wanted_z.intersection(a.numbers.tolist())]
    if limit:
        chosen = set()
        for dim in sorted({a.info["dimension"] for a in keep}):
            pool = sorted(a.info["id"] for a in keep if a.info["dimension"] == dim)
            chosen.update(random.Random(seed).sample(pool, min(limit, len(pool))))
        keep = [a for a in keep if a.info["id"] in chosen]
    return keep


def subset_key(*, dimensions=None, limit_per_dimension=None, seed=0, elements=None, ids=None) -> str:
    """A short stable name of a selection, "all" when nothing is selected; equal for equal
    selections however they are spelled (order, case of "2d", repeats). E.g.
    "0D+2D_n100s0_el-Fe+O_ids-1a2b3c4d"; the seed appears only with a limit."""
    dims, limit, seed, els, id_list = _subset_args(dimensions, limit_per_dimension, seed, elements, ids)
    parts = []
    if dims:
        parts.append("+".join(dims))
    if limit:
        parts.append(f"n{limit}s{seed}")
    if els:
        text = "+".join(els)
        parts.append("el-" + (text if len(els) <= 6 else hashlib.sha256(text.encode()).hexdigest()[:8]))
    if id_list:
        parts.append("ids-" + hashlib.sha256("\n".join(id_list).encode()).hexdigest()[:8])
    return "_".join(parts) or "all"
