"""The batched relaxation engine: many structures per model call, each relaxed step for
step as the sequential engine (relax_paper: ASE's FIRE on a masked FrechetCellFilter)
relaxes it alone.

Every structure keeps its own FIRE state (velocity, dt, alpha, step counters) and its
own cell degrees of freedom, so its trajectory does not depend on which structures
share its batch; a finished structure leaves and the next one takes its place at once
(in-flight refill, bounded by `batch_atoms`). The arrays are padded to the largest
structure in the batch: every step is a fixed number of numpy calls, whatever the
batch size, where ASE spends ~5 ms of CPU per structure and step on the cell filter's
nine Fréchet derivatives and a matrix logarithm.

The optimizer and the cell filter are apart, as ASE keeps them: FrechetCellFilters turns
forces and stress into the filter's forces on its degrees of freedom, BatchedFIRE moves those
degrees of freedom, and Batch holds the slots and the degrees of freedom they share.

Exactly ASE's (ase 3.29, ase.optimize.FIRE, ase.filters.FrechetCellFilter):
- FIRE's defaults, its mixing with the old alpha, its dt/alpha updates after Nmin
  downhill steps, the velocity reset uphill, the maxstep cap on the whole step;
- the filter's degrees of freedom: positions in the undeformed cell and
  n * logm(n * F) for the deformation gradient F (n atoms), its forces F-transformed
  with the masked virial pulled back through the exponential's Fréchet derivative,
  the cell set from the original cell and the masked F;
- convergence on the max row norm of those forces (cell rows included) at every step
  from step 0, the step cap, and the divergence check on each atom's raw |F|.
Two rewritings that change only rounding: the cell's Fréchet force is one adjoint
derivative L(A^T, G) (the nine directional derivatives of ASE summed at once) computed
by the exponential of a 6x6 block matrix; logm(F) is read from the state (n * logm(n F)
is what FIRE moves) rather than recomputed from the cell. A molecule (0D) relaxes with
an all-zero cell mask, which is the same arithmetic as ASE with no filter.
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np
from ase import Atoms
from ase.stress import voigt_6_to_full_3x3_stress
from scipy.linalg import expm

from adapters.frames import alignment_and_mask, structure_from_record
from adapters.wire import timed_out

#: ase.optimize.FIRE's defaults (ase 3.29), as the sequential engine runs it.
FIRE = {"dt": 0.1, "maxstep": 0.2, "dtmax": 1.0, "Nmin": 5, "finc": 1.1, "fdec": 0.5, "astart": 0.1, "fa": 0.99}


class Structure:
    """One structure of the queue: its record, its relaxation frame and its clock."""

    def __init__(self, record: dict):
        self.record = record
        atoms = structure_from_record(record)
        self.rotation, mask = alignment_and_mask(atoms.cell[:], record["periodic_axes"])
        self.positions = atoms.positions @ self.rotation.T
        self.cell = atoms.cell[:] @ self.rotation.T
        self.mask = np.zeros((3, 3)) if mask is None else mask
        self.numbers = atoms.numbers
        self.pbc = atoms.pbc
        self.started = time.perf_counter()

    @property
    def n(self) -> int:
        return len(self.numbers)


class FrechetCellFilters:
    """ASE's FrechetCellFilter for every slot of a batch at once, padded to `width` atoms: each
    slot's atom count, cell mask and original cell. Its degrees of freedom are the positions
    in the undeformed cell (B, N, 3) and n * logm(n * F) for the deformation gradient F (B, 3, 3),
    which the optimizer moves as ASE's FIRE moves a filter's get_positions()."""

    def __init__(self, slots: int, width: int):
        self.n = np.ones(slots)                     # atoms per structure (1 where empty)
        self.atom_mask = np.zeros((slots, width, 1))
        self.mask = np.zeros((slots, 3, 3))         # cell mask
        self.orig_cell = np.tile(np.eye(3), (slots, 1, 1))

    def put(self, k: int, structure: Structure, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Slot k holds `structure`; its starting degrees of freedom (padded to `width`)."""
        n = structure.n
        self.n[k] = n
        self.atom_mask[k] = 0.0
        self.atom_mask[k, :n] = 1.0
        self.mask[k] = structure.mask
        self.orig_cell[k] = structure.cell
        x_atoms = np.zeros((width, 3))
        x_atoms[:n] = structure.positions       # F = I at the start: solve(I, r) = r
        return x_atoms, n * np.log(n) * np.eye(3)  # n * logm(n * I)

    def remove(self, k: int) -> None:
        self.n[k] = 1
        self.atom_mask[k] = 0.0
        self.mask[k] = 0.0
        self.orig_cell[k] = np.eye(3)

    def widen(self, width: int) -> None:
        self.atom_mask = np.pad(self.atom_mask, ((0, 0), (0, width - self.atom_mask.shape[1]), (0, 0)))

    def deformation(self, x_cell: np.ndarray) -> np.ndarray:
        """The masked deformation gradient of every slot, from its cell coordinates (ASE:
        expm of the coordinates over n, over n again, then masked)."""
        n = self.n[:, None, None]
        stretched = expm(x_cell / n) / n
        return np.eye(3) + self.mask * (stretched - np.eye(3))

    def geometry(self, x_atoms: np.ndarray, x_cell: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cartesian positions, cells and deformation gradients of every slot."""
        deform = self.deformation(x_cell)
        return x_atoms @ np.swapaxes(deform, 1, 2), self.orig_cell @ np.swapaxes(deform, 1, 2), deform

    def forces(self, forces: np.ndarray, stress: np.ndarray, cells: np.ndarray, deform: np.ndarray,
               x_cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The filter's forces: on the atoms (B, N, 3) and on the cell (B, 3, 3)."""
        volume = np.abs(np.linalg.det(cells))[:, None, None]
        full = voigt_6_to_full_3x3_stress(stress)
        relaxes = self.mask.any(axis=(1, 2))[:, None, None]
        virial = np.where(relaxes, -volume * full * self.mask, 0.0)  # a molecule has no stress to use
        pulled = virial @ np.linalg.inv(np.swapaxes(deform, 1, 2))
        n = self.n[:, None, None]
        log_deform = x_cell / n - np.log(n) * np.eye(3)
        block = np.zeros((len(self.n), 6, 6))
        block[:, :3, :3] = block[:, 3:, 3:] = np.swapaxes(log_deform, 1, 2)
        block[:, :3, 3:] = pulled
        cell_force = expm(block)[:, :3, 3:] / n  # sum over ASE's nine expm_frechet directions
        return (forces @ deform) * self.atom_mask, cell_force

    @staticmethod
    def max_force(f_atoms: np.ndarray, f_cell: np.ndarray) -> np.ndarray:
        """The convergence test's max |F| of every slot: over the atoms' and the cell's rows."""
        rows = np.concatenate([np.linalg.norm(f_atoms, axis=2), np.linalg.norm(f_cell, axis=2)], axis=1)
        return rows.max(axis=1)


class BatchedFIRE:
    """ase.optimize.FIRE for every slot of a batch at once, on the filter's degrees of freedom
    (the atoms' part and the cell's part, dotted together as ASE dots one flat vector): each
    slot's velocity, dt, alpha, downhill count and step count."""

    def __init__(self, slots: int, width: int):
        self.v_atoms = np.zeros((slots, width, 3))
        self.v_cell = np.zeros((slots, 3, 3))
        self.fresh = np.ones(slots, bool)           # FIRE's velocity is still None
        self.dt = np.full(slots, FIRE["dt"])
        self.a = np.full(slots, FIRE["astart"])
        self.downhill = np.zeros(slots, int)        # FIRE's Nsteps
        self.steps = np.zeros(slots, int)           # the optimizer's nsteps

    def start(self, k: int) -> None:
        """A new optimizer for slot k."""
        self.clear(k)
        self.fresh[k] = True
        self.dt[k], self.a[k], self.downhill[k], self.steps[k] = FIRE["dt"], FIRE["astart"], 0, 0

    def clear(self, k: int) -> None:
        self.v_atoms[k] = 0.0
        self.v_cell[k] = 0.0

    def widen(self, width: int) -> None:
        self.v_atoms = np.pad(self.v_atoms, ((0, 0), (0, width - self.v_atoms.shape[1]), (0, 0)))

    def step(self, active: np.ndarray, f_atoms: np.ndarray, f_cell: np.ndarray, x_atoms: np.ndarray,
             x_cell: np.ndarray, atom_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One FIRE step for the slots in `active`: their new degrees of freedom (padding stays 0)."""
        def dot(x_atoms, x_cell, y_atoms, y_cell):
            return (x_atoms * y_atoms).sum(axis=(1, 2)) + (x_cell * y_cell).sum(axis=(1, 2))

        vf = dot(f_atoms, f_cell, self.v_atoms, self.v_cell)
        grad2 = dot(f_atoms, f_cell, f_atoms, f_cell)
        vnorm = np.sqrt(dot(self.v_atoms, self.v_cell, self.v_atoms, self.v_cell))
        downhill = active & ~self.fresh & (vf > 0.0)
        uphill = active & ~self.fresh & ~(vf > 0.0)
        a = self.a[:, None, None]
        scale = np.where(grad2 > 0, np.sqrt(np.where(grad2 > 0, grad2, 1.0)), 1.0)[:, None, None]
        mix = downhill[:, None, None]
        self.v_atoms = np.where(mix, (1.0 - a) * self.v_atoms + a * f_atoms / scale * vnorm[:, None, None],
                                self.v_atoms)
        self.v_cell = np.where(mix, (1.0 - a) * self.v_cell + a * f_cell / scale * vnorm[:, None, None], self.v_cell)
        speed_up = downhill & (self.downhill > FIRE["Nmin"])
        self.dt = np.where(speed_up, np.minimum(self.dt * FIRE["finc"], FIRE["dtmax"]), self.dt)
        self.a = np.where(speed_up, self.a * FIRE["fa"], self.a)
        self.downhill = np.where(downhill, self.downhill + 1, self.downhill)
        stop = uphill[:, None, None]
        self.v_atoms = np.where(stop, 0.0, self.v_atoms)
        self.v_cell = np.where(stop, 0.0, self.v_cell)
        self.a = np.where(uphill, FIRE["astart"], self.a)
        self.dt = np.where(uphill, self.dt * FIRE["fdec"], self.dt)
        self.downhill = np.where(uphill, 0, self.downhill)

        on = active[:, None, None]
        dt = self.dt[:, None, None]
        self.v_atoms = np.where(on, self.v_atoms + dt * f_atoms, self.v_atoms)
        self.v_cell = np.where(on, self.v_cell + dt * f_cell, self.v_cell)
        dr_atoms, dr_cell = dt * self.v_atoms, dt * self.v_cell
        norm = np.sqrt(dot(dr_atoms, dr_cell, dr_atoms, dr_cell))[:, None, None]
        capped = norm > FIRE["maxstep"]
        safe = np.where(capped, norm, 1.0)
        dr_atoms = np.where(capped, FIRE["maxstep"] * dr_atoms / safe, dr_atoms)
        dr_cell = np.where(capped, FIRE["maxstep"] * dr_cell / safe, dr_cell)
        self.fresh &= ~active
        self.steps += active
        return (np.where(on, x_atoms + dr_atoms * atom_mask, x_atoms), np.where(on, x_cell + dr_cell, x_cell))


class Batch:
    """B slots, each a structure relaxing with its own filter and optimizer state, kept apart
    as ASE keeps them (FrechetCellFilters, BatchedFIRE), and the degrees of freedom they share."""

    def __init__(self, slots: int, width: int):
        self.members: list[Structure | None] = [None] * slots
        self.width = width
        self.filters = FrechetCellFilters(slots, width)
        self.fire = BatchedFIRE(slots, width)
        self.x_atoms = np.zeros((slots, width, 3))  # positions in the undeformed cell
        self.x_cell = np.zeros((slots, 3, 3))       # n * logm(n * F)

    @property
    def steps(self) -> np.ndarray:
        return self.fire.steps

    def atoms_in_use(self) -> int:
        return int(sum(m.n for m in self.members if m is not None))

    def free_slot(self) -> int | None:
        return next((k for k, m in enumerate(self.members) if m is None), None)

    def put(self, k: int, structure: Structure) -> None:
        if structure.n > self.width:
            self._widen(structure.n)
        self.members[k] = structure
        self.x_atoms[k], self.x_cell[k] = self.filters.put(k, structure, self.width)
        self.fire.start(k)

    def remove(self, k: int) -> None:
        self.members[k] = None
        self.filters.remove(k)
        self.fire.clear(k)
        self.x_atoms[k] = 0.0
        self.x_cell[k] = 0.0

    def _widen(self, width: int) -> None:
        self.filters.widen(width)
        self.fire.widen(width)
        self.x_atoms = np.pad(self.x_atoms, ((0, 0), (0, width - self.width), (0, 0)))
        self.width = width

    def geometry(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.filters.geometry(self.x_atoms, self.x_cell)

    def filter_forces(self, forces: np.ndarray, stress: np.ndarray, cells: np.ndarray,
                      deform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.filters.forces(forces, stress, cells, deform, self.x_cell)

    def fire_step(self, active: np.ndarray, f_atoms: np.ndarray, f_cell: np.ndarray) -> None:
        self.x_atoms, self.x_cell = self.fire.step(active, f_atoms, f_cell, self.x_atoms, self.x_cell,
                                                   self.filters.atom_mask)


def relax_batched(records: list[dict], evaluate, protocol: dict, on_result, *, batch_atoms: int,
                  timeout_s: float | None = None, on_batch=lambda ids: None, on_step=lambda: None) -> None:
    """Relax `records` with the paper's protocol, at most `batch_atoms` atoms per model call
    (always at least one structure), calling on_result(id, result) as each finishes.

    evaluate(list of ase.Atoms) -> list of (energy, forces (n, 3), stress (6,) or None),
    one per structure, or an exception instance for a structure the model failed on.
    on_batch(ids) is told which structures are in flight after every change; on_step()
    is called after every step of the batch.
    """
    fmax, max_steps, limit = protocol["fmax_ev_per_a"], protocol["max_steps"], protocol["divergence_limit_ev_per_a"]
    queue = deque(records)
    sizes = [len(r["numbers"]) for r in records] or [1]
    # as many slots as the smallest structures could fill; a slot holds one structure
    batch = Batch(slots=max(1, min(len(records), batch_atoms // min(sizes))), width=max(sizes))

    def refill() -> None:
        while queue:
            k = batch.free_slot()
            nxt = len(queue[0]["numbers"])
            if k is None or (batch.atoms_in_use() and batch.atoms_in_use() + nxt > batch_atoms):
                break
            record = queue.popleft()
            try:
                batch.put(k, Structure(record))
            except Exception as exc:  # a structure that cannot even be set up
                on_result(record["id"], failure("model_error", exc))
        on_batch([m.record["id"] for m in batch.members if m is not None])

    def finish(k: int, result: dict) -> None:
        structure = batch.members[k]
        result["wall_s"] = time.perf_counter() - structure.started
        batch.remove(k)
        on_result(structure.record["id"], result)

    refill()
    while any(m is not None for m in batch.members):
        positions, cells, deform = batch.geometry()
        occupied = [k for k, m in enumerate(batch.members) if m is not None]
        frames = []
        for k in occupied:
            member = batch.members[k]
            atoms = Atoms(numbers=member.numbers, positions=positions[k, :member.n], cell=cells[k], pbc=member.pbc)
            atoms.info.update(id=member.record["id"], needs_stress=bool(member.mask.any()))
            frames.append(atoms)
        outputs = evaluate(frames)
        forces = np.zeros_like(batch.x_atoms)
        stress = np.zeros((len(batch.members), 6))
        energy = np.zeros(len(batch.members))
        for k, output in zip(occupied, outputs):
            if isinstance(output, Exception):
                finish(k, failure("model_error", output))
                continue
            member = batch.members[k]
            e, f, s = output
            f = np.asarray(f, float)
            if not (np.all(np.isfinite(f)) and np.isfinite(e)):
                finish(k, failure("model_error", FloatingPointError("model returned non-finite forces")))
                continue
            forces[k, :member.n] = f
            energy[k] = e
            if s is not None:
                stress[k] = s
        f_atoms, f_cell = batch.filter_forces(forces, stress, cells, deform)
        gmax = FrechetCellFilters.max_force(f_atoms, f_cell)
        raw = np.linalg.norm(forces, axis=2).max(axis=1)  # each atom's |F|, as check_forces
        active = np.zeros(len(batch.members), bool)
        now = time.perf_counter()
        for k, member in enumerate(batch.members):
            if member is None:
                continue
            converged = gmax[k] < fmax
            if raw[k] > limit:
                finish(k, outcome(batch, k, positions, cells, forces, energy, gmax, False, "diverged"))
            elif converged or batch.steps[k] >= max_steps:
                finish(k, outcome(batch, k, positions, cells, forces, energy, gmax, converged,
                                  None if converged else "not_converged"))
            elif timeout_s and now - member.started > timeout_s:
                finish(k, timed_out(timeout_s, f"still relaxing after the limit of {timeout_s:g} s",
                                    int(batch.steps[k])))
            else:
                active[k] = True
        batch.fire_step(active, f_atoms, f_cell)
        on_step()
        refill()


def failure(reason: str, exc: Exception) -> dict:
    return {"converged": False, "failure_reason": reason, "steps": 0, "error": f"{type(exc).__name__}: {exc}"}


def outcome(batch: Batch, k: int, positions, cells, forces, energy, gmax, converged: bool, reason) -> dict:
    """The sequential engine's result fields, the structure rotated back to its frame."""
    member = batch.members[k]
    n = member.n
    return {"converged": bool(converged), "failure_reason": reason, "steps": int(batch.steps[k]),
            "energy_ev": float(energy[k]), "max_force_ev_per_a": float(gmax[k]),
            "max_atom_force_ev_per_a": float(np.linalg.norm(forces[k, :n], axis=1).max()),
            "positions": (positions[k, :n] @ member.rotation).tolist(),
            "cell": (cells[k] @ member.rotation).tolist()}


def isolate_failures(forward, items: list) -> list:
    """forward(items) in one call; if that raises, each item alone, so that a structure the
    model fails on gets its own exception and the others their results."""
    try:
        return forward(items)
    except Exception:
        outputs = []
        for item in items:
            try:
                outputs.append(forward([item])[0])
            except Exception as exc:  # this structure only
                outputs.append(exc)
        return outputs


def each_with_calculator(calculator):
    """evaluate() for any ASE calculator, one structure after another: the batched engine's
    arithmetic with a model that has no batched forward (and the exactness tests' EMT)."""
    def evaluate(frames):
        outputs = []
        for atoms in frames:
            try:
                atoms.calc = calculator
                stress = atoms.get_stress() if atoms.info["needs_stress"] else None
                outputs.append((atoms.get_potential_energy(), atoms.get_forces(), stress))
            except Exception as exc:  # this structure only
                outputs.append(exc)
        return outputs
    return evaluate
