"""The report of one run and the leaderboard over runs, as tables and documents: pure
functions of the scored table and the provenance (orchestrator.report reads the run
folders and writes the files).

run_report_tables(scored, provenance) gives every table of a run's report; run_documents
renders report.md and a self-contained report.html (plots embedded as PNG, tables as
HTML); leaderboard(runs) ranks every finished run per model x dimensionality and
leaderboard_documents renders it.

Provenance is rendered as found: a missing key shows as "-", never as an error.
"""

from __future__ import annotations

import base64
import html
import json
import re
import numpy as np
import pandas as pd

from adapters.wire import DIMENSIONS
from metrics import paper, speed, summary
from metrics.labels import labelled

#: Columns a scored results.csv must have for the report and the leaderboard.
REQUIRED_COLUMNS = ("model", "id", "dimension", "converged", "failure_reason", "steps",
                    "energy_error_mev_per_atom", "position_mae_a")
TABLES = ("summary", "failures", "steps", "energy", "positions", "connectivity", "reference", "energy_by_element",
          "symmetry", "coordination", "hard_cases")
#: The report's tables whose numbers a user's time limit changes (see time_limit_note).
TIME_LIMITED = ("summary", "failures", "paper", "steps", "energy", "positions", "energy_by_element", "connectivity",
                "symmetry")
#: Elements per (model, dimensionality) shown in the report's per-element table (all in the CSV).
WORST_ELEMENTS = 5
DEFINITIONS = """\
- **Failed** (the paper's Table II, and only its failures): `model_error` (exception or NaN),
  `diverged` (a force above the divergence limit), `not_converged` (step limit reached), then
  the host's checks `fragmented_thickness` (2D), `fragmented_width` (1D, the authors' spans
  across the wire), `fragmented_diameter` (0D) above the fragmentation limits; first match wins.
- **Dimensionality**: the periodic axes of the PBE geometry decide it everywhere; a dataset label
  that disagrees is kept as `dimension_label` and counted in the reference table.
- **Disconnected** (a diagnostic, never a failure): more covalently bonded pieces than the PBE
  structure.
- **Failed %**: of the finished structures; `timeout` (stopped by a time limit the user set; there is
  none by default, as in the paper) and `missing` (no result yet) are counted apart and are neither.
- **Steps**: FIRE steps (ASE's `nsteps`) of the relaxations that converged, including those that
  then failed the fragmentation check; one already converged at the PBE geometry counts 0 (the
  paper's "converged after 1 step" counts force evaluations: add one to every figure).
- **Energy error**: (E_model - E_PBE) / N_atoms in meV/atom, signed, over successful relaxations;
  MAE is the mean of its absolute value; `within_10_mev` the fraction with |error| < 10 meV/atom.
- **Position MAE**: mean |x_model - x_PBE| over the 3N Cartesian components (Å) after undoing
  periodic wrapping and a Kabsch superposition, over successful relaxations.
- **Symmetry**: the space group (3D) or layer group (2D) of the PBE and of the relaxed structure
  (moyopy) at symprec 1e-2 Å (the headline) and 1e-5 Å: `match` the same group, `decrease` another
  with fewer symmetry operations, `increase` with more, `changed` another of the same order; over
  successful relaxations whose two groups were determined. None for 0D and 1D (the libraries see a
  molecule or a wire through its box).
"""


def check_results(table: pd.DataFrame) -> str | None:
    """What a table lacks to be a scored results table (None: nothing)."""
    for column in REQUIRED_COLUMNS:
        if column not in table.columns:
            return (f"missing column '{column}' (a scored results table has {', '.join(REQUIRED_COLUMNS)}); "
                    "was it written by the scoring step?")
    return None


