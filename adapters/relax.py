"""The relaxation process: relax every structure of a shard, one JSON line each.

    python -m adapters.relax --job JOB_JSON --shard IN.jsonl --out OUT.jsonl [--shard ... --out ...]

Run by the worker's supervisor (adapters.supervise), with its arguments. JOB_JSON is a
wire.Job: the calculator name and options, the device, the engine and the protocol
(variant, fmax, max_steps, divergence limit, optimizer, cell filter, fragmentation
limits). Two variants: `paper`, the text of Benedini et al. (one FIRE run of up to
max_steps), and `authors`, their code (cycles of FIRE with the vacuum reset between
them; see relax_authors). The calculator is
loaded once; each structure's result is appended and flushed as it finishes, so
a killed worker loses at most the structures in flight. Several shards (pairs of
--shard and --out) are one queue for the batched engine, so its batch stays full across
shard boundaries; each result still goes to its own shard's output. Rerun on the same files,
it skips what is done; a structure that killed CRASHES_TO_FAIL relaxation processes
(segfault, out of memory; the supervisor lists them in `<out>.crashed`) is recorded as
model_error instead of being tried forever.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.filters import FrechetCellFilter, UnitCellFilter
from ase.optimize import BFGS, FIRE, LBFGS

from adapters import wire
from adapters.batched import relax_batched
from adapters.calculators import make_calculator, make_evaluator
from adapters.frames import alignment_and_mask, structure_from_record
from adapters.wire import (CANNOT_LOAD, CANNOT_WRITE, CRASHES_TO_FAIL, HEARTBEAT_S, Job, crash_counts, id_lines,
                           in_flight_path)



class ForcesOncePerState:
    """A cell filter whose generalized forces are computed once per state of the atoms.

    ASE's optimizers ask the filter for its forces three times a step (the step, the log,
    the convergence test: ase 3.29, Optimizer.irun and FIRE.step), each time on the same
    positions and cell; FrechetCellFilter's costs a matrix logarithm and nine Fréchet
    derivatives of the exponential each time, which on a small structure take longer than
    the model. The first call's array is kept while the positions and the cell stay
    bitwise what they were, so every result is bitwise ASE's (the same function of the
    same input) and the filter's work is done a third as often."""

    _state: tuple[bytes, bytes] | None = None

    def get_forces(self, **kwargs):
        if kwargs:  # (apply_constraint and the like: as ASE, uncached)
            return super().get_forces(**kwargs)
        state = (self.atoms.positions.tobytes(), self.atoms.cell[:].tobytes())
        if state != self._state:
            self._forces, self._state = super().get_forces(), state
        return self._forces.copy()  # (callers may scale it in place)


class OnceFrechetCellFilter(ForcesOncePerState, FrechetCellFilter):
    pass


class OnceUnitCellFilter(ForcesOncePerState, UnitCellFilter):
    pass


#: The classes of wire.OPTIMIZERS and wire.CELL_FILTERS.
OPTIMIZERS = {"FIRE": FIRE, "BFGS": BFGS, "LBFGS": LBFGS}
CELL_FILTERS = {"FrechetCellFilter": OnceFrechetCellFilter, "UnitCellFilter": OnceUnitCellFilter}


def lookup(table: dict, name: str, what: str):
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(table)}") from None


class Diverged(Exception):
    pass


def check_forces(forces: np.ndarray, limit: float) -> None:
    """Stop a relaxation whose model returns NaN or a force whose magnitude exceeds the
    divergence limit: the paper's "the force exceeded 10,000 eV/Å", and the authors'
    observe_forces, which compares each row's |F| (not each component) with it."""
    if not np.all(np.isfinite(forces)):
        raise FloatingPointError("model returned non-finite forces")
    largest = float(np.linalg.norm(forces, axis=1).max())
    if largest > limit:
        raise Diverged(f"|F| = {largest:.4g} eV/Å above {limit:g} eV/Å")


def max_force(target) -> float:
    """max |F| over the rows the optimizer sees: atoms, and the cell's generalized forces
    when a cell filter is on (the quantity ASE's convergence test compares with fmax)."""
    return float(np.linalg.norm(target.get_forces(), axis=1).max())


def outcome(atoms: Atoms, target, converged: bool, failure: str | None, steps: int) -> dict:
    """The result fields of a finished relaxation (atoms still in the relaxation frame)."""
    energy = float(atoms.get_potential_energy())
    if not math.isfinite(energy):
        raise FloatingPointError("model returned a non-finite energy")
    return {
        "converged": bool(converged),
        "failure_reason": failure,
        "steps": int(steps),
        "energy_ev": energy,
        "max_force_ev_per_a": max_force(target),
        "max_atom_force_ev_per_a": float(np.linalg.norm(atoms.get_forces(), axis=1).max()),
    }


