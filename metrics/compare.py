"""Two runs of the same structures side by side: do they agree? (`make compare`, `make
reproduce`, and `make perf-engine`'s agreement table.) Pure: tables in, tables and a
verdict out; the host reads the run folders and writes the documents.

A structure agrees when its failure status is the same in both runs, its steps are equal
(or, for float32, within max(2, 2 %)), and, where both relaxations succeeded, its energy
per atom and every atom's position are within the tolerance. The tolerance follows the
precision and the devices (tolerance_for): float64 on the CPU with the same engine and base
image must be bit-identical; float64 across engines or devices, or on GPUs, differs by rounding only; float32 is
judged on margins measured between runs whose arithmetic differs (docs/reproducing.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from metrics.report import HTML_HEAD, html_table, lookup, markdown_table

#: The columns of a run's table a comparison reads.
KEYS = ["model", "id"]
READ = ["dimension", "natoms", "failure_reason", "converged", "steps", "energy_ev"]
#: Failure reasons that are no outcome of the model: such a structure is left out of a comparison.
NOT_AN_OUTCOME = ("missing", "timeout")
SUCCESS = "ok"
#: What `make perf-engine` has always reported: the share within one meV/atom.
ENERGY_SHARE_MEV = 1.0


@dataclass(frozen=True)
class Tolerance:
    name: str                 # identical | float64 | float32
    why: str
    energy_mev: float         # |ΔE| per atom a structure may differ by (successful in both)
    position_a: float         # max |Δr| over its atoms a structure may differ by (successful in both)
    steps_exact: bool         # else within max(2, 2 %)
    min_share: float          # share of structures that must agree
    status_changes: float     # share of structures whose failure status may change

    def text(self) -> str:
        if self.energy_mev == 0 and self.position_a == 0:
            return f"{self.name}: every number equal ({self.why})"
        steps = "equal" if self.steps_exact else "within max(2, 2 %)"
        return (f"{self.name}: |ΔE| ≤ {self.energy_mev:g} meV/atom, |Δr| ≤ {self.position_a:g} Å, steps {steps}, "
                f"≥ {self.min_share:.0%} of structures, failure status changed ≤ {self.status_changes:.0%} "
                f"({self.why})")


IDENTICAL = Tolerance("identical", "float64, both on the CPU with the same engine and base image: the same "
                      "arithmetic", 0.0, 0.0, True, 1.0, 0.0)
#: The batched engine against ASE in float64 differs by 1e-6 meV/atom and 1e-8 Å at most
#: (tests/test_batched.py); a thousand times that is still nothing a user would see.
FLOAT64 = Tolerance("float64", "float64, another engine, device or base image, or a GPU: rounding only", 1e-3,
                    1e-5, True, 1.0, 0.0)
#: Measured (docs/reproducing.md): CHGNet and SevenNet-0 in float32 on the shipped sample,
#: sequential against batched and one CPU thread against two.
FLOAT32 = Tolerance("float32", "float32: rounding grows along a relaxation", 1.0, 0.01, False, 0.95, 0.02)


def tolerance_for(a: dict, b: dict, model: str) -> Tolerance:
    """The tolerance for `model` between runs whose provenance is a and b."""
    dtypes = {lookup(p, "models", model, "dtype") for p in (a, b)}
    if dtypes != {"float64"}:
        return FLOAT32  # float32, or not recorded: judged as the looser
    # a GPU's float64 sums (atomics, the order of parallel reductions) may differ in the last bit
    # between two runs, and so may another base image's libm (exp, log): only two CPU runs of the
    # same engine on the same base image must be bit-identical
    cpu = device_kind(a) == "cpu" == device_kind(b)
    same_base = lookup(a, "models", model, "base_image_id") == lookup(b, "models", model, "base_image_id")
    return IDENTICAL if cpu and same_base and same_arithmetic(a, b) else FLOAT64


def same_arithmetic(a: dict, b: dict) -> bool:
    """The same kind of device and the same engine (float64 then gives the same bits)."""
    return device_kind(a) == device_kind(b) and a.get("engine", "ase") == b.get("engine", "ase")


def device_kind(provenance: dict) -> str:
    devices = provenance.get("devices") or []
    kinds = sorted({"cpu" if d.get("gpu") is None else "cuda" for d in devices if isinstance(d, dict)})  # workers.Slot
    return ",".join(kinds) or "cpu"


def pair(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """The structures of the models in both tables that have an outcome in both, one row
    each: every READ column suffixed _a and _b, status_a/_b (SUCCESS or the reason)."""
    left = a[KEYS + READ]
    right = b[KEYS + READ]
    rows = left.merge(right, on=KEYS, suffixes=("_a", "_b"))
    for side in ("a", "b"):
        rows[f"status_{side}"] = rows[f"failure_reason_{side}"].fillna("").replace("", SUCCESS)
    outcome = ~rows["status_a"].isin(NOT_AN_OUTCOME) & ~rows["status_b"].isin(NOT_AN_OUTCOME)
    rows = rows[outcome].copy()
    rows["dimension"] = rows["dimension_a"]
    rows["natoms"] = rows["natoms_a"]
    return rows.reset_index(drop=True)


def differences(pairs: pd.DataFrame, positions: dict[tuple[str, str], float], tolerances: dict[str, Tolerance]
                ) -> pd.DataFrame:
    """Per structure: Δsteps, |ΔE| meV/atom and max |Δr| Å (where both succeeded) and
    whether it agrees within its model's tolerance. positions: (model, id) -> max |Δr|."""
    rows = pairs.copy()
    rows["steps_delta"] = rows["steps_b"] - rows["steps_a"]
    both = (rows["status_a"] == SUCCESS) & (rows["status_b"] == SUCCESS)
    energy = (rows["energy_ev_b"] - rows["energy_ev_a"]).abs() / rows["natoms"] * 1000.0
    rows["energy_mev"] = energy.where(both)
    rows["position_a"] = [positions.get((m, i), np.nan) if ok else np.nan
                          for m, i, ok in zip(rows["model"], rows["id"], both)]
    rows["status_same"] = rows["status_a"] == rows["status_b"]
    rows["steps_equal"] = rows["steps_delta"] == 0
    rows["steps_close"] = steps_close(rows["steps_a"], rows["steps_b"])
    agrees = []
    for row in rows.itertuples(index=False):
        tol = tolerances[row.model]
        steps = row.steps_equal if tol.steps_exact else row.steps_close
        energy_ok = not (row.energy_mev > tol.energy_mev)      # NaN (not both successful): nothing to judge
        position_ok = not (row.position_a > tol.position_a)
        agrees.append(bool(row.status_same and steps and energy_ok and position_ok))
    rows["agrees"] = agrees
    return rows


