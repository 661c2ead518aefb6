"""`compare`: two runs, each a run folder or a bundle, side by side; the verdict and its
exit code (metrics.compare decides; this reads the runs and writes the documents)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from adapters.wire import DIMENSIONS
from metrics import compare as judge
from metrics.report import lookup
from metrics.speed import speed_card
from orchestrator import host, runfolder
from orchestrator.bundle import Bundle, label_of, open_bundle
from orchestrator.errors import BenchError
from orchestrator.report import read_frames, read_results, write_table
from orchestrator.runfolder import RunFolder


@dataclass
class RunSide:
    name: str
    table: pd.DataFrame
    relaxed: dict            # (model, id) -> relaxed Atoms
    provenance: dict
    notes: list[str] = field(default_factory=list)
    reference: Path | None = None  # its PBE structures (reference.extxyz), where it holds them
    altered: list[str] = field(default_factory=list)  # why it is not what was recorded (a changed bundle)


def read_side(path: Path, unpack_dir: Path) -> RunSide:
    """A run folder (results.csv, relaxed.extxyz, provenance.json) or a bundle."""
    path = Path(path).expanduser()
    run = RunFolder(path)
    if path.is_dir() and run.results.is_file():
        if not run.provenance.is_file():
            raise CannotCompare(f"{path}: no provenance.json (which data, protocol and precision ran): cannot compare")
        return RunSide(run.name, read_results(run.results), read_relaxed(run.relaxed), run.read_provenance(),
                       reference=run.reference)
    bundle = open_bundle(path, unpack_dir)
    return bundle_side(bundle, bundle.changed_files())


def bundle_side(bundle: Bundle, changed: list[str]) -> RunSide:
    """The run a bundle records; `changed`: its files that differ from their recorded sha256."""
    altered = [f"{bundle.origin.name} changed since it was made ({', '.join(changed)})"] if changed else []
    return RunSide(bundle.run_id, read_results(bundle.results.results), read_relaxed(bundle.results.relaxed),
                   bundle.provenance, altered=altered)


def read_relaxed(path: Path) -> dict:
    from ase.io import read

    from orchestrator.datasets import id_from_extxyz

    if not path.is_file() or path.stat().st_size == 0:
        return {}
    return {(str(a.info["model"]), id_from_extxyz(a.info["id"])): a for a in read(path, ":", format="extxyz")}


@dataclass
class Comparison:
    names: tuple[str, str]
    rows: pd.DataFrame
    verdict: judge.Verdict
    markdown: str
    html: str


def compare_runs(a: RunSide, b: RunSide, rebuilt: list[str] = ()) -> Comparison:
    """The two runs judged structure by structure; cannot compare (exit 2) when they are not
    runs of the same data with the same protocol and at least one model in common.
    `rebuilt`: images a reproduction rebuilt on another foundation, said in the verdict."""
    for what, key in (("dataset", ("dataset", "identity")), ("protocol", ("protocol",)),
                      ("fragmentation limits", ("fragmentation_limits_a",))):
        left, right = lookup(a.provenance, *key), lookup(b.provenance, *key)
        if left != right:
            raise CannotCompare(f"{a.name} and {b.name} differ in their {what} ({left} vs {right})")
    for side in (a, b):
        absent = [c for c in judge.KEYS + judge.READ if c not in side.table.columns]
        if absent:
            raise CannotCompare(f"{side.name}: results.csv has no column {', '.join(absent)}: cannot compare")
    models = [m for m in dict.fromkeys(a.table["model"]) if m in set(b.table["model"])]
    if not models:
        raise CannotCompare(f"{a.name} and {b.name} have no model in common "
                            f"({', '.join(sorted(set(a.table['model'])))} vs {', '.join(sorted(set(b.table['model'])))})")
    pairs = judge.pair(a.table[a.table["model"].isin(models)], b.table[b.table["model"].isin(models)])
    if pairs.empty:
        raise CannotCompare(f"{a.name} and {b.name} have no structure with an outcome in both")
    positions = {}
    for row in pairs.itertuples(index=False):
        key = (row.model, row.id)
        if row.status_a == judge.SUCCESS == row.status_b:
            for side in (a, b):  # a verdict on missing evidence would be no verdict
                if key not in side.relaxed:
                    raise CannotCompare(f"{side.name}: relaxed.extxyz has no relaxed {row.model} {row.id}, which "
                                        "succeeded in both runs: its positions cannot be compared (a run folder or "
                                        "bundle missing files)")
            if row.energy_ev_a != row.energy_ev_a or row.energy_ev_b != row.energy_ev_b:
                raise CannotCompare(f"{row.model} {row.id} succeeded in both runs but results.csv has no energy for it "
                                    f"in {a.name if row.energy_ev_a != row.energy_ev_a else b.name}: cannot compare")
            first, second = a.relaxed[key], b.relaxed[key]
            positions[key] = judge.max_displacement(first.positions, second.positions, first.cell, first.pbc)
    tolerances = {m: judge.tolerance_for(a.provenance, b.provenance, m) for m in models}
    rows = judge.differences(pairs, positions, tolerances)
    result = judge.not_verified(judge.on_other_images(judge.verdict(rows, tolerances), list(rebuilt)),
                                a.altered + b.altered)
    notes = a.notes + b.notes + _left_out(a, b, models)
    drift = host.stack_differences(lookup(a.provenance, "scoring"), lookup(b.provenance, "scoring"))
    if drift:
        share = _scoring_share(a, b, models, rows, positions, tolerances)
        notes.append(f"The scoring stacks differ ({'; '.join(drift)}). {share}")
        result = replace(result, line=f"{result.line} Scoring stacks differ: {share}")
    setup = judge.setup_differences(a.provenance, b.provenance, models)
    speed = None if judge.same_arithmetic(a.provenance, b.provenance) else pd.concat(
        [speed_card(side.table[side.table["model"].isin(models)], side.provenance).assign(run=label)
         for label, side in (("A", a), ("B", b))], ignore_index=True)
    md, html = judge.documents((a.name, b.name), rows, result, setup, notes, list(DIMENSIONS), speed)
    return Comparison((a.name, b.name), rows, result, md, html)


def _scoring_share(a: RunSide, b: RunSide, models: list[str], rows: pd.DataFrame, positions: dict,
                   tolerances: dict) -> str:
    """How much of the difference between two runs scored by other stacks is the scoring's:
    both runs' results scored again here, on this machine's stack, from their model outputs
    (the failure reasons the containers gave, the relaxed structures) and the PBE structures,
    then judged again. A structure that disagrees as recorded and agrees when both are scored
    alike differs by its scoring."""
    from metrics.per_structure import CONTAINER_REASONS, score

    where = next((side.reference for side in (a, b) if side.reference and side.reference.is_file()), None)
    if where is None:
        return ("Neither run holds its PBE structures (reference.extxyz) to score both again here, so how much "
                "of a difference in failure status is the scoring's is not known.")
    reference = dict(read_frames(where))
    limits = lookup(a.provenance, "fragmentation_limits_a")

    def again(side: RunSide) -> pd.DataFrame:
        raw = side.table[side.table["model"].isin(models)].copy()
        raw["failure_reason"] = raw["failure_reason"].where(raw["failure_reason"].isin(CONTAINER_REASONS), "")
        for sid, axes in zip(raw["id"].astype(str), raw.get("periodic_axes", pd.Series(dtype=str)).fillna("")):
            reference[sid].info["periodic_axes"] = str(axes)  # as the run read them
        return score(raw[raw["id"].astype(str).isin(reference)], reference, side.relaxed, limits)

    alike = judge.differences(judge.pair(again(a), again(b)), positions, tolerances)
    before = set(zip(rows["model"], rows["id"], rows["agrees"]))
    apart = {(m, i) for m, i, ok in before if not ok}
    still = {(m, i) for m, i, ok in zip(alike["model"], alike["id"], alike["agrees"]) if not ok}
    return (f"Scored again here on one stack, {len(still)} structure(s) disagree, against {len(apart)} as recorded: "
            f"{len(apart - still)} of the difference is the scoring's, {len(still)} the relaxations'.")


def _left_out(a: RunSide, b: RunSide, models: list[str]) -> list[str]:
    notes = []
    for side in (a, b):
        only = sorted(set(side.table["model"]) - set(models))
        if only:
            notes.append(f"only in {side.name}: {', '.join(only)}")
    keys = lambda t: set(zip(t["model"], t["id"]))  # noqa: E731
    one_sided = len(keys(a.table[a.table["model"].isin(models)]) ^ keys(b.table[b.table["model"].isin(models)]))
    if one_sided:
        notes.append(f"{one_sided} structure(s) in one run only, left out")
    no_outcome = sum(int(t["failure_reason"].isin(judge.NOT_AN_OUTCOME).sum()) for t in (a.table, b.table))
    if no_outcome:
        notes.append(f"{no_outcome} result(s) missing or timed out, left out")
    return notes


class CannotCompare(BenchError):
    """Two runs that are not of the same data, protocol or models (exit 2)."""


def write_comparison(comparison: Comparison, out_dir: Path) -> Path:
    """compare.md, compare.html and compare.csv (one row per structure) in out_dir."""
    runfolder.write_text(out_dir / "compare.md", comparison.markdown)
    runfolder.write_text(out_dir / "compare.html", comparison.html)
    columns = ["model", "id", "dimension", "natoms", "status_a", "status_b", "steps_a", "steps_b", "energy_ev_a",
               "energy_ev_b", "energy_mev", "position_a", "agrees"]
    write_table(comparison.rows[columns].rename(columns={"energy_mev": "abs_dE_mev_per_atom",
                                                         "position_a": "max_dr_a"}), out_dir / "compare.csv")
    return out_dir / "compare.md"


def comparison_folder(results_dir: Path, a: Path, b: Path) -> Path:
    """results_dir/comparisons/<A>--<B>-<hash of both paths> (two runs of one name in two
    results folders are still two comparisons)."""
    slug = lambda p: re.sub(r"[^A-Za-z0-9.-]+", "-", label_of(p))[:80]  # noqa: E731
    key = hashlib.sha256(f"{Path(a).resolve()}\0{Path(b).resolve()}".encode()).hexdigest()[:8]
    return results_dir / "comparisons" / f"{slug(a)}--{slug(b)}-{key}"