def relax(atoms: Atoms, calculator, protocol: dict, periodic_axes: str, on_step=lambda steps: None) -> dict:
    """Relax atoms in place per the protocol's variant; return the result fields.
    on_step(steps) is called after every optimizer step with the steps made so far (the
    worker's heartbeat, and what a structure stopped by its time limit had done)."""
    variant = lookup(VARIANTS, protocol.get("variant", "paper"), "protocol variant")
    atoms.calc = calculator
    result = variant(atoms, protocol, periodic_axes, on_step)
    result["positions"] = atoms.positions.tolist()
    result["cell"] = atoms.cell[:].tolist()
    return result


def relax_paper(atoms: Atoms, protocol: dict, periodic_axes: str, on_step=lambda steps: None) -> dict:
    """The paper's text: one FIRE run from the PBE geometry, converged at max |F| < fmax
    (cell forces included), not converged after max_steps, diverged past the limit."""
    rotation, mask = alignment_and_mask(atoms.cell[:], periodic_axes)
    atoms.positions = atoms.positions @ rotation.T
    atoms.set_cell(atoms.cell[:] @ rotation.T, scale_atoms=False)
    target = atoms
    if mask is not None:
        target = lookup(CELL_FILTERS, protocol["cell_filter"], "cell filter")(atoms, mask=mask)
    optimizer = lookup(OPTIMIZERS, protocol["optimizer"], "optimizer")(target, logfile=None)
    converged, failure = False, None
    try:
        for converged in optimizer.irun(fmax=protocol["fmax_ev_per_a"], steps=protocol["max_steps"]):
            check_forces(atoms.get_forces(), protocol["divergence_limit_ev_per_a"])
            on_step(optimizer.nsteps)
    except Diverged:
        failure, converged = "diverged", False
    if failure is None and not converged:
        failure = "not_converged"
    result = outcome(atoms, target, converged, failure, optimizer.nsteps)
    atoms.positions = atoms.positions @ rotation
    atoms.set_cell(atoms.cell[:] @ rotation, scale_atoms=False)
    return result


# ---- the authors' protocol (benchmark_ph/umlip.py of hyllios/utils, relax_structure) --

#: Their cell masks, Voigt order (xx yy zz yz xz xy), for a layer in the xy plane and a
#: wire along z; 0D keeps its cell.
AUTHORS_MASKS = {3: [1, 1, 1, 1, 1, 1], 2: [1, 1, 0, 0, 0, 1], 1: [0, 0, 1, 0, 0, 0]}
AUTHORS_CYCLES, AUTHORS_CYCLE_STEPS, AUTHORS_VACUUM_A = 15, 500, 15.0
#: Between cycles the extent is checked against this multiple of the limit.
AUTHORS_CYCLE_LIMIT_FACTOR = 1.5
#: Their cycles check layers and wires only (by periodic directions).
FRAGMENTED = {d: wire.FRAGMENTED[f"{d}D"] for d in (2, 1)}
#: The lattice vectors their vacuum reset replaces, in their frame (authors_frame).
AUTHORS_VACUUM_VECTORS = {2: [2], 1: [0, 1]}


class Fragmented(Exception):
    pass


def authors_frame(cell: np.ndarray, periodic_axes: str) -> tuple[list[int], np.ndarray]:
    """Their code assumes a layer periodic in a and b with its normal along z, and a wire
    periodic along c = z. Returns the cyclic order of the lattice vectors that puts the
    periodic ones there (handedness kept) and the proper rotation (rows: the new x, y, z)
    that puts a layer's a along x and b in the xy plane, or a wire's axis along z."""
    n = len(periodic_axes)
    if n in (0, 3):
        return [0, 1, 2], np.eye(3)
    # the vector that goes last: a layer's vacuum vector, a wire's periodic one
    last = "abc".index(periodic_axes) if n == 1 else next(k for k in range(3) if "abc"[k] not in periodic_axes)
    order = [(last + 1) % 3, (last + 2) % 3, last]
    a, b, c = cell[order]
    z = np.cross(a, b) if n == 2 else c
    z = z / np.linalg.norm(z)
    x = a - np.dot(a, z) * z
    x /= np.linalg.norm(x)
    return order, np.array([x, np.cross(z, x), z])


