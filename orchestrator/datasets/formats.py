"""The dataset formats, recognised by content (never by name), read into reference records;
and the parsed records kept in the cache under the files' sha256."""

from __future__ import annotations

import bz2
import hashlib
import json
import logging
import os
import re
import sqlite3
import tempfile
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers
from ase.units import GPa

from adapters.wire import DIMENSIONS
from orchestrator.datasets.extxyz import id_from_extxyz
from orchestrator.datasets.records import (ENERGY_KEYS, ID_KEYS, dimension_from_name, finish_records, first_of,
                                          label_of, unique_ids)
from orchestrator.errors import BenchError
from orchestrator.fetch import sha256_of

log = logging.getLogger("orchestrator.datasets")

#: Files in a dataset folder that are never data.
KBAR = 0.1 * GPa  # eV/Å^3 per kbar


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
        records, invalid = finish_records(records, path, file_label)
        skipped.update(invalid)
        structures.extend(records)
        counts = {d: 0 for d in DIMENSIONS}
        for atoms in records:
            counts[atoms.info["dimension"]] += 1
        log.info("%s: %s%s, %d structures (%s)", path.name, kind, " (bz2)" if compressed else "", len(records),
                 ", ".join(f"{d} {n}" for d, n in counts.items()))
    if not structures:
        raise BenchError(f"none of {', '.join(p.name for p in files)} holds structures in a recognised format")
    structures = unique_ids(structures)
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
    file_label = label_of(data, str(path)) if isinstance(data, dict) else None
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
    label = label_of(data, where) or label_of(entry, where) or file_label
    if label:
        atoms.info["label_of"] = label
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


def _record(numbers, positions, cell, keys: dict, *, stored: dict, default_id: str, where: str,
            energy_hint: str) -> Atoms:
    """A reference record from one database row or extxyz frame.

    keys: its key-value pairs or info (id, energy, dimensionality label);
    stored: the energy, forces and stress it carries as computed results.
    """
    atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=True)
    _, mat_id = first_of(keys, ID_KEYS)
    atoms.info["id"] = str(mat_id) if mat_id not in (None, "") else default_id
    _, energy = first_of(keys, ENERGY_KEYS)
    if energy is None:
        energy = stored["energy"]
    if energy is None:
        raise BenchError(f"{where}: no reference energy ({energy_hint})")
    atoms.info["energy_ref_ev"] = float(energy)
    label = label_of(keys, where)
    if label:
        atoms.info["label_of"] = label
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
