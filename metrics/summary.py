"""Tables per model x dimensionality over a scored results table (pure functions).

Which structures enter which numbers:

- failures: every structure of the run, each counted once under its failure_reason; the
  percentage is of the finished structures (those with a result: not `missing`, and not
  stopped by a user's time limit, `timeout`).
- steps: structures the optimizer converged (`converged` true), whatever the host checks
  said afterwards: it is the cost of a relaxation, and a converged-then-fragmented one
  still took those steps (`fragmented` counts them). Steps are ASE's `nsteps`: a
  structure already converged at the PBE geometry counts 0 (`at_step_0` counts them);
  the paper's "converged after 1 step" counts force evaluations, which is every figure
  of the table plus one.
- energy and position errors: successful relaxations only (failure_reason ""): a
  diverged or fragmented structure has no meaningful error, and it is already counted
  as a failure.
- connectivity (a diagnostic, never a failure): every structure with a final structure.
- reference: every PBE structure of the run once, per dimensionality.
- symmetry: successful relaxations whose PBE and relaxed groups were both determined
  (3D and 2D; metrics.symmetry), as matbench-discovery counts them.

Rows are ordered by model (first appearance in the table) and dimensionality 0D..3D;
a (model, dimensionality) pair without structures has no row.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from adapters.wire import DIMENSIONS
from metrics import symmetry as symmetry_groups
from metrics.per_structure import FAILURE_REASONS, NOT_FAILURES

KEYS = ["model", "dimension"]
#: The fraction of successful relaxations with |energy error| below this (meV/atom).
ENERGY_WITHIN_MEV = 10.0


def ordered_dimensions(present) -> list[str]:
    """The dimensionalities in `present`, 0D..3D first, any other label after them."""
    present = set(present)
    return [d for d in DIMENSIONS if d in present] + sorted(present - set(DIMENSIONS))


def flag(scored: pd.DataFrame, column: str) -> pd.Series:
    """A boolean column as read from the table or back from CSV (absent: all False)."""
    if column not in scored:
        return pd.Series(False, index=scored.index)
    return scored[column].astype(str).str.lower().isin(["true", "1", "1.0"])


def successful(scored: pd.DataFrame) -> pd.DataFrame:
    """The rows whose failure_reason is empty (NaN, as read back from CSV, counts as empty)."""
    return scored[scored["failure_reason"].fillna("").astype(str) == ""]


def _groups(scored: pd.DataFrame) -> pd.DataFrame:
    """Every (model, dimension) pair present, in report order."""
    pairs = scored[KEYS].drop_duplicates().astype(str)
    models = list(dict.fromkeys(scored["model"].astype(str)))
    order = {d: i for i, d in enumerate(DIMENSIONS)}
    pairs = pairs.assign(_m=pairs["model"].map(models.index), _d=pairs["dimension"].map(lambda d: order.get(d, 99)))
    return pairs.sort_values(["_m", "_d", "dimension"])[KEYS].reset_index(drop=True)


def _describe(scored: pd.DataFrame, values: pd.Series, stats: dict) -> pd.DataFrame:
    """One row per (model, dimension) of `scored`, with stats[name](values of the group)."""
    pairs = _groups(scored)
    keyed = {key: group for key, group in values.groupby([scored.loc[values.index, k].astype(str) for k in KEYS])}
    rows = []
    for model, dim in pairs.itertuples(index=False):
        v = keyed.get((model, dim), values.iloc[:0]).dropna().to_numpy(dtype=float)
        rows.append({"model": model, "dimension": dim, "n": len(v),
                     **{name: (func(v) if len(v) else np.nan) for name, func in stats.items()}})
    return pd.DataFrame(rows, columns=[*KEYS, "n", *stats])


def _q(p):
    return lambda v: float(np.quantile(v, p))


def failures(scored: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table II: structures, finished, failed, failed % (of the finished ones),
    one column per reason, and the tool's own outcomes, which are not results and never
    count as failed or finished: `timeout` (stopped by a time limit the user set) and
    `missing` (no result yet: an incomplete run). A group with either is not comparable
    with the paper's counts (`complete` false)."""
    reasons = scored["failure_reason"].fillna("").astype(str)
    pairs = _groups(scored)
    counts = pd.crosstab([scored["model"].astype(str), scored["dimension"].astype(str)], reasons)
    other = sorted(set(reasons) - {"", *NOT_FAILURES, *FAILURE_REASONS})  # an unknown reason still counts
    rows = []
    for model, dim in pairs.itertuples(index=False):
        row = counts.loc[(model, dim)] if (model, dim) in counts.index else pd.Series(dtype=int)
        total = int(row.sum())
        tools = {reason: int(row.get(reason, 0)) for reason in NOT_FAILURES}
        finished = total - sum(tools.values())
        failed = finished - int(row.get("", 0))
        rows.append({"model": model, "dimension": dim, "structures": total, "finished": finished, "failed": failed,
                     "failed_pct": 100.0 * failed / finished if finished else np.nan,
                     **{reason: int(row.get(reason, 0)) for reason in (*FAILURE_REASONS, *other)}, **tools,
                     "complete": finished == total})
    return pd.DataFrame(rows)


