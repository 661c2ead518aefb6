"""The one table of column labels: every column a person reads, headed as a paper would head
it, the quantity and its unit (meV/atom, Å, eV/Å, µs/atom/step). report.md, report.html,
explore.html, the leaderboard and comparisons show these; the CSV and Parquet files keep the
column names, which is what pandas and scripts want.

A column means the same in every table (COLUMNS), except the short statistics names the
per-quantity tables share (n, mean, median, mae, q1, q3, ...): their unit is the table's
(BY_TABLE). A column in neither is shown as its name with spaces.
"""

from __future__ import annotations

COLUMNS = {
    # what ran
    "model": "model", "dimension": "dim.", "group": "group", "run": "run", "dataset": "dataset",
    "dataset_sha256": "dataset sha256", "protocol": "protocol", "reproduction": "reproduction",
    "image": "image", "image_id": "image id", "calculator": "calculator", "python": "Python",
    "packages": "packages", "devices": "devices", "engine": "engine", "element": "element", "id": "id",
    "formula": "formula", "natoms": "atoms", "case": "view", "dimensions": "dimensionalities",
    "models": "models", "gallery": "gallery", "reason": "reason", "error": "error", "symmetry": "symmetry",
    # counts and failures (Table II)
    "structures": "structures", "finished": "finished", "failed": "failed", "failed_pct": "failed (%)",
    "paper_failed": "failed in the paper", "model_error": "model error", "diverged": "diverged",
    "not_converged": "not converged", "fragmented_thickness": "fragmented: thickness",
    "fragmented_width": "fragmented: width", "fragmented_diameter": "fragmented: diameter", "missing": "missing",
    "timeout": "timed out", "complete": "complete", "failure_reason": "failure",
    "failure_reasons": "failures per model",
    # the headline numbers
    "median_steps": "steps (median)", "steps": "steps", "energy_mae_mev": "ΔE MAE (meV/atom)",
    "energy_median_mev": "ΔE median (meV/atom)", "energy_within_10_mev": "|ΔE| < 10 meV/atom (share)",
    "energy_error_mev_per_atom": "ΔE (meV/atom)", "position_mae_median_a": "Δr MAE, median (Å)",
    "position_mae_a": "Δr MAE (Å)", "symmetry_match": "symmetry kept (share)",
    "max_force_ev_per_a": "max |F| (eV/Å)", "extent_a": "extent (Å)", "extent_ref_a": "PBE extent (Å)",
    "coordination": "coordination (mean)", "coordination_bin": "coordination",
    "failed_share": "failed (share)",
    # diagnostics
    "disconnected": "more pieces than PBE", "disconnected_successful": "of them successful",
    "over_own_limit": "PBE over its limit", "label_mismatch": "label ≠ geometry",
    # speed
    "busy_s": "busy (s)", "us_per_atom_step": "µs/atom/step", "structures_per_s": "structures/s",
    "projected_h": "projected (h)", "projected_from": "projected from", "worker_s": "worker time (s)",
    "structures_per_worker_s": "structures per worker-s", "median_s_per_structure": "s/structure (median)",
    # comparisons of two runs
    "status_changed": "status changed", "steps_identical_pct": "steps identical (%)",
    "steps_close_pct": "steps within max(2, 2 %) (%)", "dE_median_mev": "|ΔE| median (meV/atom)",
    "dE_max_mev": "|ΔE| max (meV/atom)", "dE_le_1mev_pct": "|ΔE| ≤ 1 meV/atom (%)",
    "dr_median_a": "|Δr| median (Å)", "dr_max_a": "|Δr| max (Å)", "agree": "agree",
    "status_a": "status in A", "status_b": "status in B", "what": "what",
}

#: The statistics a per-quantity table shares, in that table's unit.
_STATS = {"n": "n", "mean": "mean", "median": "median", "mae": "MAE", "q1": "Q1", "q3": "Q3", "max": "max"}


def _stats(unit: str, **extra: str) -> dict[str, str]:
    return {**{k: f"{v} ({unit})" for k, v in _STATS.items() if k != "n"}, "n": "n", **extra}


BY_TABLE = {
    "steps": {**{k: f"{v} (steps)" for k, v in _STATS.items() if k != "n"}, "n": "n",
              "at_step_0": "converged at step 0", "fragmented": "converged, then fragmented"},
    "energy": _stats("meV/atom", within_10_mev="|ΔE| < 10 meV/atom (share)"),
    "energy_by_element": _stats("meV/atom"),
    "positions": _stats("Å", rmsd_median="Δr RMSD, median (Å)", cell_change_abs_median="|cell change|, median (rel.)"),
    "symmetry": {"group": "group", "symprec": "symprec (Å)", "n": "n", "match": "kept (share)",
                 "decrease": "lost (share)", "increase": "gained (share)", "changed": "changed (share)",
                 "ops_mae": "symmetry ops MAE"},
    "coordination": {"n": "n", "failed_share": "failed (share)", "energy_mae_mev": "ΔE MAE (meV/atom)",
                     "position_mae_median_a": "Δr MAE, median (Å)"},
}


def label(column: str, table: str = "") -> str:
    """How a column of `table` is headed for a person."""
    return BY_TABLE.get(table, {}).get(column) or COLUMNS.get(column) or str(column).replace("_", " ")


def labelled(columns, table: str = "") -> list[str]:
    return [label(str(c), table) for c in columns]