def tables(scored: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Every table of the report, by name (see TABLES)."""
    return {"summary": summary.summary(scored), "failures": summary.failures(scored), "steps": summary.steps(scored),
            "energy": summary.energy(scored), "positions": summary.positions(scored),
            "connectivity": summary.connectivity(scored), "reference": summary.reference(scored),
            "energy_by_element": summary.energy_by_element(scored), "symmetry": summary.symmetry(scored),
            "coordination": summary.coordination(scored), "hard_cases": summary.hard_cases(scored)}


def worst_elements(by_element: pd.DataFrame, keep: int = WORST_ELEMENTS) -> pd.DataFrame:
    """The `keep` elements with the largest energy MAE per (model, dimensionality)."""
    ranked = by_element.sort_values("mae", ascending=False, kind="stable")
    return ranked.groupby(["model", "dimension"], sort=False).head(keep).sort_values(
        ["model", "dimension", "mae"], ascending=[True, True, False], kind="stable").reset_index(drop=True)


def timing(scored: pd.DataFrame) -> pd.DataFrame:
    """Per model: structures, worker time spent relaxing (sum of wall_s), structures per
    worker-second and the median seconds per structure (a run with W parallel workers
    finishes about W times faster than the worker time)."""
    rows = []
    for model, group in scored.groupby(scored["model"].astype(str), sort=False):
        wall = pd.to_numeric(group.get("wall_s"), errors="coerce").dropna() if "wall_s" in group else pd.Series([])
        total = float(wall.sum())
        rows.append({"model": model, "structures": len(group), "worker_s": total,
                     "structures_per_worker_s": len(wall) / total if total > 0 else np.nan,
                     "median_s_per_structure": float(wall.median()) if len(wall) else np.nan})
    return pd.DataFrame(rows, columns=["model", "structures", "worker_s", "structures_per_worker_s",
                                       "median_s_per_structure"])


# ---- formatting -------------------------------------------------------------------

def _missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, (float, np.floating)) and np.isnan(value))


def _column_format(values: pd.Series):
    """A formatter for one column: integers as integers; other numbers with as many
    decimals as the column's typical magnitude needs (3 significant digits, 1 to 6)."""
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        return lambda value: "-" if _missing(value) else str(value)
    finite = values.astype(float)
    finite = finite[np.isfinite(finite)]
    if (finite == finite.round()).all():
        decimals = 0
    else:
        typical = finite.abs()[finite != 0].median() if (finite != 0).any() else 1.0
        decimals = int(np.clip(2 - np.floor(np.log10(typical)), 1, 6))

    def fmt(value) -> str:
        if _missing(value):
            return "-"
        if isinstance(value, (bool, np.bool_)):
            return str(bool(value))
        if isinstance(value, (int, float, np.integer, np.floating)):
            return f"{float(value):.{decimals}f}"
        return str(value)

    return fmt


def _text(value) -> str:
    """A provenance value as one line: scalars as they are, containers as compact JSON."""
    if value is None:
        return "-"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str, separators=(", ", ": "))
    return str(value)


def formatted(table: pd.DataFrame) -> pd.DataFrame:
    """All cells as display strings, numbers formatted per column (see _column_format)."""
    return pd.DataFrame({name: table[name].map(_column_format(table[name])).astype(str) for name in table.columns},
                        columns=table.columns)


def markdown_table(table: pd.DataFrame, name: str = "") -> str:
    """A Markdown table headed by metrics.labels (`name`: the table, for its unit)."""
    cells = formatted(table)
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(esc(c) for c in labelled(cells.columns, name)) + " |",
             "| " + " | ".join("---" for _ in cells.columns) + " |"]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def html_table(table: pd.DataFrame, name: str = "") -> str:
    """An HTML table headed by metrics.labels (`name`: the table, for its unit), its headers
    wrapping between words so wide tables fit the page."""
    cells = formatted(table)
    cells.columns = labelled(cells.columns, name)
    return cells.to_html(index=False, border=0, classes="table", escape=True)