def steps(scored: pd.DataFrame) -> pd.DataFrame:
    """Optimizer steps of converged relaxations: n, median, quartiles, mean, max; how many
    converged at step 0 (already converged at the PBE geometry) and how many of them
    then failed the host's fragmentation check."""
    converged = flag(scored, "converged")
    table = _describe(scored, scored.loc[converged, "steps"],
                      {"median": np.median, "q1": _q(0.25), "q3": _q(0.75), "mean": np.mean, "max": np.max,
                       "at_step_0": lambda v: int((v == 0).sum())})
    fragmented = scored["failure_reason"].fillna("").astype(str).str.startswith("fragmented")
    table["fragmented"] = _describe(scored, scored.loc[converged & fragmented, "steps"], {})["n"].to_numpy()
    return table


def energy(scored: pd.DataFrame) -> pd.DataFrame:
    """Energy error (meV/atom) of successful relaxations: n, mean (signed), median
    (signed), MAE, quartiles (signed), and the fraction with |error| < 10 meV/atom."""
    values = successful(scored)["energy_error_mev_per_atom"]
    return _describe(scored, values, {
        "mean": np.mean, "median": np.median, "mae": lambda v: float(np.abs(v).mean()),
        "q1": _q(0.25), "q3": _q(0.75),
        "within_10_mev": lambda v: float((np.abs(v) < ENERGY_WITHIN_MEV).mean())})


def positions(scored: pd.DataFrame) -> pd.DataFrame:
    """Position MAE (Å) of successful relaxations: n, median, quartiles, mean; and the
    median RMSD and median |relative cell change| where present."""
    ok = successful(scored)
    table = _describe(scored, ok["position_mae_a"],
                      {"median": np.median, "q1": _q(0.25), "q3": _q(0.75), "mean": np.mean})
    for column, name, transform in (("position_rmsd_a", "rmsd_median", None),
                                    ("cell_change_rel", "cell_change_abs_median", np.abs)):
        if column in ok:
            values = ok[column] if transform is None else transform(ok[column])
            table[name] = _describe(scored, values, {"m": np.median})["m"].to_numpy()
    return table


def connectivity(scored: pd.DataFrame) -> pd.DataFrame:
    """Diagnostic: relaxed structures with more bonded pieces than their PBE structure,
    per (model, dimension), counted among all structures and among the successful ones."""
    disconnected = flag(scored, "disconnected")
    ok = scored["failure_reason"].fillna("").astype(str) == ""
    rows = []
    for model, dim in _groups(scored).itertuples(index=False):
        group = (scored["model"].astype(str) == model) & (scored["dimension"].astype(str) == dim)
        rows.append({"model": model, "dimension": dim, "structures": int(group.sum()),
                     "disconnected": int((group & disconnected).sum()),
                     "disconnected_successful": int((group & disconnected & ok).sum())})
    return pd.DataFrame(rows, columns=[*KEYS, "structures", "disconnected", "disconnected_successful"])


