"""What makes a reference record: its checks (a structure to relax or not, and why), its
dimensionality label, its id (unique within a dataset), and the keys the formats read them from."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from adapters.wire import DIMENSIONS
from metrics.geometry import dimension_of, periodic_axes
from orchestrator.errors import BenchError

log = logging.getLogger("orchestrator.datasets")

#: Keys that carry a per-structure dimensionality label, in order of preference.
DIMENSION_KEYS = ("id_dimension", "dimension", "dimensionality")


#: Keys that carry the total uncorrected reference energy (eV), in order of preference.
ENERGY_KEYS = ("uncorrected_energy", "energy_ref_ev", "energy_total", "energy")


ID_KEYS = ("mat_id", "id")


#: Positions, cell (Å) and energy (eV) within this are the same structure seen twice.
SAME_TOL = 1e-4


#: How many ids a warning lists before it says "and N more".
SHOW_IDS = 10


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


def finish_records(records: list[Atoms], path: Path, file_label: str | None) -> tuple[list[Atoms], dict[str, str]]:
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
        label = atoms.info.pop("label_of", None) or file_label
        atoms.info["periodic_axes"] = axes
        atoms.info["dimension"] = detected
        atoms.info["dimension_label"] = label or detected
        atoms.info["source"] = path.name
        if label and label != detected:
            disagree.append(f"{atoms.info['id']} ({label}, geometry {detected} '{axes}')")
    if invalid:
        log.warning("%s: skipped %d structure(s) that cannot be relaxed: %s", path.name, len(invalid),
                    some_ids([f"{sid} ({why})" for sid, why in invalid.items()]))
    if disagree:
        log.warning("%s: %d structure(s) whose dimensionality label disagrees with the periodic axes found in "
                    "their geometry; the geometry decides, the label is kept as dimension_label: %s",
                    path.name, len(disagree), some_ids(disagree))
    return valid, invalid


def some_ids(items: list[str]) -> str:
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


def label_of(mapping: dict, where: str) -> str | None:
    for key in DIMENSION_KEYS:
        if mapping.get(key) not in (None, ""):
            try:
                return normalise_dimension(mapping[key])
            except BenchError as err:
                raise BenchError(f"{where}: {key}: {err}") from None
    return None


def first_of(mapping: dict, keys: tuple[str, ...]):
    for key in keys:
        if mapping.get(key) is not None:
            return key, mapping[key]
    return None, None


def _same(a: Atoms, b: Atoms) -> bool:
    return (len(a) == len(b) and (a.numbers == b.numbers).all()
            and np.allclose(a.positions, b.positions, atol=SAME_TOL)
            and np.allclose(a.cell[:], b.cell[:], atol=SAME_TOL)
            and abs(a.info["energy_ref_ev"] - b.info["energy_ref_ev"]) <= SAME_TOL * len(a))


def unique_ids(structures: list[Atoms]) -> list[Atoms]:
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
                 len(dropped), some_ids(dropped))
    if renamed:
        log.warning("%d structure(s) share a mat_id with a different structure and were renamed: %s",
                    len(renamed), some_ids(renamed))
    return out
