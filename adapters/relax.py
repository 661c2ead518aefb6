"""Container entrypoint: relax every structure of a shard, one JSON line each.

    python -m adapters.relax --job JOB_JSON --shard IN.jsonl --out OUT.jsonl

JOB_JSON holds the calculator name and options, the device and the protocol
(fmax, max_steps, divergence limit, optimizer, cell filter). The calculator is
loaded once; each structure's result is appended and flushed as it finishes, so
a killed worker loses at most the structure in flight. Rerun on the same files,
it skips what is done; a structure that killed the process itself (segfault,
out of memory) is recorded as failed instead of being tried forever.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.filters import FrechetCellFilter, UnitCellFilter
from ase.optimize import BFGS, FIRE, LBFGS

from adapters.calculators import make_calculator

OPTIMIZERS = {"FIRE": FIRE, "BFGS": BFGS, "LBFGS": LBFGS}
CELL_FILTERS = {"FrechetCellFilter": FrechetCellFilter, "UnitCellFilter": UnitCellFilter}


def lookup(table: dict, name: str, what: str):
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(table)}") from None


def alignment_and_mask(cell: np.ndarray, periodic_axes: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Rotation that puts the periodic directions on Cartesian axes, and the cell mask.

    ASE's cell filters mask Cartesian strain components, so the periodic
    subspace must lie along Cartesian axes for the mask to keep the vacuum
    direction fixed. Alexandria's cells already do (rotation = identity); a
    tilted cell is rotated rigidly for the relaxation and rotated back after.
    Returns (rotation, mask); mask None means the cell does not relax (0D).
    """
    idx = ["abc".index(a) for a in periodic_axes]
    if len(idx) == 3:
        return np.eye(3), np.ones((3, 3))
    if not idx:
        return np.eye(3), None
    if len(idx) == 2:
        direction = np.cross(cell[idx[0]], cell[idx[1]])  # plane normal: must stay fixed
    else:
        direction = cell[idx[0]].copy()  # wire axis: the only direction that relaxes
    direction /= np.linalg.norm(direction)
    k = int(np.argmax(np.abs(direction)))
    target = np.zeros(3)
    target[k] = math.copysign(1.0, direction[k])
    rotation = rotation_between(direction, target)
    mask = np.ones((3, 3)) if len(idx) == 2 else np.zeros((3, 3))
    if len(idx) == 2:
        mask[k, :] = mask[:, k] = 0.0
    else:
        mask[k, k] = 1.0
    return rotation, mask


def rotation_between(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Proper rotation taking unit vector u onto unit vector v (Rodrigues)."""
    axis = np.cross(u, v)
    s, c = np.linalg.norm(axis), float(np.dot(u, v))
    if s < 1e-12:
        return np.eye(3)  # already aligned (antiparallel never happens: v is u's dominant sign)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]]) / s
    return np.eye(3) + s * k + (1 - c) * (k @ k)


class Diverged(Exception):
    pass


def relax(atoms: Atoms, calculator, protocol: dict, periodic_axes: str) -> dict:
    """Relax atoms in place per the protocol; return the result fields."""
    rotation, mask = alignment_and_mask(atoms.cell[:], periodic_axes)
    atoms.positions = atoms.positions @ rotation.T
    atoms.set_cell(atoms.cell[:] @ rotation.T, scale_atoms=False)
    atoms.calc = calculator
    target = atoms
    if mask is not None:
        target = lookup(CELL_FILTERS, protocol["cell_filter"], "cell filter")(atoms, mask=mask)
    optimizer = lookup(OPTIMIZERS, protocol["optimizer"], "optimizer")(target, logfile=None)
    limit = protocol["divergence_limit_ev_per_a"]
    converged = False
    failure = None
    try:
        for converged in optimizer.irun(fmax=protocol["fmax_ev_per_a"], steps=protocol["max_steps"]):
            forces = atoms.get_forces()
            if not np.all(np.isfinite(forces)):
                raise FloatingPointError("model returned non-finite forces")
            if np.abs(forces).max() > limit:
                raise Diverged(f"|F| above {limit} eV/Å")
    except Diverged:
        failure, converged = "diverged", False
    if failure is None and not converged:
        failure = "not_converged"
    energy = float(atoms.get_potential_energy())
    if not math.isfinite(energy):
        raise FloatingPointError("model returned a non-finite energy")
    forces = atoms.get_forces()
    atoms.positions = atoms.positions @ rotation
    atoms.set_cell(atoms.cell[:] @ rotation, scale_atoms=False)
    return {
        "converged": bool(converged),
        "failure_reason": failure,
        "steps": int(optimizer.nsteps),
        "energy_ev": energy,
        "max_force_ev_per_a": float(np.linalg.norm(forces, axis=1).max()),
        "positions": atoms.positions.tolist(),
        "cell": atoms.cell[:].tolist(),
    }


def structure_from_record(record: dict) -> Atoms:
    return Atoms(numbers=record["numbers"], positions=record["positions"], cell=record["cell"], pbc=record["pbc"])


def finished_ids(out: Path) -> set[str]:
    """Ids already in the output; drop a torn last line left by a killed worker."""
    if not out.exists():
        return set()
    data = out.read_bytes()
    keep = data[: data.rfind(b"\n") + 1]
    if len(keep) != len(data):
        out.write_bytes(keep)
    return {json.loads(line)["id"] for line in keep.splitlines() if line.strip()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", required=True, help="JSON: calculator, options, device, protocol")
    parser.add_argument("--shard", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    job = json.loads(args.job)
    records = [json.loads(line) for line in args.shard.read_text().splitlines() if line.strip()]
    done = finished_ids(args.out)
    in_flight = args.out.with_suffix(".inflight")
    todo = [r for r in records if r["id"] not in done]
    with args.out.open("a") as out:
        if in_flight.exists():
            crashed = in_flight.read_text().strip()
            if crashed and crashed not in done:
                # The previous worker died inside this structure: record it, don't retry it.
                write(out, {"id": crashed, "converged": False, "failure_reason": "model_error",
                            "error": "worker process died while relaxing this structure", "steps": 0})
                todo = [r for r in todo if r["id"] != crashed]
        if not todo:
            in_flight.unlink(missing_ok=True)
            return 0
        calculator = make_calculator(job["calculator"], job["device"], job.get("options", {}))
        for record in todo:
            in_flight.write_text(record["id"])
            write(out, relax_record(record, calculator, job["protocol"]))
    in_flight.unlink(missing_ok=True)
    return 0


def relax_record(record: dict, calculator, protocol: dict) -> dict:
    """One structure's result line; any exception becomes a model_error record."""
    start = time.perf_counter()
    try:
        result = relax(structure_from_record(record), calculator, protocol, record["periodic_axes"])
    except Exception as exc:  # one bad structure must never stop the shard
        result = {"converged": False, "failure_reason": "model_error", "steps": 0,
                  "error": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc(limit=5)}
    result["wall_s"] = time.perf_counter() - start
    return {"id": record["id"], **result}


def write(out, result: dict) -> None:
    out.write(json.dumps(result) + "\n")
    out.flush()


if __name__ == "__main__":
    sys.exit(main())