HTML_HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 74em; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.82em; max-width: 100%; }}
th, td {{ padding: 0.2em 0.5em; border-bottom: 1px solid #ddd; text-align: right; overflow-wrap: anywhere; }}
th {{ background: #f4f4f4; vertical-align: bottom; overflow-wrap: normal; }}
ul.facts li {{ overflow-wrap: anywhere; }}
td:first-child, th:first-child, td:nth-child(2) {{ text-align: left; }}
img {{ max-width: 100%; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 0.8em; }}
code {{ background: #f6f6f6; }}
</style></head><body>
"""


def _markdown_to_html(text: str) -> str:
    """The few Markdown constructs used in DEFINITIONS: bullets, **bold**, `code`."""
    import re

    items, current = [], None
    for line in text.splitlines():
        if line.startswith("- "):
            current = line[2:]
            items.append(current)
        elif line.strip() and items:
            items[-1] += " " + line.strip()
    out = []
    for item in items:
        item = html.escape(item)
        item = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", item)
        item = re.sub(r"`(.+?)`", r"<code>\1</code>", item)
        out.append(f"<li>{item}</li>")
    return "<ul>" + "".join(out) + "</ul>"


# ---- provenance -------------------------------------------------------------------

def lookup(mapping, *keys, default=None):
    """mapping[k1][k2]... or default, for whatever shape the JSON has."""
    for key in keys:
        if not isinstance(mapping, dict) or key not in mapping:
            return default
        mapping = mapping[key]
    return mapping


def packages_text(model_record) -> str:
    packages = lookup(model_record, "packages") or lookup(model_record, "versions")
    if isinstance(packages, dict):
        return ", ".join(f"{name}={version if version is not None else '?'}" for name, version in packages.items())
    return _text(packages) if packages is not None else "-"


def models_table(provenance: dict) -> pd.DataFrame:
    """One row per model of provenance["models"]: image, image id, python, packages."""
    models = lookup(provenance, "models", default={})
    if isinstance(models, list):  # a list of records with a name
        models = {str(lookup(m, "name", default=i)): m for i, m in enumerate(models)}
    rows = []
    for name, record in (models.items() if isinstance(models, dict) else []):
        rows.append({"model": name, "image": _text(lookup(record, "image")), "image_id": _text(lookup(record, "image_id")),
                     "calculator": _text(lookup(record, "calculator")), "python": _text(lookup(record, "python")),
                     "packages": packages_text(record)})
    return pd.DataFrame(rows, columns=["model", "image", "image_id", "calculator", "python", "packages"])


def dataset_sha256(provenance: dict) -> str:
    """The dataset's sha256 (or the per-file hashes, or its identity), as one string."""
    dataset = lookup(provenance, "dataset", default={})
    if not isinstance(dataset, dict):
        return _text(dataset)
    if dataset.get("sha256"):
        return _text(dataset["sha256"])
    files = dataset.get("files")
    if isinstance(files, dict) and files:
        return "; ".join(f"{name}: {_text(sha)}" for name, sha in files.items())
    return _text(dataset.get("identity")) if dataset.get("identity") else "-"


def protocol_text(provenance: dict) -> str:
    protocol = lookup(provenance, "protocol")
    if isinstance(protocol, dict):
        return ", ".join(f"{k}={_text(v)}" for k, v in protocol.items())
    return _text(protocol)


def mapping_text(value) -> str:
    """A settings mapping as words: "key value; key value", unset entries left out."""
    if not isinstance(value, dict):
        return _text(value)
    parts = [f"{k.replace('_', ' ')} {', '.join(map(str, v)) if isinstance(v, list) else v}"
             for k, v in value.items() if v is not None]
    return "; ".join(parts) or "all structures"


def wall_time(provenance: dict) -> str:
    """finished - started of the run, as "1 h 02 min 03 s", or "-"."""
    from datetime import datetime

    try:
        seconds = (datetime.fromisoformat(str(provenance["finished"]))
                   - datetime.fromisoformat(str(provenance["started"]))).total_seconds()
    except (KeyError, ValueError, TypeError):
        return "-"
    hours, rest = divmod(int(round(seconds)), 3600)
    return (f"{hours} h " if hours else "") + f"{rest // 60:02d} min {rest % 60:02d} s"


def run_facts(run_name: str, provenance: dict) -> list[tuple[str, str]]:
    """(label, value) lines describing the run, from whatever provenance holds."""
    dataset = lookup(provenance, "dataset", default={})
    facts = [("run", _text(provenance.get("run_id", run_name))),
             ("started", _text(provenance.get("started", provenance.get("start")))),
             ("finished", _text(provenance.get("finished", provenance.get("end")))),
             ("wall time", wall_time(provenance)),
             ("dataset", _text(lookup(dataset, "name") if isinstance(dataset, dict) else dataset)),
             ("dataset sha256", dataset_sha256(provenance)),
             ("protocol", mapping_text(lookup(provenance, "protocol"))),
             ("fragmentation limits (Å)", mapping_text(provenance.get("fragmentation_limits_a"))),
             ("tool commit", _text(lookup(provenance, "host", "tool_commit")))]
    reproduction = lookup(provenance, "reproduction")
    if isinstance(reproduction, dict):
        facts.append(("reproduces", f"{_text(reproduction.get('of'))} from bundle {_text(reproduction.get('bundle'))}: "
                                    f"{_text(reproduction.get('verdict', 'not compared yet'))}"))
    if isinstance(dataset, dict):
        for key in ("structures", "subset", "identity"):
            if key in dataset:
                facts.append((f"dataset {key}", mapping_text(dataset[key])))
        skipped = dataset.get("skipped")
        if isinstance(skipped, dict) and skipped:
            shown = ", ".join(f"{sid} ({why})" for sid, why in list(skipped.items())[:10])
            facts.append(("skipped as invalid", f"{len(skipped)}: {shown}" + (", ..." if len(skipped) > 10 else "")))
    return facts


def incomplete_warning(scored: pd.DataFrame, provenance: dict) -> str | None:
    """The line an incomplete run's report opens with, else None: from the table's
    `missing` rows (the table decides, whatever the status beside it says), or the
    provenance's status when it has no such rows."""
    missing = scored.loc[scored["failure_reason"] == "missing", "model"].astype(str).value_counts(sort=False).to_dict()
    if not missing and provenance.get("status") == "incomplete":
        missing = provenance.get("missing") if isinstance(provenance.get("missing"), dict) else {"-": "?"}
    if not missing:
        return None
    counts = ", ".join(f"{model} {n}" for model, n in missing.items())
    return (f"INCOMPLETE RUN: structures without a result ({counts}) are listed as `missing`, not as failures; "
            "rerun the same command to finish it. Its numbers are not final.")


def time_limit_note(scored: pd.DataFrame, provenance: dict) -> str | None:
    """The sentence every table a user's time limit touched carries, else None."""
    stopped = int((scored["failure_reason"] == "timeout").sum())
    if not stopped:
        return None
    limit = provenance.get("structure_timeout_s")
    return (f"TIME LIMIT: {stopped} relaxation(s) were stopped by the limit of "
            f"{_text(limit)} s per structure (structure_timeout_s) and are in no number below except as "
            "`timeout`; the paper has no time limit, so these tables are not comparable with its counts. "
            "Remove the limit and rerun the same command to relax them to the end.")


def authors_split_note(scored: pd.DataFrame) -> str | None:
    """The warning for wires the authors' variant failed because its own vacuum reset
    split them, else None."""
    split = scored["failure_reason"].eq("fragmented_width") & summary.flag(scored, "wire_split_by_reset")
    if not split.any():
        return None
    return (f"AUTHORS' VACUUM RESET: {int(split.sum())} wire(s) failed as fragmented_width after the authors' "
            "adjust_vacuum_1D split them (it wraps a wire that is not centred in its new hexagonal cell across "
            "the cell's edge); the variant keeps their code as written. Their own relaxed positions show the wire "
            "whole (extent_a in results.csv).")


def paper_comparison(failures: pd.DataFrame, provenance: dict) -> tuple[pd.DataFrame, str] | None:
    """This run's failures beside the paper's Table II, with a caption; None unless the
    run is on the paper's dataset and has models the paper has."""
    dataset = lookup(provenance, "dataset", default={})
    if not isinstance(dataset, dict) or dataset.get("name") != paper.PAPER_DATASET:
        return None
    table = paper.beside_paper(failures)
    if table.empty:
        return None
    caption = "Failed relaxations of this run beside the paper's Table II (Benedini et al., arXiv:2508.15614)."
    if dataset.get("subset_key", "all") != "all":
        caption += (f" This run is a subset ({mapping_text(dataset.get('subset'))}); the paper's counts are "
                    f"over {paper.PAPER_STRUCTURES:,} structures per dimensionality: compare the percentages.")
    if not table["complete"].all():
        caption += (" INCOMPLETE: rows with complete = False have structures without a result (`timeout` or "
                    "`missing`) and are not comparable with the paper's counts.")
    return table, caption


# ---- run report -------------------------------------------------------------------

def run_report_tables(scored: pd.DataFrame, provenance: dict) -> tuple[dict[str, pd.DataFrame], str | None]:
    """Every table of a run's report by name (the paper comparison as `paper` where the
    run is on the paper's data), and the paper comparison's caption."""
    named = tables(scored)
    named["timing"] = timing(scored)
    named["speed"] = speed.speed_card(scored, provenance)
    beside = paper_comparison(named["failures"], provenance)
    if beside is not None:
        named["paper"] = beside[0]
    return named, None if beside is None else beside[1]


def run_documents(run_name: str, scored: pd.DataFrame, provenance: dict, named: dict[str, pd.DataFrame],
                  paper_caption: str | None, figures: dict[str, tuple[str, str, bytes]]) -> tuple[str, str]:
    """report.md and a self-contained report.html; figures: name -> (PNG file name, SVG
    file name, PNG bytes) beside the report."""
    models = models_table(provenance)
    shown = {**named, "energy_by_element": worst_elements(named["energy_by_element"])}
    title = f"0123D benchmark: {run_name}"
    sections = [("Summary", "summary", "Failures over all structures; errors over successful relaxations."),
                ("Failures (Table II)", "failures", "Structures per failure reason; a structure has one reason.")]
    if paper_caption is not None:
        sections.append(("Beside the paper (Table II)", "paper", paper_caption))
    sections += [
        ("Steps to converge", "steps", "FIRE steps of converged relaxations."),
        ("Energy error (meV/atom)", "energy", "E_model - E_PBE per atom, successful relaxations."),
        ("Position error (Å)", "positions", "Kabsch-aligned MAE over 3N components, successful relaxations."),
        ("Energy error per element (meV/atom)", "energy_by_element",
         f"The {WORST_ELEMENTS} elements with the largest MAE per model and dimensionality, over successful "
         "relaxations containing them (every element: energy_by_element.csv; maps below)."),
        ("Symmetry kept", "symmetry", "Space group (3D) and layer group (2D) of the relaxed structure against the "
         "PBE one, at two tolerances (Å), over successful relaxations; fractions of n (none for 0D and 1D)."),
        ("Errors against coordination (beyond the paper)", "coordination",
         "Per bin of the PBE structure's mean coordination number (docs/metrics.md), every dimensionality on one "
         "axis (dimensions: where the bin's structures come from): the failed share of the finished structures, "
         "and the energy and position errors of the successful ones. The paper ascribes the loss of accuracy in "
         "lower dimensions to changed coordination: this reads it directly."),
        ("Hard cases (beyond the paper)", "hard_cases",
         "Structures that every model, or all but one, failed (of two or more models), with each model's reason: "
         "a bad reference structure or a blind spot the models share. Each is in the failure gallery of "
         "explore.html."),
        ("Connectivity (diagnostic, not a failure)", "connectivity",
         "Relaxed structures with more covalently bonded pieces than their PBE structure."),
        ("Reference structures", "reference",
         "PBE structures per dimensionality; over_own_limit: already wider than the fragmentation limit "
         "(they fail for every model); label_mismatch: the dataset's label disagrees with the geometry."),
        ("Timing", "timing", f"Worker time spent relaxing; the run's wall time was {wall_time(provenance)}."),
        ("Speed card", "speed", "Per model on this run's devices and engine: µs per atom per step (the devices' "
         "busy time over Σ atoms × steps), structures per second, and the hours 10,000 structures of each "
         "dimensionality the run has would take here (projected_from: those dimensionalities).")]
    captions = {"steps": "Steps to converge", "energy_error": "Energy error", "position_mae": "Position error",
                "dataset_elements": "Dataset: elements per dimensionality",
                "dataset_distributions": "Dataset: atoms per cell, interatomic distances, PBE energies",
                "symmetry": "Symmetry kept", "coordination": "Errors and failures against coordination"}
    captions.update({name: f"Energy error per element: {name[len('energy_by_element_'):]}"
                     for name in figures if name.startswith("energy_by_element_")})
    facts = run_facts(run_name, provenance)
    warning = incomplete_warning(scored, provenance)
    limited = time_limit_note(scored, provenance)
    notes = [note for note in (limited, authors_split_note(scored)) if note]
    if limited:
        sections = [(heading, name, f"{caption} {limited}" if name in TIME_LIMITED else caption)
                    for heading, name, caption in sections]

    md = [f"# {title}\n", *[f"> **{line}**\n" for line in ([warning] if warning else []) + notes],
          *[f"- **{label}**: {value}" for label, value in facts], "",
          "## Models\n", markdown_table(models) if len(models) else "(no model records in provenance.json)\n"]
    for heading, name, caption in sections:
        md += [f"## {heading}\n", caption + "\n", markdown_table(shown[name], name)]
    md.append("## Figures\n")
    for name, (png, svg, _) in figures.items():
        md.append(f"### {captions[name]}\n\n![{captions[name]}]({png}) ([SVG]({svg}))\n")
    md += ["## Definitions\n", DEFINITIONS, "## Provenance (provenance.json)\n",
           "```json\n" + json.dumps(provenance, indent=2, default=str) + "\n```\n"]

    body = [HTML_HEAD.format(title=html.escape(title)), f"<h1>{html.escape(title)}</h1>"]
    for line in ([warning] if warning else []) + notes:
        body.append(f"<p style=\"background:#fde2e1;padding:0.6em;font-weight:bold\">{html.escape(line)}</p>")
    body.append("<ul class=\"facts\">")
    body += [f"<li><b>{html.escape(label)}</b>: {html.escape(value)}</li>" for label, value in facts]
    body += ["</ul><h2>Models</h2>", html_table(models) if len(models) else "<p>(no model records)</p>"]
    for heading, name, caption in sections:
        body += [f"<h2>{html.escape(heading)}</h2><p>{html.escape(caption)}</p>", html_table(shown[name], name)]
    body.append("<h2>Figures</h2>")
    for name, (_, _, png_bytes) in figures.items():
        data = base64.b64encode(png_bytes).decode()
        body.append(f"<h3>{html.escape(captions[name])}</h3><img alt=\"{html.escape(captions[name])}\" "
                    f"src=\"data:image/png;base64,{data}\">")
    body += ["<h2>Definitions</h2>", _markdown_to_html(DEFINITIONS),
             "<details><summary>provenance.json</summary><pre>"
             + html.escape(json.dumps(provenance, indent=2, default=str)) + "</pre></details></body></html>\n"]
    return "\n".join(md), "\n".join(body)


# ---- leaderboard ------------------------------------------------------------------

LEADERBOARD_COLUMNS = ["dimension", "model", "group", "run", "structures", "failed", "failed_pct", "paper_failed",
                       "energy_median_mev",
                       "energy_mae_mev", "position_mae_median_a", "symmetry_match", "median_steps", "image_id",
                       "packages",
                       "us_per_atom_step", "projected_h", "devices", "engine",
                       "dataset", "dataset_sha256", "protocol", "reproduction"]


def reproductions(runs: list[tuple[str, pd.DataFrame, dict]]) -> dict[str, str]:
    """Run name -> what is known of its reproduction: a run that reproduces a bundle says
    which run and the verdict; a run reproduced by another run here says by which."""
    said = {}
    for name, _, provenance in runs:
        record = lookup(provenance, "reproduction")
        if isinstance(record, dict) and record.get("of"):
            verdict = re.split(r"[:(]", str(record.get("verdict", "not compared yet")))[0].strip()
            said[name] = f"reproduces {record['of']} ({record.get('bundle')}): {verdict}"
            said.setdefault(str(record["of"]), "reproduced by")
            said[str(record["of"])] += f" {name} ({record.get('bundle')}: {verdict})"
    return said


def unfinished_models(scored: pd.DataFrame) -> list[str]:
    """Models of a run with a structure still without a result."""
    return sorted(set(scored.loc[scored["failure_reason"] == "missing", "model"].astype(str)))


def leaderboard(runs: list[tuple[str, pd.DataFrame, dict]]) -> pd.DataFrame:
    """One row per (run, model, dimensionality) of runs given as (name, scored table,
    provenance), ranked within each dimensionality by failed %, then energy MAE, then
    median position MAE (fewer, smaller first). A model with a structure still without a
    result is never ranked: the table decides, not the status beside it. Empty when no
    run has a finished model."""
    rows, reproduced = [], reproductions(runs)
    for name, scored, provenance in runs:
        scored = scored[~scored["model"].astype(str).isin(unfinished_models(scored))]
        if scored.empty:
            continue
        line = summary.summary(scored)
        line["run"] = name
        records = lookup(provenance, "models", default={})
        records = records if isinstance(records, dict) else {}
        line["image_id"] = [_text(lookup(records, m, "image_id")) for m in line["model"]]
        line["packages"] = [packages_text(records.get(m)) for m in line["model"]]
        line["group"] = [model_group(records.get(m)) for m in line["model"]]
        line["dataset"] = str(lookup(provenance, "dataset", "name", default="") or "")
        line["dataset_sha256"] = dataset_sha256(provenance)
        line["protocol"] = protocol_text(provenance)
        line["reproduction"] = reproduced.get(name, "")
        card = speed.speed_card(scored, provenance).set_index("model")
        for column in ("us_per_atom_step", "projected_h"):
            line[column] = [card[column].get(m, np.nan) for m in line["model"]]
        line["devices"] = [speed.devices_text(provenance, m) for m in line["model"]]
        line["engine"] = provenance.get("engine", "ase")
        beside = paper_comparison(summary.failures(scored), provenance)
        paper_failed = {} if beside is None else \
            {(r.model, r.dimension): r.paper_failed for r in beside[0].itertuples(index=False)}
        line["paper_failed"] = [paper_failed.get(key, np.nan) for key in zip(line["model"], line["dimension"])]
        rows.append(line)
    if not rows:
        return pd.DataFrame(columns=LEADERBOARD_COLUMNS)
    table = pd.concat(rows, ignore_index=True)
    order = {d: i for i, d in enumerate(DIMENSIONS)}
    table["_d"] = table["dimension"].map(lambda d: order.get(d, 99))
    table = table.sort_values(["_d", "dimension", "failed_pct", "energy_mae_mev", "position_mae_median_a"],
                              na_position="last", kind="stable")
    return table[LEADERBOARD_COLUMNS].reset_index(drop=True)


def model_group(model_record) -> str:
    """The model's group as its run recorded it (paper, current), else "paper" for a
    record with the paper's tag (runs from before groups), else "other"."""
    record = model_record if isinstance(model_record, dict) else {}
    named = [g for g in record.get("groups") or [] if g != "all"]
    return named[0] if named else "paper" if record.get("paper_tag") else "other"


def _short(value: str, keep: int = 12) -> str:
    """An image id or hash cut to a readable prefix (the CSV keeps it whole)."""
    text = str(value)
    head, _, tail = text.partition(":")
    if tail and len(tail) > keep and head.isalnum():
        return f"{head}:{tail[:keep]}"
    return text


def beyond_the_paper(runs: list[tuple[str, pd.DataFrame, dict]], reports: dict[str, str]) -> dict[str, pd.DataFrame]:
    """The leaderboard's views beyond the paper, over the finished runs (name, scored,
    provenance): errors against coordination per run and model, and each run's hard cases
    with the path of the run's failure gallery (`reports`: run -> its explore.html)."""
    coordination, hard = [], []
    for name, scored, _ in runs:
        scored = scored[~scored["model"].astype(str).isin(unfinished_models(scored))]
        coordination.append(summary.coordination(scored).assign(run=name))
        hard.append(summary.hard_cases(scored).assign(run=name, gallery=f"{reports.get(name, '')}#gallery"))
    columns = {"coordination": ["run", *summary.coordination(pd.DataFrame(columns=["model"])).columns],
               "hard_cases": ["run", "id", "dimension", "failed", "models", "failure_reasons", "gallery"]}
    frames = {"coordination": coordination, "hard_cases": hard}
    return {name: (pd.concat(frames[name], ignore_index=True)[columns[name]] if frames[name]
                   else pd.DataFrame(columns=columns[name])) for name in columns}


BEYOND = {"coordination": ("Errors against coordination (beyond the paper)",
                           "Per run, model and bin of the PBE structures' mean coordination number, every "
                           "dimensionality on one axis (docs/metrics.md)."),
          "hard_cases": ("Hard cases (beyond the paper)",
                         "Structures that every model of a run, or all but one, failed (two or more failed), with "
                         "each model's reason; the gallery of the run's explore.html shows each.")}


def leaderboard_documents(table: pd.DataFrame, where: str, left_out: list[str],
                          beyond: dict[str, pd.DataFrame] | None = None) -> tuple[str, str]:
    """leaderboard.md and .html: one ranking per dimensionality, the views beyond the
    paper (beyond_the_paper), and one line of provenance per run; `left_out`: the
    incomplete runs (and models) not ranked."""
    ranking_columns = ["model", "run", "structures", "failed", "failed_pct", "paper_failed", "energy_median_mev",
                       "energy_mae_mev",
                       "position_mae_median_a", "median_steps", "us_per_atom_step", "image_id", "packages"]
    runs = table.drop_duplicates("run")[["run", "devices", "engine", "dataset_sha256", "protocol",
                                         "reproduction"]].sort_values("run")
    note = (f"Ranked within each dimensionality by failed %, then energy MAE, then median position MAE. "
            f"Failed in the paper: the paper's Table II for the same model, of {paper.PAPER_STRUCTURES:,} structures per "
            "dimensionality (runs on its dataset only).")
    if left_out:
        note += f" Left out, incomplete: {', '.join(left_out)}."
    md = ["# 0123D leaderboard\n", f"{table['run'].nunique()} finished run(s) in `{where}`. {note}\n"]
    body = [HTML_HEAD.format(title="0123D leaderboard"), "<h1>0123D leaderboard</h1>",
            f"<p>{table['run'].nunique()} finished run(s). {html.escape(note)}</p>"]
    for dim, group in table.groupby("dimension", sort=False):
        view = group[ranking_columns].copy()
        view.insert(0, "rank", range(1, len(view) + 1))
        view["image_id"] = view["image_id"].map(_short)
        md += [f"## {dim}\n", markdown_table(view)]
        body += [f"<h2>{html.escape(str(dim))}</h2>", html_table(view)]
    for name, frame in (beyond or {}).items():
        heading, caption = BEYOND[name]
        shown = frame.assign(gallery=[f"[gallery]({path})" for path in frame["gallery"]]) if name == "hard_cases" \
            else frame
        md += [f"## {heading}\n", caption + "\n", markdown_table(shown, name) if len(frame) else "none\n"]
        body += [f"<h2>{html.escape(heading)}</h2><p>{html.escape(caption)}</p>",
                 html_table(frame.drop(columns="gallery", errors="ignore"), name) if len(frame) else "<p>none</p>"]
    md += ["## Runs\n", markdown_table(runs), "## Definitions\n", DEFINITIONS]
    body += ["<h2>Runs</h2>", html_table(runs), "<h2>Definitions</h2>", _markdown_to_html(DEFINITIONS),
             "</body></html>\n"]
    return "\n".join(md), "\n".join(body)
