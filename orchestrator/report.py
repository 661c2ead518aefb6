"""The report files: each run's report/ folder and the leaderboard over a results
folder. The tables, documents and figures are metrics' (metrics.report, metrics.plots);
this module reads the run folders and writes the files.

write_run_report(run_dir) reads run_dir/results.csv (the scored table) and
run_dir/provenance.json, and writes run_dir/report/: report.md, a self-contained
report.html, every table as CSV and parquet, the plots as PNG and SVG, and explore.html,
the report to explore in a browser (metrics.explore).
write_leaderboard(results_dir) ranks every finished run (a folder with both files), and
writes explore.html beside it: every run in one filterable page.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from metrics import explore, plots
from metrics import report as documents
from orchestrator import runfolder
from orchestrator.errors import BenchError
from orchestrator.runfolder import RunFolder, scored_folders


def read_results(path: Path) -> pd.DataFrame:
    """A scored results.csv, checked for its columns; failure_reason "" for success."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"{path}: no such results table")
    try:
        table = pd.read_csv(path, dtype={"model": str, "id": str, "dimension": str, "failure_reason": str},
                            keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise BenchError(f"{path}: not a readable CSV table ({exc})") from exc
    problem = documents.check_results(table)
    if problem:
        raise BenchError(f"{path}: {problem}")
    table["failure_reason"] = table["failure_reason"].fillna("")
    return table


def write_table(table: pd.DataFrame, path: Path) -> None:
    """A table as CSV or Parquet (by the suffix), never written through a link."""
    with runfolder.replacing(path) as tmp:
        if path.suffix == ".parquet":
            table.to_parquet(tmp, index=False)
        else:
            table.to_csv(tmp, index=False)


def save_figure(fig, out_dir: Path, name: str) -> list[Path]:
    """<out_dir>/<name>.png and .svg of the figure, which is then closed."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.svg"]
    with runfolder.replacing(paths[0]) as png:
        fig.savefig(png, dpi=150)
    with plt.rc_context({"svg.fonttype": "none"}), runfolder.replacing(paths[1]) as svg:
        fig.savefig(svg)  # text stays text: searchable, editable
    plt.close(fig)
    return paths


def dataset_figures(folder: RunFolder, out: Path) -> dict[str, list[Path]]:
    """The dataset's own figures from the run folder's reference.extxyz: elements per dimensionality
    on periodic tables; atoms per cell, distances below 7 Å and PBE energies per atom.
    They depend on the reference structures alone: drawn once per reference.extxyz (its
    size and time in dataset.key), reused by every later report of the run."""
    from ase.io import read

    from metrics import dataset
    from metrics.geometry import periodic_axes

    path = folder.reference
    if not path.is_file():
        return {}
    names = ("dataset_elements", "dataset_distributions")
    figures = {name: [out / f"{name}.png", out / f"{name}.svg"] for name in names}
    key = f"{path.stat().st_size} {path.stat().st_mtime_ns}\n"
    done = out / "dataset.key"
    if done.is_file() and done.read_text() == key and all(p.is_file() for paths in figures.values() for p in paths):
        return figures
    structures = read(path, index=":")
    for atoms in structures:
        atoms.info["periodic_axes"] = periodic_axes(atoms)
    table = dataset.structure_table(structures)
    write_table(table, out / "dataset.csv")
    figures = {"dataset_elements": save_figure(plots.dataset_elements(dataset.element_counts(table)), out,
                                               "dataset_elements"),
               "dataset_distributions": save_figure(plots.dataset_distributions(table, dataset.pair_distances(structures)),
                                                    out, "dataset_distributions")}
    runfolder.write_text(done, key)
    return figures


def write_run_report(run_dir: Path, out: Path | None = None) -> Path:
    """Tables, plots, report.md and a self-contained report.html under `out` (default
    run_dir/report/)."""
    folder = RunFolder(run_dir)
    runfolder.refuse_links(folder.root)
    scored = read_results(folder.results)
    provenance = folder.read_provenance()
    out = Path(out) if out else folder.report
    runfolder.mkdir(out)
    named, paper_caption = documents.run_report_tables(scored, provenance)
    for name, table in named.items():
        write_table(table, out / f"{name}.csv")
        write_table(table, out / f"{name}.parquet")
    write_table(documents.models_table(provenance), out / "models.csv")
    figures = {name: save_figure(fig, out, name) for name, fig in plots.plot_all(scored).items()}
    for name, figure in (("symmetry", plots.symmetry_bars(named["symmetry"])),
                         ("coordination", plots.coordination_lines(named["coordination"]))):
        if figure is not None:
            figures[name] = save_figure(figure, out, name)
    figures.update(dataset_figures(folder, out))
    for model in dict.fromkeys(named["energy_by_element"]["model"]):
        name = plots.element_figure_name(model)
        figures[name] = save_figure(plots.energy_by_element(named["energy_by_element"], model), out, name)
    md, body = documents.run_documents(folder.name, scored, provenance, named, paper_caption,
                                       {name: (png.name, svg.name, png.read_bytes())
                                        for name, (png, svg) in figures.items()})
    runfolder.write_text(out / "report.md", md)
    runfolder.write_text(out / "report.html", body)
    write_explore_page(folder, scored, named, out)
    return out / "report.md"


def read_frames(path: Path):
    """(id, Atoms) of every frame of an extxyz file of the run folder (none if absent)."""
    from ase.io import iread

    from orchestrator.datasets import id_from_extxyz

    if not path.is_file() or path.stat().st_size == 0:
        return
    for atoms in iread(path, format="extxyz"):
        yield id_from_extxyz(atoms.info["id"]), atoms


def write_explore_page(folder: RunFolder, scored: pd.DataFrame, named: dict, out: Path) -> Path:
    """report/explore.html (metrics.explore): the PBE structures for formulas and the
    gallery, and of the relaxed ones only the gallery's cases."""
    reference = dict(read_frames(folder.reference))
    cases = explore.gallery_cases(scored, {})
    wanted = set(zip(cases["model"].astype(str), cases["id"].astype(str)))
    relaxed = {key: atoms for sid, atoms in read_frames(folder.relaxed)
               if (key := (str(atoms.info["model"]), sid)) in wanted}
    path = out / "explore.html"
    runfolder.write_text(path, explore.run_page(folder.name, scored, named, reference, relaxed))
    return path


def finished_runs(results_dir: Path, *, complete: bool = True) -> list[Path]:
    """Sub-folders of results_dir with both results.csv and provenance.json, by name: the
    complete ones, or (complete=False) those whose provenance says they are incomplete."""
    return [f.root for f in scored_folders(results_dir)
            if f.is_scored() and (f.read_provenance().get("status") != "incomplete") == complete]


def leaderboard(results_dir: Path) -> tuple[pd.DataFrame, list[tuple[str, pd.DataFrame, dict]]]:
    """metrics.report.leaderboard over the finished runs of results_dir, and those runs as
    (name, scored table, provenance)."""
    folders = finished_runs(results_dir)
    if not folders:
        raise BenchError(f"{results_dir}: no finished run (a folder with results.csv and provenance.json); "
                         "run the benchmark first")
    runs = [(f.name, read_results(f.results), f.read_provenance()) for f in map(RunFolder, folders)]
    table = documents.leaderboard(runs)
    if table.empty:
        raise BenchError(f"{results_dir}: no finished run: every model of every run has structures without a "
                         "result; rerun those runs to finish them")
    return table, runs


def write_leaderboard(results_dir: Path, out: Path | None = None) -> Path:
    """leaderboard.csv (every column), .md and .html in `out` (default results_dir);
    returns the .md path."""
    results_dir = Path(results_dir)
    out = Path(out) if out else results_dir
    runfolder.mkdir(out)
    table, runs = leaderboard(results_dir)
    write_table(table, out / "leaderboard.csv")
    reports = {d.name: os.path.relpath(RunFolder(d).report / "explore.html", out) for d in finished_runs(results_dir)}
    beyond = documents.beyond_the_paper(runs, reports)
    for name, frame in beyond.items():
        write_table(frame, out / f"leaderboard_{name}.csv")
    left_out = [d.name for d in finished_runs(results_dir, complete=False)]
    for run_dir in finished_runs(results_dir):
        left_out += [f"{run_dir.name} ({model})"
                     for model in documents.unfinished_models(read_results(RunFolder(run_dir).results))]
    md, body = documents.leaderboard_documents(table, str(results_dir), left_out, beyond)
    runfolder.write_text(out / "leaderboard.md", md)
    runfolder.write_text(out / "leaderboard.html", body)
    runfolder.write_text(out / "explore.html", explore.leaderboard_page(table, reports, beyond))
    return out / "leaderboard.md"
