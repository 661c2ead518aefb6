"""Per-shard JSON lines of every model -> one table and the relaxed structures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from adapters import wire
from metrics.per_structure import MISSING
from orchestrator import runfolder
from orchestrator.datasets import extxyz_id

COLUMNS = ["model", "id", "dimension", "natoms", "elements", "converged", "failure_reason", "steps", "energy_ev",
           "energy_ref_ev", "max_force_ev_per_a", "max_atom_force_ev_per_a", "wall_s", "finished_at", "error", "cycles",
           "wire_split_by_reset"]


def read_results(out_dir: Path, shards: dict[str, set[str]], timeout_s: float | None = None) -> dict[str, dict]:
    """The result lines of a model's folder that hold (adapters.wire.read), keyed by id:
    shards maps each shard's name (shard-0000) to its structures' ids; a line of a file
    for another shard's structure, or of a file of no shard, is never read."""
    found: dict[str, dict] = {}
    for name, ids in shards.items():
        found.update(wire.read(out_dir / f"{name}.jsonl", ids, timeout_s).kept)
    return found


def merge(reference: list[Atoms], results: dict[str, dict[str, dict]]):
    """Rows for every (model, reference structure) and the relaxed Atoms keyed by (model, id).

    A structure without a result line gets a `missing` row: the run is incomplete (a
    worker could not run, or was stopped), which is never the model's failure.
    """
    rows, relaxed = [], {}
    for model, by_id in results.items():
        for ref in reference:
            sid = ref.info["id"]
            record = by_id.get(sid) or {"converged": False, "failure_reason": MISSING, "steps": 0,
                                        "error": "no result yet: rerun the same command to finish the run"}
            rows.append({
                "model": model, "id": sid, "dimension": ref.info["dimension"], "natoms": len(ref),
                "elements": " ".join(sorted(set(ref.get_chemical_symbols()))),
                "converged": bool(record["converged"]), "failure_reason": record.get("failure_reason") or "",
                "steps": int(record["steps"]), "energy_ev": record.get("energy_ev", np.nan),
                "energy_ref_ev": ref.info["energy_ref_ev"],
                "max_force_ev_per_a": record.get("max_force_ev_per_a", np.nan),
                "max_atom_force_ev_per_a": record.get("max_atom_force_ev_per_a", np.nan),
                "wall_s": record.get("wall_s", np.nan), "finished_at": record.get("finished_at", np.nan),
                "error": record.get("error", ""),
                # the authors' variant only: its FIRE cycles, and a wire its own vacuum reset split
                "cycles": record.get("cycles", np.nan), "wire_split_by_reset": bool(record.get("wire_split_by_reset")),
            })
            if "positions" in record:
                relaxed[(model, sid)] = Atoms(numbers=ref.numbers, positions=record["positions"],
                                              cell=record["cell"], pbc=ref.pbc)
    return pd.DataFrame(rows, columns=COLUMNS), relaxed


def write_relaxed(path: Path, table: pd.DataFrame, relaxed: dict) -> None:
    """relaxed.extxyz: one frame per relaxed structure, with model, id, status and energy."""
    from ase.io import write

    frames = []
    for row in table.itertuples(index=False):
        atoms = relaxed.get((row.model, row.id))
        if atoms is None:
            continue
        atoms = atoms.copy()
        atoms.info.update(model=row.model, id=extxyz_id(row.id), dimension=row.dimension, converged=bool(row.converged),
                          failure_reason=row.failure_reason or "none", steps=int(row.steps))
        atoms.calc = SinglePointCalculator(atoms, energy=float(row.energy_ev))
        frames.append(atoms)
    with runfolder.replacing(path) as tmp:
        write(tmp, frames, format="extxyz")


def write_table(folder: runfolder.RunFolder, table: pd.DataFrame) -> None:
    """results.csv and results.parquet, written atomically."""
    for path, writer in ((folder.results, lambda p: table.to_csv(p, index=False)),
                         (folder.results_parquet, lambda p: table.to_parquet(p, index=False))):
        with runfolder.replacing(path) as tmp:
            writer(tmp)