def reference(scored: pd.DataFrame) -> pd.DataFrame:
    """The PBE structures of the run, per dimensionality: how many, how many already wider
    than their own fragmentation limit (they fail for every model), and how many whose
    dataset label disagrees with the dimensionality of their geometry."""
    ref = scored.drop_duplicates("id")
    rows = []
    for dim in ordered_dimensions(ref["dimension"].astype(str)):
        group = ref["dimension"].astype(str) == dim
        rows.append({"dimension": dim, "structures": int(group.sum()),
                     "over_own_limit": int((group & flag(ref, "reference_over_limit")).sum()),
                     "label_mismatch": int((group & flag(ref, "dimension_mismatch")).sum())})
    return pd.DataFrame(rows, columns=["dimension", "structures", "over_own_limit", "label_mismatch"])


def symmetry(scored: pd.DataFrame) -> pd.DataFrame:
    """Symmetry kept per (model, dimension) with a group and per tolerance: n (successful
    relaxations with both groups determined), the fractions that match, decrease,
    increase or change to another group of the same order, and the mean |change| of the
    number of symmetry operations (matbench-discovery's n_sym_ops_mae)."""
    columns = [*KEYS, "group", "symprec", "n", *symmetry_groups.OUTCOMES, "ops_mae"]
    ok = successful(scored)
    rows = []
    for model, dim in _groups(scored).itertuples(index=False):
        if dim not in symmetry_groups.KIND:
            continue
        group = ok[(ok["model"].astype(str) == model) & (ok["dimension"].astype(str) == dim)]
        for symprec in symmetry_groups.SYMPRECS:
            _, _, ops_ref, ops, change = symmetry_groups.columns(symprec)
            if change not in group:
                continue
            known = group[group[change].fillna("").astype(str) != ""]
            outcome = known[change].astype(str)
            rows.append({"model": model, "dimension": dim, "group": symmetry_groups.KIND[dim], "symprec": symprec,
                         "n": len(known),
                         **{name: float((outcome == name).mean()) if len(known) else np.nan
                            for name in symmetry_groups.OUTCOMES},
                         "ops_mae": float((known[ops].astype(float) - known[ops_ref].astype(float)).abs().mean())
                         if len(known) else np.nan})
    return pd.DataFrame(rows, columns=columns)


def energy_by_element(scored: pd.DataFrame) -> pd.DataFrame:
    """Energy error (meV/atom) of successful relaxations per (model, dimension, element):
    each structure counts once for every element it contains (column `elements`)."""
    columns = [*KEYS, "element", "n", "mean", "mae"]
    ok = successful(scored)
    if "elements" not in ok or ok.empty:
        return pd.DataFrame(columns=columns)
    long = ok.assign(element=ok["elements"].fillna("").astype(str).str.split()).explode("element")
    long = long[long["element"].astype(bool) & long["energy_error_mev_per_atom"].notna()]
    error = long["energy_error_mev_per_atom"].astype(float)
    grouped = long.assign(abs_error=error.abs(), error=error).groupby(
        [long["model"].astype(str), long["dimension"].astype(str), "element"], sort=False)
    table = grouped.agg(n=("error", "size"), mean=("error", "mean"), mae=("abs_error", "mean")).reset_index()
    return table[columns]


def summary(scored: pd.DataFrame) -> pd.DataFrame:
    """One line per (model, dimension): the headline number of each table (symmetry: the
    fraction that match at the headline tolerance, NaN where there is no group)."""
    fail, st, en, pos = failures(scored), steps(scored), energy(scored), positions(scored)
    sym = symmetry(scored)
    sym = sym[sym["symprec"] == symmetry_groups.SYMPRECS[0]].set_index(KEYS)["match"]
    kept = [sym.get((model, dim), np.nan) for model, dim in zip(fail["model"], fail["dimension"])]
    return pd.DataFrame({
        "model": fail["model"], "dimension": fail["dimension"], "structures": fail["structures"],
        "finished": fail["finished"], "failed": fail["failed"], "failed_pct": fail["failed_pct"],
        "median_steps": st["median"],
        "energy_mae_mev": en["mae"], "energy_median_mev": en["median"], "energy_within_10_mev": en["within_10_mev"],
        "position_mae_median_a": pos["median"], "symmetry_match": kept,
    })


