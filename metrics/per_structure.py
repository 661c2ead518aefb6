"""Per-structure scores of every (model, structure) relaxation, and the host-side failures.

score() adds to the merged results table, one row per (model, structure):

- `periodic_axes`: lattice vectors without vacuum in the PBE structure ("abc", "ab", "c", "").
  The dimensionality of every row (`dimension`: cell mask, extent, limit) is the one of
  these axes; the dataset's own label stays in `dimension_label`, and
  `dimension_mismatch` flags where the two disagree.
- `energy_error_mev_per_atom`: (E_model - E_PBE) / N_atoms * 1000, signed; E_PBE is the
  uncorrected total PBE energy. NaN when the model gave no energy.
- `position_mae_a`, `position_rmsd_a`: geometry.position_errors of the final structure
  against the PBE one (same atom order, reference made contiguous across the vacuum,
  periodic wrapping undone, Kabsch superposition).
- `cell_change_rel`: geometry.cell_change, (model - PBE) / PBE of the volume (3D), the
  periodic area (2D) or the periodic length (1D); NaN for 0D.
- `extent_a`, `extent_ref_a`: thickness (2D), width (1D, the authors' spans), diameter (0D)
  of the final and of the PBE structure; NaN for 3D. The final structure is measured on
  its positions followed continuously from the PBE structure (geometry.followed_extent),
  so a fragment that drifted across the vacuum is measured where it went, not next to a
  periodic image of its partner; the PBE one on its own geometry (geometry.extent).
- `extent_ambiguous`: some atom moved, about the structure's mean, by more than half
  of a vacuum lattice vector (geometry.AMBIGUOUS_DISPLACEMENT), where the nearest-image reading may be wrong (a diagnostic).
- `reference_over_limit`: the PBE structure itself is wider than its limit (it fails for
  every model; counted per dimensionality in the report).
- `fragments`, `fragments_ref`, `disconnected`: covalently bonded pieces
  (geometry.fragments) of the final structure, on its followed positions (as its extent:
  a layer that drifted across the vacuum is a piece of its own, not joined again to a
  periodic image of its partner), and of the PBE structure, and whether the final one has
  more. A diagnostic only: the paper does not count it as a failure.
- `coordination`: the PBE structure's mean coordination number (geometry.coordination: each
  atom's first shell of bonded neighbours), the same for every model: to read errors and
  failures against how coordinated a structure is, across dimensionalities.
- `symmetry_kind`, `symmetry_group_ref`, `symmetry_group`, `symmetry_ops_ref`,
  `symmetry_ops`, `symmetry` (match / decrease / increase / changed), and the same at
  symprec 1e-5 with the suffix `_1e-05`: the space group (3D) or layer group (2D) of the
  PBE and of the relaxed structure (metrics.symmetry). Empty for 0D and 1D.

and sets `failure_reason`, the paper's failures (Table II) and only those, by this
precedence, first match wins (mutually exclusive):

1. a reason the container gave: `model_error`, `diverged`, `not_converged`;
2. `fragmented_thickness` (2D), `fragmented_width` (1D), `fragmented_diameter` (0D): the
   extent is larger than the limit for the structure's dimensionality.

`converged` stays what the optimizer said. Rows without a usable final structure (none,
or non-finite numbers in it) keep their reason and get NaN geometry: one bad row never
stops the scoring of the others. All the geometry is computed in batches of structures
with the same number of atoms and the same periodic axes.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd

from adapters.wire import FRAGMENTED
from metrics import geometry, symmetry

CONTAINER_REASONS = ("model_error", "diverged", "not_converged")
#: The reason of a structure without a result (an incomplete run): not a failure.
MISSING = "missing"
#: A structure over the tool's wall-time limit per structure (structure_timeout_s).
TIMEOUT = "timeout"
#: Reasons outside the paper's Table II: the tool's, not the model's.
NOT_FAILURES = (MISSING, TIMEOUT)
#: Every failure reason, in order of precedence ("" is success).
FAILURE_REASONS = (*CONTAINER_REASONS, *FRAGMENTED.values())
#: The columns score() adds (see the module docstring).
SCORE_COLUMNS = ("periodic_axes", "dimension_label", "dimension_mismatch", "energy_error_mev_per_atom",
                 "position_mae_a", "position_rmsd_a", "cell_change_rel", "extent_a", "extent_ref_a",
                 "reference_over_limit", "fragments", "fragments_ref", "disconnected", "extent_ambiguous", "coordination",
                 "symmetry_kind", *(name for symprec in symmetry.SYMPRECS for name in symmetry.columns(symprec)))


def reference_axes(atoms) -> str:
    """The periodic axes of a PBE structure: info["periodic_axes"], else read off its geometry."""
    axes = atoms.info.get("periodic_axes")
    return geometry.periodic_axes(atoms) if axes is None else str(axes)


def energy_error_mev_per_atom(energy_ev, energy_ref_ev, natoms):
    """(E_model - E_PBE) / N_atoms in meV/atom, signed (positive: the model is higher)."""
    return (np.asarray(energy_ev, dtype=float) - np.asarray(energy_ref_ev, dtype=float)) \
        / np.asarray(natoms, dtype=float) * 1000.0


def _usable(atoms, reference) -> bool:
    """A final structure that can be scored: same size as the reference, finite numbers."""
    return (atoms is not None and len(atoms) == len(reference)
            and np.isfinite(atoms.positions).all() and np.isfinite(atoms.cell.array).all())


def score(results: pd.DataFrame, reference: dict, relaxed: dict, limits: dict) -> pd.DataFrame:
    """A copy of `results` with the score columns added and `failure_reason` completed.

    results: one row per (model, id) with at least model, id, natoms, failure_reason,
    energy_ev, energy_ref_ev. reference: PBE Atoms by id. relaxed: final Atoms by
    (model, id), same atom order as the reference (missing: the relaxation raised
    before a step). limits: fragmentation limits in Å by dimension, e.g.
    {"2D": 7.5, "1D": 12.5, "0D": 20.0}. See the module docstring for the columns.
    """
    table = results.copy()
    n_rows = len(table)
    reason = np.array(["" if pd.isna(r) else str(r) for r in table["failure_reason"]], dtype=object)
    ids = table["id"].astype(str).to_numpy()
    models = table["model"].astype(str).to_numpy()
    missing = sorted(set(ids) - set(reference))
    if missing:
        raise ValueError(f"{len(missing)} id(s) of the results have no reference structure, e.g. {missing[0]}")

    axes_of = {sid: reference_axes(reference[sid]) for sid in set(ids)}
    table["periodic_axes"] = [axes_of[sid] for sid in ids]
    dims = np.array([geometry.dimension_of(axes_of[sid]) for sid in ids], dtype=object)
    table["dimension"] = dims.astype(str)
    labels = [reference[sid].info.get("dimension_label") or dim for sid, dim in zip(ids, dims)]
    table["dimension_label"] = labels
    table["dimension_mismatch"] = np.array(labels, dtype=object) != dims
    table["energy_error_mev_per_atom"] = energy_error_mev_per_atom(
        table["energy_ev"], table["energy_ref_ev"], table["natoms"])

    columns = {name: np.full(n_rows, np.nan) for name in ("position_mae_a", "position_rmsd_a", "cell_change_rel",
                                                          "extent_a")}
    pieces = np.full(n_rows, -1)
    ambiguous = np.zeros(n_rows, bool)
    relaxed_symmetry = {}  # row -> symmetry.groups() of its relaxed structure
    groups = defaultdict(list)  # (natoms, axes) -> rows with a usable final structure
    for row, (model, sid) in enumerate(zip(models, ids)):
        if _usable(relaxed.get((model, sid)), reference[sid]):
            groups[(len(reference[sid]), axes_of[sid])].append(row)
    for (natoms, axes), rows in groups.items():
        rows = np.asarray(rows)
        finals = [relaxed[(models[r], ids[r])] for r in rows]
        pos = np.stack([a.positions for a in finals])
        cell = np.stack([a.cell.array for a in finals])
        ref_pos = np.stack([reference[ids[r]].positions for r in rows])
        ref_cell = np.stack([reference[ids[r]].cell.array for r in rows])
        followed, ref_contiguous, ambiguous[rows] = geometry.follow(pos, cell, ref_pos, ref_cell, axes)
        columns["position_mae_a"][rows], columns["position_rmsd_a"][rows] = geometry.aligned_errors(
            followed, ref_contiguous)
        columns["cell_change_rel"][rows] = geometry.cell_change(cell, ref_cell, axes)
        columns["extent_a"][rows] = geometry.followed_extent(followed, cell, axes)
        pieces[rows] = geometry.fragments(np.stack([a.numbers for a in finals]), followed, cell, axes, unwrap=False)
        for row, atoms, where, box in zip(rows, finals, followed, cell):
            relaxed_symmetry[row] = symmetry.groups(atoms.numbers, where, box, axes)

    ref_ids = defaultdict(list)  # (natoms, axes) -> PBE structures of the run
    for sid in sorted(set(ids)):
        ref_ids[(len(reference[sid]), axes_of[sid])].append(sid)
    ref_extent, ref_pieces, ref_symmetry, ref_coordination = {}, {}, {}, {}
    for (natoms, axes), wanted in ref_ids.items():
        refs = [reference[sid] for sid in wanted]
        ref_pos, ref_cell = np.stack([a.positions for a in refs]), np.stack([a.cell.array for a in refs])
        for sid, atoms, where, box in zip(wanted, refs, geometry.unwrap_vacuum(ref_pos, ref_cell, axes), ref_cell):
            ref_symmetry[sid] = symmetry.groups(atoms.numbers, where, box, axes)
            ref_coordination[sid] = float(geometry.coordination(atoms.numbers, where, box, axes).mean())
        ref_extent.update(zip(wanted, np.atleast_1d(geometry.extent(ref_pos, ref_cell, axes))))
        ref_pieces.update(zip(wanted, geometry.fragments(np.stack([a.numbers for a in refs]), ref_pos, ref_cell, axes)))

    for name, values in columns.items():
        table[name] = values
    limit = np.array([limits.get(d, np.inf) if d in FRAGMENTED else np.inf for d in dims], dtype=float)
    table["extent_ref_a"] = [ref_extent[sid] for sid in ids]
    table["reference_over_limit"] = table["extent_ref_a"].to_numpy(dtype=float) > limit
    ref_count = np.array([ref_pieces[sid] for sid in ids])
    table["fragments"] = pd.array(np.where(pieces >= 0, pieces, None), dtype="Int64")
    table["fragments_ref"] = pd.array(ref_count, dtype="Int64")
    table["disconnected"] = (pieces >= 0) & (pieces > ref_count)
    table["extent_ambiguous"] = ambiguous
    table["coordination"] = [ref_coordination[sid] for sid in ids]
    for name, values in symmetry.table_columns(ids, dims, ref_symmetry, relaxed_symmetry).items():
        table[name] = values

    fragmented = (reason == "") & (columns["extent_a"] > limit)
    reason[fragmented] = [FRAGMENTED[d] for d in dims[fragmented]]
    table["failure_reason"] = reason.astype(str)
    return table