def reset_vacuum(atoms: Atoms, dims: int, limit: float | None) -> None:
    """The authors' adjust_vacuum_2D / adjust_vacuum_1D, in place: re-centre the structure,
    measure it, raise Fragmented if wider than `limit` (None: no check), and give it a
    fresh vacuum (2D: c = (0, 0, thickness + 15 Å); 1D: a hexagonal in-plane cell of side
    15 Å + the wire's radius). Their sanity checks (cell vectors over 30 Å, connectivity)
    are left out: connectivity is no failure in the paper's counts."""
    if dims == 2:
        frac = atoms.get_scaled_positions()
        frac[:, 2] -= frac[:, 2].min() + 0.5  # a slab split by the boundary comes back whole
        frac = np.remainder(frac, 1.0)
        frac[:, 2] += 0.5 - frac[:, 2].mean()
        atoms.set_scaled_positions(frac)
        cell = atoms.cell[:].copy()
        cell[2] = [0.0, 0.0, np.linalg.norm(cell[2])]  # their straighten(): c made orthogonal
        atoms.set_cell(cell, scale_atoms=False)
        thickness = float(np.ptp(atoms.positions[:, 2]))
        if limit is not None and thickness > limit:
            raise Fragmented(f"thickness {thickness:.2f} Å above {limit:.2f} Å")
        cell[2, 2] = thickness + AUTHORS_VACUUM_A
        atoms.set_cell(cell, scale_atoms=False)
        frac = atoms.get_scaled_positions(wrap=False)
        frac[:, 2] += 0.5 - frac[:, 2].mean()
        atoms.set_scaled_positions(frac)
    elif dims == 1:
        pos = atoms.get_positions(wrap=True)
        spans = np.ptp(pos[:, :2], axis=0)
        if limit is not None and spans.max() > limit:
            raise Fragmented(f"span {spans.max():.2f} Å above {limit:.2f} Å")
        cell = atoms.cell[:]
        pos[:, :2] += 0.5 * (cell[0, :2] + cell[1, :2]) - pos[:, :2].mean(axis=0)
        radius = np.linalg.norm(pos[:, :2] - pos[:, :2].mean(axis=0), axis=1).max()
        side = AUTHORS_VACUUM_A + radius
        atoms.set_positions(pos)
        atoms.set_cell([[side, 0.0, 0.0], [-side / 2, side * np.sqrt(3) / 2, 0.0], [0.0, 0.0, cell[2, 2]]],
                       scale_atoms=False)
        pos = atoms.get_positions(wrap=True)
        pos[:, :2] += 0.5 * (atoms.cell[0, :2] + atoms.cell[1, :2]) - pos[:, :2].mean(axis=0)
        atoms.set_positions(pos)