def steps_close(steps_a: pd.Series, steps_b: pd.Series) -> pd.Series:
    """Steps within max(2, 2 % of the larger): the same answer whichever run is A."""
    return (steps_b - steps_a).abs() <= np.maximum(2, 0.02 * np.maximum(steps_a, steps_b))


def agreement_rows(rows: pd.DataFrame) -> list[tuple[str, int, int]]:
    """`make perf-engine`'s agreement table, (what, structures, of), from converged_a/_b,
    steps_a/_b and energy_mev (|ΔE| meV/atom, NaN where not compared)."""
    energies = rows["energy_mev"].dropna()
    return [("converged flag identical", int((rows["converged_a"] == rows["converged_b"]).sum()), len(rows)),
            ("abs(Δsteps) ≤ max(2, 2 %)", int(steps_close(rows["steps_a"], rows["steps_b"]).sum()), len(rows)),
            (f"abs(ΔE) ≤ {ENERGY_SHARE_MEV:g} meV/atom", int((energies <= ENERGY_SHARE_MEV).sum()), len(energies))]


def agreement_markdown(rows: pd.DataFrame) -> str:
    lines = ["| agreement | structures | share |", "| --- | --- | --- |"]
    lines += [f"| {what} | {n}/{of} | {n / max(1, of):.1%} |" for what, n, of in agreement_rows(rows)]
    return "\n".join(lines)