#: Mean coordination numbers of the PBE structures, binned to read the errors against them:
#: (upper edge, label); a structure falls in the first bin whose edge is above its value.
COORDINATION_BINS = ((0.5, "0"), (1.5, "1"), (2.5, "2"), (3.5, "3"), (4.5, "4"), (6.5, "5–6"), (9.5, "7–9"),
                     (np.inf, "≥10"))


def coordination_bin(values: pd.Series) -> pd.Series:
    edges = [-np.inf, *(edge for edge, _ in COORDINATION_BINS)]
    return pd.cut(values.astype(float), edges, labels=[label for _, label in COORDINATION_BINS], right=False)


def coordination(scored: pd.DataFrame) -> pd.DataFrame:
    """Beyond the paper: per model and bin of the PBE structure's mean coordination number,
    every dimensionality on one axis: structures (finished), which dimensionalities they
    come from, the failed share, the energy MAE (meV/atom) and the median position MAE (Å)
    of the successful ones. Empty for a table from before the coordination column."""
    columns = ["model", "coordination_bin", "dimensions", "n", "failed_share", "energy_mae_mev",
               "position_mae_median_a"]
    if "coordination" not in scored or scored["coordination"].isna().all():
        return pd.DataFrame(columns=columns)
    reasons = scored["failure_reason"].fillna("").astype(str)
    finished = scored[~reasons.isin(NOT_FAILURES) & scored["coordination"].notna()]
    bins = coordination_bin(finished["coordination"])
    rows = []
    for model in dict.fromkeys(finished["model"].astype(str)):
        of_model = finished["model"].astype(str) == model
        for _, label in COORDINATION_BINS:
            group = finished[of_model & (bins == label)]
            if group.empty:
                continue
            ok = successful(group)
            rows.append({"model": model, "coordination_bin": label,
                         "dimensions": ",".join(ordered_dimensions(group["dimension"].astype(str))), "n": len(group),
                         "failed_share": float((group["failure_reason"].fillna("").astype(str) != "").mean()),
                         "energy_mae_mev": float(ok["energy_error_mev_per_atom"].abs().mean()) if len(ok) else np.nan,
                         "position_mae_median_a": float(ok["position_mae_a"].median()) if len(ok) else np.nan})
    return pd.DataFrame(rows, columns=columns)


def hard_cases(scored: pd.DataFrame, spare: int = 1) -> pd.DataFrame:
    """Beyond the paper: the structures that every model, or all but `spare`, failed (at
    least two models failed it), with each model's reason: the first
    place to look for a bad reference structure or a blind spot the models share."""
    columns = ["id", "dimension", "failed", "models", "failure_reasons"]
    reasons = scored["failure_reason"].fillna("").astype(str)
    judged = scored[~reasons.isin(NOT_FAILURES)].assign(reason=reasons)
    rows = []
    for sid, group in judged.groupby(judged["id"].astype(str), sort=False):
        failed = group[group["reason"] != ""]
        if len(group) >= 2 and len(failed) >= max(2, len(group) - spare):
            rows.append({"id": sid, "dimension": str(group["dimension"].iloc[0]), "failed": len(failed),
                         "models": len(group),
                         "failure_reasons": "; ".join(f"{m}: {r or 'ok'}" for m, r in
                                                      zip(group["model"].astype(str), group["reason"]))})
    table = pd.DataFrame(rows, columns=columns)
    order = {d: i for i, d in enumerate(DIMENSIONS)}
    return table.sort_values(["failed", "dimension", "id"], ascending=[False, True, True],
                             key=lambda c: c.map(order) if c.name == "dimension" else c).reset_index(drop=True)
