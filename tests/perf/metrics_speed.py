"""How fast metrics.per_structure.score is on a full-size run (a script, not a test).

    .venv/bin/python tests/perf/metrics_speed.py [N_STRUCTURES] [N_MODELS]

Builds N synthetic PBE structures (default 40,000: a quarter each 0D, 1D, 2D, 3D, with 1 to
40 atoms, cells with 15 Å of vacuum along the non-periodic axes), a "relaxed" copy of each
per model (positions rattled by ~0.02 Å, some atoms wrapped across the periodic boundaries,
the periodic cell strained by 1 %, one structure in 47 pulled apart by
8 Å into the vacuum), then times score() (symmetry included) and the report's tables
(metrics.report.tables) and prints structures/s and the seconds of each.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from ase import Atoms

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from metrics import report  # noqa: E402
from metrics.per_structure import score  # noqa: E402

AXES = {"0D": "", "1D": "c", "2D": "ab", "3D": "abc"}
ELEMENTS = np.array([14, 15, 16, 17])  # Si P S Cl: 2.2 Å apart they are bonded, 3.1 Å apart not


def synthetic_structure(rng, dim: str, natoms: int) -> Atoms:
    """Atoms on a jittered simple-cubic grid (2.2 Å apart, so they are bonded), in a cell
    periodic along AXES[dim] with the atoms' own extent plus 15 Å of vacuum elsewhere."""
    side = int(np.ceil(natoms ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:natoms]
    positions = grid * 2.2 + rng.normal(0, 0.05, (natoms, 3))
    lengths = np.array([side * 2.2 if ax in AXES[dim] else np.ptp(positions[:, i]) + 15.0
                        for i, ax in enumerate("abc")])
    cell = np.diag(lengths)
    if dim in ("2D", "3D"):
        cell[1, 0] = 0.3 * lengths[1]  # a tilted cell
    positions = positions + 7.5 * np.array([ax not in AXES[dim] for ax in "abc"])
    atoms = Atoms(numbers=rng.choice(ELEMENTS, natoms), positions=positions, cell=cell, pbc=True)
    atoms.info.update(dimension=dim, periodic_axes=AXES[dim])
    return atoms


def relaxed_copy(rng, ref: Atoms, pull_apart: bool) -> Atoms:
    atoms = ref.copy()
    mask = np.array([ax in ref.info["periodic_axes"] for ax in "abc"])
    strain = np.where(mask, 1.01, 1.0)
    atoms.set_cell(atoms.cell.array * strain[:, None], scale_atoms=True)
    atoms.positions += rng.normal(0, 0.02, atoms.positions.shape)
    if pull_apart and len(atoms) > 1:
        atoms.positions[: len(atoms) // 2] += np.where(mask, 0.0, 8.0)  # half-way into the vacuum
    frac = atoms.get_scaled_positions(wrap=False)
    frac[:, mask] = np.mod(frac[:, mask], 1.0)  # wrap like a code would, periodic axes only
    atoms.set_scaled_positions(frac)
    return atoms


def build(n_structures: int, n_models: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    reference, relaxed, rows = {}, {}, []
    dims = list(AXES)
    for k in range(n_structures):
        dim = dims[k % 4]
        ref = synthetic_structure(rng, dim, int(rng.integers(1, 41)))
        sid = f"s{k:06d}"
        ref.info.update(id=sid, energy_ref_ev=-4.0 * len(ref))
        reference[sid] = ref
        for m in range(n_models):
            model = f"model-{m}"
            relaxed[(model, sid)] = relaxed_copy(rng, ref, pull_apart=k % 47 == 0)
            rows.append({"model": model, "id": sid, "dimension": dim, "natoms": len(ref), "converged": True,
                         "failure_reason": "", "steps": int(rng.integers(1, 500)),
                         "energy_ev": -4.0 * len(ref) + rng.normal(0, 0.03) * len(ref),
                         "energy_ref_ev": -4.0 * len(ref), "max_force_ev_per_a": 0.03, "wall_s": 0.1})
    return pd.DataFrame(rows), reference, relaxed


def main() -> None:
    n_structures = int(sys.argv[1]) if len(sys.argv) > 1 else 40_000
    n_models = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    t0 = time.perf_counter()
    results, reference, relaxed = build(n_structures, n_models)
    print(f"built {len(results)} rows ({n_structures} structures x {n_models} model(s)) "
          f"in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    scored = score(results, reference, relaxed, {"2D": 7.5, "1D": 12.5, "0D": 20.0})
    seconds = time.perf_counter() - t0
    print(f"score: {len(scored)} rows in {seconds:.2f} s = {len(scored) / seconds:,.0f} structures/s")
    print("failures:", scored["failure_reason"].replace("", "success").value_counts().to_dict())
    print(f"median position MAE {scored['position_mae_a'].median():.4f} Å, "
          f"median |cell change| {scored['cell_change_rel'].abs().median():.4f}")
    print("symmetry at 1e-2:", scored["symmetry"].replace("", "none (0D, 1D)").value_counts().to_dict())
    t0 = time.perf_counter()
    tables = report.tables(scored)
    tables_s = time.perf_counter() - t0
    print(f"report tables: {len(tables)} in {tables_s:.2f} s; scoring and tables {seconds + tables_s:.1f} s")


if __name__ == "__main__":
    main()