def side_by_side(rows: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """One row per model × dimensionality (and one per model over all, `all`)."""
    out = []
    for (model, dim), group in _groups(rows, order):
        energy, position = group["energy_mev"].dropna(), group["position_a"].dropna()
        out.append({
            "model": model, "dimension": dim, "structures": len(group),
            "status_changed": int((~group["status_same"]).sum()),
            "steps_identical_pct": _pct(group["steps_equal"]), "steps_close_pct": _pct(group["steps_close"]),
            "dE_median_mev": energy.median() if len(energy) else np.nan,
            "dE_max_mev": energy.max() if len(energy) else np.nan,
            "dE_le_1mev_pct": _pct(energy <= ENERGY_SHARE_MEV) if len(energy) else np.nan,
            "dr_median_a": position.median() if len(position) else np.nan,
            "dr_max_a": position.max() if len(position) else np.nan,
            "agree": f"{int(group['agrees'].sum())}/{len(group)}",
        })
    return pd.DataFrame(out)


def _groups(rows: pd.DataFrame, order: list[str]):
    for model in dict.fromkeys(rows["model"]):
        of_model = rows[rows["model"] == model]
        for dim in [d for d in order if d in set(of_model["dimension"])]:
            yield (model, dim), of_model[of_model["dimension"] == dim]
        yield (model, "all"), of_model


def _pct(mask: pd.Series) -> float:
    return 100.0 * float(mask.mean()) if len(mask) else np.nan


def status_changes(rows: pd.DataFrame) -> pd.DataFrame:
    """A confusion table of the failure statuses that changed: model, in A, in B, count."""
    changed = rows[~rows["status_same"]]
    if changed.empty:
        return pd.DataFrame(columns=["model", "status_a", "status_b", "structures"])
    return (changed.groupby(["model", "status_a", "status_b"]).size().rename("structures").reset_index())


@dataclass
class Verdict:
    code: int                 # 0 reproduced, 1 differs, 2 cannot compare
    line: str
    outside: list[str]        # "model id: why" of the structures outside their tolerance


#: Exit codes of `make compare` and `make reproduce`.
REPRODUCED, DIFFERS, CANNOT_COMPARE = 0, 1, 2


def verdict(rows: pd.DataFrame, tolerances: dict[str, Tolerance]) -> Verdict:
    """Reproduced when, for every model, the statuses changed and the structures that agree
    are within its tolerance; `identical` when nothing differs at all."""
    outside, failed_models = [], []
    for model, group in rows.groupby("model", sort=False):
        tol = tolerances[model]
        changed = int((~group["status_same"]).sum())
        agreeing = float(group["agrees"].mean())
        if changed > tol.status_changes * len(group) or agreeing < tol.min_share:
            failed_models.append(model)
        for row in group[~group["agrees"]].itertuples(index=False):
            outside.append(f"{model} {row.id}: {_why(row, tol)}")
    used = "; ".join(f"{m} {t.text()}" for m, t in tolerances.items() if m in set(rows["model"]))
    if failed_models:
        return Verdict(DIFFERS, f"DIFFERS: {', '.join(failed_models)} outside the tolerance "
                                f"({len(outside)} structure(s) disagree). Tolerances: {used}", outside)
    exact = (rows["status_same"].all() and rows["steps_equal"].all() and not (rows["energy_mev"] > 0).any()
             and not (rows["position_a"] > 0).any())
    what = "identical" if exact else f"within tolerance ({len(outside)} structure(s) outside it, allowed)"
    return Verdict(REPRODUCED, f"REPRODUCED: {len(rows)} structure(s), {what}. Tolerances: {used}", outside)


def on_other_images(result: Verdict, rebuilt: list[str]) -> Verdict:
    """The verdict of a reproduction whose images were rebuilt from the bundle's own inputs on
    another base image or wheelhouse (as on another machine), so their tags differ from the
    recorded ones: the code stands, the line says so (never a bare REPRODUCED)."""
    if not rebuilt:
        return result
    word, rest = result.line.split(":", 1)
    return Verdict(result.code, f"{word} on other images ({'; '.join(rebuilt)}):{rest}", result.outside)


def not_verified(result: Verdict, reasons: list[str]) -> Verdict:
    """The verdict when what was compared is not what was recorded (a bundle changed after
    it was made, an image rebuilt under another tag): never a bare REPRODUCED, whatever the
    structures say; exit code 1, like DIFFERS."""
    if not reasons:
        return result
    return Verdict(DIFFERS, f"NOT VERIFIED: {'; '.join(reasons)}. The structures alone: {result.line}",
                   result.outside)


def _why(row, tol: Tolerance) -> str:
    if not row.status_same:
        return f"status {row.status_a} -> {row.status_b}"
    parts = [f"steps {row.steps_a} -> {row.steps_b}"] if row.steps_delta else []
    if row.energy_mev > tol.energy_mev:
        parts.append(f"|ΔE| {row.energy_mev:.3g} meV/atom")
    if row.position_a > tol.position_a:
        parts.append(f"|Δr| {row.position_a:.3g} Å")
    return ", ".join(parts)


def max_displacement(positions_a: np.ndarray, positions_b: np.ndarray, cell: np.ndarray, pbc) -> float:
    """The largest distance between an atom's two relaxed positions, across periodic
    boundaries (an atom wrapped to the other side of its cell has not moved)."""
    from ase.geometry import find_mic

    delta = np.asarray(positions_b) - np.asarray(positions_a)
    if np.any(pbc):
        _, lengths = find_mic(delta, cell, pbc)
    else:
        lengths = np.linalg.norm(delta, axis=1)
    return float(np.max(lengths)) if len(lengths) else 0.0


#: What of two runs' provenance is shown side by side (and may differ without spoiling a reproduction).
SETUP = [("engine", ("engine",)), ("batch atoms", ("batch_atoms",)), ("devices", ("devices",)),
         ("worker threads", ("worker_threading",)), ("CPU", ("host", "cpu_model")), ("GPUs", ("host", "gpus")),
         ("host", ("host", "hostname")), ("tool commit", ("host", "tool_commit")), ("docker", ("host", "docker"))]


def setup_differences(a: dict, b: dict, models: list[str]) -> pd.DataFrame:
    """What ran differently: the settings, machine and, per model, image and package versions."""
    rows = [(what, lookup(a, *path), lookup(b, *path)) for what, path in SETUP]
    # the host's scoring stacks side by side (orchestrator.host), where both recorded one
    stacks = [lookup(p, "scoring", default=None) for p in (a, b)]
    if all(isinstance(s, dict) for s in stacks):
        rows.append(("scoring Python", stacks[0].get("python"), stacks[1].get("python")))
        packages = [s.get("packages") or {} for s in stacks]
        rows += [(f"scoring {name}", packages[0].get(name), packages[1].get(name))
                 for name in sorted(set(packages[0]) | set(packages[1]))]
    for model in models:
        for what in ("image", "image_id", "python", "packages", "dtype", "base_image_id"):
            rows.append((f"{model} {what}", lookup(a, "models", model, what), lookup(b, "models", model, what)))
    table = pd.DataFrame([(w, _show(x), _show(y)) for w, x, y in rows], columns=["what", "A", "B"])
    return table[table["A"] != table["B"]].reset_index(drop=True)


def _show(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_show(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "; ".join(_show(v) for v in value)
    return "" if value is None else str(value)


def documents(names: tuple[str, str], rows: pd.DataFrame, result: Verdict, setup: pd.DataFrame,
              notes: list[str], order: list[str], speed: pd.DataFrame | None = None) -> tuple[str, str]:
    """compare.md and a self-contained compare.html; `speed`: both runs' speed cards, when
    they ran on other devices or engines."""
    import html

    table = side_by_side(rows, order)
    changes = status_changes(rows)
    outside = result.outside[:20] + ([f"... and {len(result.outside) - 20} more"] if len(result.outside) > 20 else [])
    parts = [("Side by side", "Per model and dimensionality, structures with an outcome in both runs: failure "
              "status changed, steps identical and within max(2, 2 %), |ΔE| per atom and the largest atom "
              "displacement |Δr| (where both relaxations succeeded).", table),
             ("Agreement", "As `make perf-engine` reports it, over every model.", None),
             ("Failure status changed", "Structures per (status in A, status in B); ok: no failure.", changes),
             ("What ran differently", "Settings, machines, images and package versions that differ.", setup)]
    if speed is not None:
        parts.append(("Speed", "Each run's speed card (docs/metrics.md): the two ran on other devices or engines.",
                      speed))
    md = [f"# {names[0]} vs {names[1]}\n", f"**{result.line}**\n", f"A: `{names[0]}`  \nB: `{names[1]}`\n"]
    md += [f"- {note}" for note in notes] + ([""] if notes else [])
    body = [HTML_HEAD.format(title=html.escape(f"{names[0]} vs {names[1]}")),
            f"<h1>{html.escape(names[0])} vs {html.escape(names[1])}</h1>",
            f"<p><b>{html.escape(result.line)}</b></p>",
            *(f"<p>{html.escape(note)}</p>" for note in notes)]
    for title, caption, frame in parts:
        md.append(f"## {title}\n\n{caption}\n")
        body += [f"<h2>{html.escape(title)}</h2>", f"<p>{html.escape(caption)}</p>"]
        if frame is None:
            text = agreement_markdown(rows)
            md.append(text + "\n")
            body.append(html_table(pd.DataFrame([r for r in agreement_rows(rows)],
                                                columns=["agreement", "structures", "of"])))
        elif frame.empty:
            md.append("none\n")
            body.append("<p>none</p>")
        else:
            md.append(markdown_table(frame))
            body.append(html_table(frame))
    if outside:
        md += ["## Structures outside the tolerance\n", *(f"- {line}" for line in outside), ""]
        body += ["<h2>Structures outside the tolerance</h2><ul>",
                 *(f"<li>{html.escape(line)}</li>" for line in outside), "</ul>"]
    body.append("</body></html>\n")
    return "\n".join(md), "\n".join(body)