def relax_authors(atoms: Atoms, protocol: dict, periodic_axes: str, on_step=lambda steps: None) -> dict:
    """The authors' code: up to 15 cycles, each resetting the vacuum (extent checked at
    1.5 x the limit) and running a fresh FIRE on a fresh cell filter for up to 500 steps
    to fmax/2; stop early once max |F| (cell forces included) < fmax/2; then reset the
    vacuum once more with the limit itself and accept at max |F| < fmax. Steps are the
    total over the cycles.

    The structure is reported as the paper variant reports it: positions followed
    continuously from the start (the re-centring and the wraps of every vacuum reset
    undone) in the PBE cell's vacuum vectors (a reset changes only the size of the empty
    box), with the relaxed periodic vectors. `wire_split_by_reset` says whether a reset
    of a wire left it wider than it was (their adjust_vacuum_1D wraps a wire that is not
    centred in their hexagonal cell across its boundary; kept as they wrote it)."""
    dims = len(periodic_axes)
    order, rotation = authors_frame(atoms.cell[:], periodic_axes)
    atoms.set_cell(atoms.cell[:][order] @ rotation.T, scale_atoms=False)
    atoms.positions = atoms.positions @ rotation.T
    start_cell = atoms.cell[:].copy()
    limit = protocol["fragmentation_limits_a"].get(f"{dims}D") if dims in FRAGMENTED else None
    fmax, steps, cycles, failure, converged = protocol["fmax_ev_per_a"], 0, 0, None, False
    make_filter = lookup(CELL_FILTERS, protocol["cell_filter"], "cell filter")
    mask = AUTHORS_MASKS.get(dims)
    target = atoms
    moved = np.zeros_like(atoms.positions)  # what the resets did to each atom
    split = False

    def reset(cycle_limit):
        nonlocal moved, split
        before, width = atoms.positions.copy(), authors_width(atoms, dims)
        try:
            reset_vacuum(atoms, dims, cycle_limit)
        finally:
            moved = moved + atoms.positions - before
            split |= dims == 1 and authors_width(atoms, dims) > width + 1e-6

    try:
        for _ in range(AUTHORS_CYCLES):
            reset(limit and AUTHORS_CYCLE_LIMIT_FACTOR * limit)
            target = make_filter(atoms, mask=mask) if mask else atoms
            optimizer = lookup(OPTIMIZERS, protocol["optimizer"], "optimizer")(target, logfile=None)
            for _ in optimizer.irun(fmax=fmax / 2, steps=AUTHORS_CYCLE_STEPS):
                check_forces(target.get_forces(), protocol["divergence_limit_ev_per_a"])
                on_step(steps + optimizer.nsteps)
            steps += optimizer.nsteps
            cycles += 1
            if max_force(target) < fmax / 2:
                break
        reset(limit)
        target = make_filter(atoms, mask=mask) if mask else atoms
        converged = max_force(target) < fmax
        failure = None if converged else "not_converged"
    except Diverged:
        failure = "diverged"
    except Fragmented:
        failure = FRAGMENTED[dims]
    result = {**outcome(atoms, target, converged, failure, steps), "cycles": cycles}
    if dims == 1:
        result["wire_split_by_reset"] = bool(split)
    cell = atoms.cell[:].copy()
    vacuum = AUTHORS_VACUUM_VECTORS.get(dims, [])
    cell[vacuum] = start_cell[vacuum]
    atoms.calc = None  # the result is read; what follows moves no atom relative to another
    atoms.set_cell(cell, scale_atoms=False)
    atoms.positions = atoms.positions - moved
    atoms.positions = atoms.positions @ rotation
    atoms.set_cell((atoms.cell[:] @ rotation)[np.argsort(order)], scale_atoms=False)
    return result


def authors_width(atoms: Atoms, dims: int) -> float:
    """The wire's width as their adjust_vacuum_1D measures it (spans of the wrapped
    positions across the axis); 0 for anything else."""
    if dims != 1:
        return 0.0
    return float(np.ptp(atoms.get_positions(wrap=True)[:, :2], axis=0).max())


VARIANTS = {"paper": relax_paper, "authors": relax_authors}


def finished_ids(out: Path, ids: set[str], timeout_s: float | None = None) -> set[str]:
    """Ids of the shard's structures `ids` with a result in `out` that holds (wire.read);
    drop a torn last line left by a killed worker."""
    if not out.exists():
        return set()
    data = out.read_bytes()
    keep = wire.without_torn_line(data)
    if len(keep) != len(data):
        out.write_bytes(keep)
    return set(wire.read(out, ids, timeout_s).kept)


class Heartbeat:
    """Touches the in-flight markers while a worker makes progress (at most every
    `every` seconds, after an optimizer step), so that the supervisor's stall watchdog
    tells a slow structure, which may relax for hours, from a hung process."""

    def __init__(self, markers: list[Path], every: float = HEARTBEAT_S):
        self.markers = markers
        self.every = every
        self.last = time.monotonic()

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            for marker in self.markers:
                os.utime(marker)


class ShardFiles:
    """One shard's files in a worker: its structures still to relax, its output and its
    in-flight marker."""

    def __init__(self, shard: Path, out: Path, timeout_s: float | None = None):
        self.in_flight = in_flight_path(out)  # may be a mounted file: emptied, never removed
        self.in_flight.write_text("")
        records = [json.loads(line) for line in shard.read_text().splitlines() if line.strip()]
        done = finished_ids(out, {r["id"] for r in records}, timeout_s)
        self.todo = [r for r in records if r["id"] not in done]
        self.crashes = crash_counts(out)
        self.out = out.open("a")
        for record in [r for r in self.todo if self.crashes.get(r["id"], 0) >= CRASHES_TO_FAIL]:
            # it killed the worker itself again and again (segfault, out of memory): record it
            write(self.out, {"id": record["id"], "converged": False, "failure_reason": "model_error", "steps": 0,
                             "error": f"the worker process died {self.crashes[record['id']]} times relaxing it"})
        self.todo = [r for r in self.todo if self.crashes.get(r["id"], 0) < CRASHES_TO_FAIL]
        self.marked = ""

    def mark(self, ids: list[str]) -> None:
        """Name the structures of this shard in flight (rewritten only when they change)."""
        text = id_lines(ids)
        if text != self.marked:
            self.in_flight.write_text(text)
            self.marked = text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", required=True, help="wire.Job as JSON: calculator, options, device, protocol, ...")
    parser.add_argument("--shard", required=True, type=Path, action="append", help="repeatable, with --out")
    parser.add_argument("--out", required=True, type=Path, action="append", help="one per --shard, in order")
    args = parser.parse_args(argv)
    if len(args.shard) != len(args.out):
        parser.error(f"{len(args.shard)} --shard but {len(args.out)} --out: give one --out per --shard")
    try:
        job = Job.from_json(args.job)
    except ValueError as exc:
        parser.error(str(exc))
    shards: list[ShardFiles] = []
    try:
        for shard, out in zip(args.shard, args.out):
            shards.append(ShardFiles(shard, out, job.structure_timeout_s))
        heartbeat = Heartbeat([s.in_flight for s in shards], min(HEARTBEAT_S, job.stall_timeout_s / 4))
        if not any(s.todo for s in shards):
            return 0
        try:
            model = (make_evaluator if job.engine == "batched" else make_calculator)(job.calculator, job.device,
                                                                                    job.options)
        except Exception:  # before any structure: the model's fault, or its options'
            traceback.print_exc()
            return CANNOT_LOAD
        if job.engine == "batched":
            relax_shards_batched(model, job, shards, heartbeat)
        else:
            for shard in shards:
                for record in shard.todo:
                    shard.mark([record["id"]])
                    write(shard.out, relax_record(record, model, job.protocol, job.structure_timeout_s,
                                                  on_step=heartbeat))
                shard.mark([])
    except OSError as exc:
        print(f"cannot write the results of {', '.join(s.name for s in args.shard)}: {exc}", file=sys.stderr)
        return CANNOT_WRITE
    finally:
        for shard in shards:
            shard.out.close()
    return 0


def relax_shards_batched(evaluate, job: Job, shards: list[ShardFiles], heartbeat=lambda: None) -> None:
    """The batched engine over the shards' structures as one queue. Every structure in
    flight is named in its shard's marker (one a line), so a process that dies lists them
    all as crashed once; those then relax one at a time, first, and only the one that
    kills a process again becomes model_error."""
    owner = {r["id"]: shard for shard in shards for r in shard.todo}

    def mark(ids: list[str]) -> None:
        for shard in shards:
            shard.mark([sid for sid in ids if owner[sid] is shard])

    suspects = [r for s in shards for r in s.todo if s.crashes.get(r["id"])]
    rest = [r for s in shards for r in s.todo if not s.crashes.get(r["id"])]
    for records, batch_atoms in ((suspects, 0), (rest, job.batch_atoms)):
        relax_batched(records, evaluate, job.protocol,
                      lambda sid, result: write(owner[sid].out, {"id": sid, **result}),
                      batch_atoms=batch_atoms, timeout_s=job.structure_timeout_s, on_batch=mark,
                      on_step=heartbeat)


class StructureTimeout(Exception):
    pass


@contextmanager
def time_limit(seconds: float | None):
    """Raise StructureTimeout in this (main) thread after `seconds` of wall time (None: no limit)."""
    if not seconds:
        yield
        return

    def expire(signum, frame):
        raise StructureTimeout(f"still relaxing after the limit of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def relax_record(record: dict, calculator, protocol: dict, timeout_s: float | None = None,
                 on_step=lambda: None) -> dict:
    """One structure's result line; a structure over `timeout_s` of wall time (only when
    the user sets a limit) is a `timeout` record, with the limit it ran under (the tool's
    limit, not one of the paper's failures); any exception becomes a model_error record."""
    start, made = time.perf_counter(), [0]

    def stepped(steps: int) -> None:
        made[0] = steps
        on_step()

    try:
        with time_limit(timeout_s):
            result = relax(structure_from_record(record), calculator, protocol, record["periodic_axes"], stepped)
    except StructureTimeout as exc:
        result = wire.timed_out(timeout_s, str(exc), made[0])
    except Exception as exc:  # one bad structure must never stop the shard
        result = {"converged": False, "failure_reason": "model_error", "steps": 0,
                  "error": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc(limit=5)}
    result["wall_s"] = time.perf_counter() - start
    return {"id": record["id"], **result}


def write(out, result: dict) -> None:
    """One result line, stamped with when it finished (Unix time): with wall_s, the interval the
    structure held its worker, from which the host measures how busy each device was."""
    out.write(json.dumps({**result, "finished_at": time.time()}) + "\n")
    out.flush()


if __name__ == "__main__":
    sys.exit(main())
