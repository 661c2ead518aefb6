"""The run report and the leaderboard (metrics.report, metrics.plots, orchestrator.report) on small
synthetic run folders."""

import json

import numpy as np
import pandas as pd
import pytest

from metrics import plots
from orchestrator.report import read_results, save_figure, write_leaderboard, write_run_report
from orchestrator.errors import BenchError

pytestmark = pytest.mark.slow  # matplotlib figures of seconds each: the unit tier, not the fast one

PROVENANCE = {
    "run_id": "run-a", "started": "2025-01-01T10:00:00+00:00", "finished": "2025-01-01T11:00:00+00:00",
    "dataset": {"name": "0123d", "files": {"0123D.json.bz2": "ab" * 32}, "structures": 8},
    "protocol": {"optimizer": "FIRE", "fmax_ev_per_a": 0.04, "max_steps": 15000},
    "fragmentation_limits_a": {"2D": 7.5, "1D": 12.5, "0D": 20.0},
    "models": {"good": {"image": "umlip/good:1", "image_id": "sha256:" + "1" * 64, "python": "3.11.9",
                        "packages": {"goodpkg": "1.2.3", "torch": "2.4.0"}},
               "poor": {"image": "umlip/poor:1", "image_id": "sha256:" + "2" * 64,
                        "packages": {"poorpkg": None}}},
    "host": {"tool_commit": "abc123"},
}


def symmetry_columns(dim, kept: bool) -> dict:
    """Space group 221 (48 operations) kept or lost to 123 (16); layer group 80 (24) kept or lost to
    65 (8), at 1e-2; at 1e-5 always lost; none for 0D."""
    if dim == "0D":
        return {"symmetry": "", "symmetry_1e-05": ""}
    ref, ops_ref, lower, ops_lower = (221, 48, 123, 16) if dim == "3D" else (80, 24, 65, 8)
    return {"symmetry_group_ref": ref, "symmetry_ops_ref": ops_ref,
            "symmetry_group": ref if kept else lower, "symmetry_ops": ops_ref if kept else ops_lower,
            "symmetry": "match" if kept else "decrease", "symmetry_group_ref_1e-05": ref, "symmetry_ops_ref_1e-05": ops_ref,
            "symmetry_group_1e-05": lower, "symmetry_ops_1e-05": ops_lower, "symmetry_1e-05": "decrease"}


def scored_rows(energy_scale=1.0):
    rng = np.random.default_rng(0)
    rows = []
    for model, scale, fail in (("good", 1.0, ""), ("poor", 10.0, "fragmented_thickness")):
        for dim in ("0D", "2D", "3D"):
            for k in range(4):
                reason = fail if (k == 0 and dim == "2D") else ""
                rows.append({"model": model, "id": f"{dim}-{k}", "dimension": dim, "natoms": 4, "converged": True,
                             "failure_reason": reason, "steps": int(rng.integers(5, 200)),
                             "energy_ev": -10.0, "energy_ref_ev": -10.0, "max_force_ev_per_a": 0.02, "wall_s": 0.5,
                             "periodic_axes": {"0D": "", "2D": "ab", "3D": "abc"}[dim],
                             "energy_error_mev_per_atom": energy_scale * scale * rng.normal(),
                             "position_mae_a": scale * 0.01 * rng.random(), "position_rmsd_a": 0.02,
                             "cell_change_rel": 0.01, "extent_a": 3.0, "elements": "Mo S" if dim == "2D" else "C H",
                             "disconnected": k == 1, "reference_over_limit": False,
                             "dimension_mismatch": k == 2 and model == "good",
                             "coordination": {"0D": 1.0 + k, "2D": 3.0, "3D": 12.0}[dim],
                             **symmetry_columns(dim, kept=not (model == "poor" and k == 3))})
    return pd.DataFrame(rows)


def make_run(root, name, provenance=PROVENANCE, energy_scale=1.0):
    run = root / name
    run.mkdir(parents=True)
    scored_rows(energy_scale).to_csv(run / "results.csv", index=False)
    if provenance is not None:
        (run / "provenance.json").write_text(json.dumps({**provenance, "run_id": name}))
    return run


def test_run_report_writes_tables_plots_and_a_self_contained_html(tmp_path):
    run = make_run(tmp_path, "run-a")
    md_path = write_run_report(run)
    out = run / "report"
    assert md_path == out / "report.md"
    for name in ("summary", "failures", "steps", "energy", "positions"):
        assert (out / f"{name}.csv").stat().st_size > 0
        assert len(pd.read_parquet(out / f"{name}.parquet")) == 6  # 2 models x 3 dimensionalities
    for figure in ("steps", "energy_error", "position_mae"):
        assert (out / f"{figure}.png").read_bytes()[:4] == b"\x89PNG"
        assert "<svg" in (out / f"{figure}.svg").read_text()
    failures = pd.read_csv(out / "failures.csv")
    assert failures.set_index(["model", "dimension"]).loc[("poor", "2D"), "fragmented_thickness"] == 1
    page = (out / "report.html").read_text()
    assert page.count("<table") == 14  # models + 13 tables (no paper table: these models are not the paper's)
    assert "Beside the paper" not in page
    # three box plots, symmetry, coordination, one element map per model
    assert page.count("data:image/png;base64,") == 7
    assert "![Errors and failures against coordination](coordination.png)" in md_path.read_text()
    by_coordination = pd.read_csv(out / "coordination.csv").set_index(["model", "coordination_bin"])
    assert by_coordination.loc[("poor", "3"), ["n", "failed_share", "dimensions"]].tolist() == [5, 0.2, "0D,2D"]
    assert pd.read_csv(out / "hard_cases.csv").empty  # one of the two models failed 2D-0: not a hard case
    assert "src=\"energy_error.png\"" not in page  # nothing refers to a file next to it
    for text in ("goodpkg=1.2.3", "poorpkg=?", "sha256:" + "1" * 64, "ab" * 32, "max steps 15000",
                 "2025-01-01T10:00:00+00:00", "fragmented_thickness", "0123d"):
        assert text in page, text
    md = md_path.read_text()
    assert ("| model | dim. | structures | finished | failed | failed (%) | steps (median) | ΔE MAE (meV/atom) | "
            "ΔE median (meV/atom) |") in md
    # every table is headed for a person (metrics.labels): no column name, a unit where there is one
    headers = [line for k, line in enumerate(md.splitlines()[:-1]) if md.splitlines()[k + 1].startswith("| ---")]
    assert headers and not any("_" in header for header in headers)
    for unit in ("| Δr MAE, median (Å) |", "| median (meV/atom) |", "| µs/atom/step |", "| median (steps) |",
                 "| Δr RMSD, median (Å) |"):
        assert unit in md, unit
    assert "<th>ΔE MAE (meV/atom)</th>" in page and "<th>energy mae mev</th>" not in page
    assert "![Symmetry kept](symmetry.png)" in md
    kept = pd.read_csv(out / "symmetry.csv").set_index(["model", "dimension", "symprec"])
    assert len(kept) == 8  # 2 models x (2D, 3D) x 2 tolerances; none for 0D
    # poor 2D: its first structure failed (not counted), the last lost its symmetry
    assert kept.loc[("poor", "2D", 1e-2), ["n", "match", "decrease", "ops_mae"]].tolist() == [3, 2 / 3, 1 / 3, 16 / 3]
    assert kept.loc[("good", "3D", 1e-5), "decrease"] == 1.0
    assert pd.read_csv(out / "summary.csv").set_index(["model", "dimension"]).loc[("poor", "3D"),
                                                                                  "symmetry_match"] == 0.75
    assert "![Energy error](energy_error.png)" in md
    assert "goodpkg=1.2.3" in md


def test_report_tables_of_connectivity_references_elements_and_timing(tmp_path):
    run = make_run(tmp_path, "run-a")
    write_run_report(run)
    out = run / "report"
    connectivity = pd.read_csv(out / "connectivity.csv").set_index(["model", "dimension"])
    assert connectivity.loc[("good", "3D"), "disconnected"] == 1  # counted, but not among the failures
    assert pd.read_csv(out / "failures.csv").set_index(["model", "dimension"]).loc[("good", "3D"), "failed"] == 0
    reference = pd.read_csv(out / "reference.csv").set_index("dimension")
    assert reference["structures"].to_dict() == {"0D": 4, "2D": 4, "3D": 4}
    assert reference["label_mismatch"].to_dict() == {"0D": 1, "2D": 1, "3D": 1}
    by_element = pd.read_csv(out / "energy_by_element.csv").set_index(["model", "dimension", "element"])
    scored = pd.read_csv(run / "results.csv", keep_default_na=False)
    ok = scored[(scored["model"] == "poor") & (scored["dimension"] == "2D") & (scored["failure_reason"] == "")]
    assert by_element.loc[("poor", "2D", "Mo"), "n"] == 3
    assert by_element.loc[("poor", "2D", "Mo"), "mae"] == pytest.approx(ok["energy_error_mev_per_atom"].abs().mean())
    assert (out / "energy_by_element_good.png").read_bytes()[:4] == b"\x89PNG"
    timing = pd.read_csv(out / "timing.csv").set_index("model")
    assert timing.loc["good", "worker_s"] == pytest.approx(12 * 0.5)
    assert timing.loc["good", "structures_per_worker_s"] == pytest.approx(2.0)
    page = (out / "report.html").read_text()
    assert "1 h 00 min 00 s" in page  # the run's wall time
    assert "max steps 15000" in page and "{" not in page.split("<details>")[0].split("</style>")[1]  # text, not JSON


def test_the_paper_s_table_ii_beside_a_0123d_run(tmp_path):
    run = make_run(tmp_path, "run-0123d", provenance={**PROVENANCE, "dataset": {
        "name": "0123d", "subset_key": "all", "structures": 12}})
    table = pd.read_csv(run / "results.csv")
    table["model"] = table["model"].map({"good": "mace-mpa-0", "poor": "ORB-3d"})
    table.to_csv(run / "results.csv", index=False)
    write_run_report(run)
    beside = pd.read_csv(run / "report" / "paper.csv").set_index(["model", "dimension"])
    assert beside.loc[("mace-mpa-0", "2D"), ["tag", "paper_failed", "failed"]].tolist() == ["MACE", 47, 0]
    assert beside.loc[("ORB-3d", "0D"), "paper_failed"] == 89
    assert beside.loc[("ORB-3d", "2D"), "failed"] == 1
    assert beside.loc[("ORB-3d", "0D"), "paper_failed_pct"] == pytest.approx(0.89)
    page = (run / "report" / "report.html").read_text()
    assert "Beside the paper" in page and "compare the percentages" not in page
    # a subset of the paper's dataset says what the paper's counts are over
    (run / "provenance.json").write_text(json.dumps({**PROVENANCE, "dataset": {
        "name": "0123d", "subset_key": "n3s0", "subset": {"limit_per_dimension": 3, "seed": 0}}}))
    write_run_report(run)
    assert "over 10,000 structures per dimensionality" in (run / "report" / "report.html").read_text()
    write_leaderboard(tmp_path)
    board = pd.read_csv(tmp_path / "leaderboard.csv").set_index(["model", "dimension"])
    assert board.loc[("mace-mpa-0", "2D"), "paper_failed"] == 47
    # another dataset gets no comparison
    (run / "provenance.json").write_text(json.dumps({**PROVENANCE, "dataset": {"name": "alexandria-3d-p000"}}))
    write_run_report(run)
    assert not (run / "report" / "report.html").read_text().count("Beside the paper")
    write_leaderboard(tmp_path)
    assert pd.read_csv(tmp_path / "leaderboard.csv")["paper_failed"].isna().all()


def test_dataset_figures_from_the_run_s_reference_structures(tmp_path):
    from ase.build import bulk, molecule, mx2
    from ase.io import write

    run = make_run(tmp_path, "run-a")
    mol = molecule("CH4")
    mol.center(vacuum=8.0)
    layer = mx2("MoS2", vacuum=8.0)
    frames = []
    for k, atoms in enumerate((mol, layer, bulk("Si"), bulk("Cu"))):
        atoms.pbc = True
        atoms.info.update(id=f"s{k}", energy_ref_ev=-3.0 * len(atoms) - k)
        frames.append(atoms)
    write(run / "reference.extxyz", frames, format="extxyz")
    write_run_report(run)
    out = run / "report"
    data = pd.read_csv(out / "dataset.csv").set_index("id")
    assert data["dimension"].to_dict() == {"s0": "0D", "s1": "2D", "s2": "3D", "s3": "3D"}
    assert data.loc["s1", "elements"] == "Mo S" and data.loc["s2", "energy_per_atom_ev"] == pytest.approx(-4.0)
    for name in ("dataset_elements", "dataset_distributions"):
        assert (out / f"{name}.png").stat().st_size > 10000
    svg = (out / "dataset_elements.svg").read_text()
    assert "Mo" in svg and "fraction of structures containing each element" in svg
    assert "Dataset: elements per dimensionality" in (out / "report.html").read_text()


def test_element_fractions_are_per_dimensionality_as_the_paper_s_fig_2():
    from metrics.dataset import element_counts

    table = pd.DataFrame({"dimension": ["3D", "3D", "3D", "3D", "0D"], "elements": ["Cu", "Cu O", "Si O", "Si", "C H"]})
    counts = element_counts(table).set_index(["dimension", "element"])["fraction"]
    assert counts[("3D", "Cu")] == 0.5 and counts[("3D", "O")] == 0.5 and counts[("0D", "H")] == 1.0


@pytest.mark.parametrize("provenance", [{}, {"models": "oops", "dataset": "just a name", "protocol": None}, None])
def test_run_report_survives_sparse_provenance(tmp_path, provenance):
    run = make_run(tmp_path, "run-sparse", provenance=provenance)
    if provenance is None:  # no provenance.json at all
        assert not (run / "provenance.json").exists()
    page_path = write_run_report(run).with_name("report.html")
    page = page_path.read_text()
    assert "<table" in page and "good" in page


def test_a_results_table_without_a_required_column_is_named(tmp_path):
    run = make_run(tmp_path, "run-old")
    table = pd.read_csv(run / "results.csv").drop(columns=["position_mae_a"])
    table.to_csv(run / "results.csv", index=False)
    with pytest.raises(BenchError, match=r"run-old/results\.csv: missing column 'position_mae_a'"):
        write_run_report(run)
    with pytest.raises(BenchError, match="position_mae_a"):
        write_leaderboard(tmp_path)


def test_read_results_restores_empty_failure_reasons(tmp_path):
    run = make_run(tmp_path, "run-a")
    table = read_results(run / "results.csv")
    assert (table["failure_reason"] == "").sum() == 23  # one fragmented_thickness of 24


def test_leaderboard_over_two_runs_skips_unfinished_ones(tmp_path):
    make_run(tmp_path, "run-a")
    make_run(tmp_path, "run-b", energy_scale=0.1, provenance={**PROVENANCE, "protocol": {"max_steps": 500}})
    make_run(tmp_path, "run-c", provenance=None)  # still running: no provenance yet
    (tmp_path / "notes").mkdir()
    md_path = write_leaderboard(tmp_path)
    assert md_path == tmp_path / "leaderboard.md"
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    assert set(board["run"]) == {"run-a", "run-b"}
    assert len(board) == 2 * 2 * 3  # runs x models x dimensionalities
    assert list(dict.fromkeys(board["dimension"])) == ["0D", "2D", "3D"]
    zero_d = board[board["dimension"] == "0D"]
    assert zero_d["energy_mae_mev"].is_monotonic_increasing  # no failures in 0D: ranked by energy MAE
    assert zero_d.iloc[0]["run"] == "run-b" and zero_d.iloc[0]["model"] == "good"
    two_d = board[board["dimension"] == "2D"]
    assert list(two_d["failed"]) == [0, 0, 1, 1]  # failures rank first
    assert set(board["image_id"]) == {"sha256:" + "1" * 64, "sha256:" + "2" * 64}
    assert "goodpkg=1.2.3, torch=2.4.0" in set(board["packages"])
    assert set(board["protocol"]) == {"optimizer=FIRE, fmax_ev_per_a=0.04, max_steps=15000", "max_steps=500"}
    assert board["dataset_sha256"].str.contains("ab" * 32).all()
    kept = board.set_index(["run", "model", "dimension"])["symmetry_match"]
    assert kept[("run-a", "poor", "3D")] == 0.75 and kept[("run-a", "good", "2D")] == 1.0
    assert kept[("run-a", "good", "0D")] != kept[("run-a", "good", "0D")]  # no group for molecules: NaN
    md = md_path.read_text()
    assert "## 0D" in md and "## Runs" in md and "run-b" in md and "sha256:111111111111 " in md
    page = (tmp_path / "leaderboard.html").read_text()
    assert page.count("<table") == 5  # 0D, 2D, 3D, errors against coordination and runs (no hard case here)
    assert "## Errors against coordination (beyond the paper)" in md and "## Hard cases (beyond the paper)" in md
    by_coordination = pd.read_csv(tmp_path / "leaderboard_coordination.csv")
    assert set(by_coordination["run"]) == {"run-a", "run-b"} and len(pd.read_csv(tmp_path / "leaderboard_hard_cases.csv")) == 0


def test_an_incomplete_run_says_so_and_stays_off_the_leaderboard(tmp_path):
    make_run(tmp_path, "run-a")
    run = make_run(tmp_path, "run-half", provenance={**PROVENANCE, "status": "incomplete", "missing": {"good": 3},
                                                     "dataset": {"name": "x", "skipped": {"bad-1": "no atoms"}}})
    page = write_run_report(run).with_name("report.html").read_text()
    assert "INCOMPLETE RUN" in page and "good 3" in page
    assert "skipped as invalid</b>: 1: bad-1 (no atoms)" in page
    write_leaderboard(tmp_path)
    assert set(pd.read_csv(tmp_path / "leaderboard.csv")["run"]) == {"run-a"}
    assert "Left out, incomplete: run-half" in (tmp_path / "leaderboard.md").read_text()


def test_the_leaderboard_says_which_run_reproduces_which(tmp_path):
    make_run(tmp_path, "run-a")
    reproduction = {"of": "run-a", "bundle": "run-a.bundle.tar.gz", "verdict": "REPRODUCED: 6 structure(s), identical"}
    make_run(tmp_path, "run-a-reproduced-ase-cpu", provenance={**PROVENANCE, "reproduction": reproduction})
    make_run(tmp_path, "run-b")
    write_leaderboard(tmp_path)
    board = pd.read_csv(tmp_path / "leaderboard.csv", keep_default_na=False).drop_duplicates("run")
    said = dict(zip(board["run"], board["reproduction"]))
    assert said == {"run-a": "reproduced by run-a-reproduced-ase-cpu (run-a.bundle.tar.gz: REPRODUCED)",
                    "run-a-reproduced-ase-cpu": "reproduces run-a (run-a.bundle.tar.gz): REPRODUCED", "run-b": ""}
    assert "reproduced by run-a-reproduced-ase-cpu (run-a.bundle.tar.gz: REPRODUCED)" in \
        (tmp_path / "leaderboard.md").read_text()


def test_leaderboard_without_finished_runs_is_a_clear_error(tmp_path):
    make_run(tmp_path, "run-c", provenance=None)
    with pytest.raises(BenchError, match="no finished run"):
        write_leaderboard(tmp_path)
    with pytest.raises(BenchError, match="no finished run"):
        write_leaderboard(tmp_path / "missing")


@pytest.mark.parametrize("models, dims", [(["only"], ["3D"]), ([f"m{i}" for i in range(11)], ["0D", "1D", "2D", "3D"])])
def test_box_plots_with_one_or_eleven_models(tmp_path, models, dims):
    rng = np.random.default_rng(1)
    rows = [{"model": m, "dimension": d, "converged": True, "failure_reason": "", "steps": int(rng.integers(1, 900)),
             "energy_error_mev_per_atom": rng.normal(0, 5), "position_mae_a": rng.random() * 0.05}
            for m in models for d in dims for _ in range(20)]
    rows.append({**rows[0], "energy_error_mev_per_atom": 5000.0})  # one wild outlier
    figures = {name: save_figure(fig, tmp_path, name) for name, fig in plots.plot_all(pd.DataFrame(rows)).items()}
    assert set(figures) == {"steps", "energy_error", "position_mae"}
    for png, svg in figures.values():
        assert png.stat().st_size > 5000 and svg.stat().st_size > 5000
    svg = (tmp_path / "energy_error.svg").read_text()
    assert "points beyond the axis" in svg or "beyond" in svg  # the outlier is announced
    for model in models:
        assert model in (tmp_path / "steps.svg").read_text()


def test_a_plot_without_successful_structures_still_renders(tmp_path):
    table = pd.DataFrame([{"model": "m", "dimension": "1D", "converged": False, "failure_reason": "diverged",
                           "steps": 3, "energy_error_mev_per_atom": np.nan, "position_mae_a": np.nan}])
    png, svg = save_figure(plots.box_plot(table, "energy_error"), tmp_path, "energy_error")
    assert png.exists() and "no structures to show" in svg.read_text()


def test_a_read_only_results_folder_is_reported_elsewhere(tmp_path, monkeypatch):
    import os

    from orchestrator.cli import main

    results = tmp_path / "results"
    make_run(results, "run-a")
    manifest = tmp_path / "benchmark.yaml"
    manifest.write_text(f"results_dir: {results}\ncache_dir: {tmp_path / 'cache'}\n")
    monkeypatch.setattr(os, "access", lambda path, mode: not str(path).startswith(str(results)))
    assert main(["report", "--manifest", str(manifest)]) == 0
    assert (tmp_path / "cache" / "reports" / "run-a" / "report.html").exists()
    assert (tmp_path / "cache" / "reports" / "leaderboard.md").exists()
    assert not (results / "run-a" / "report").exists() and not (results / "leaderboard.md").exists()


def test_a_model_with_missing_rows_is_never_ranked_whatever_the_status_says(tmp_path):
    run = make_run(tmp_path, "run-a")  # provenance says complete
    table = pd.read_csv(run / "results.csv")
    table.loc[table["model"] == "poor", ["failure_reason", "converged"]] = ["missing", False]
    table.to_csv(run / "results.csv", index=False)  # as a kill between the table and the provenance leaves it
    write_leaderboard(tmp_path)
    assert set(pd.read_csv(tmp_path / "leaderboard.csv")["model"]) == {"good"}
    assert "Left out, incomplete: run-a (poor)" in (tmp_path / "leaderboard.md").read_text()
    assert "INCOMPLETE RUN: structures without a result (poor 12)" in write_run_report(run).read_text()


def test_a_time_limit_is_said_beside_every_table_it_touched(tmp_path):
    run = make_run(tmp_path, "run-0123d", provenance={**PROVENANCE, "structure_timeout_s": 600,
                                                      "dataset": {"name": "0123d", "subset_key": "all"}})
    table = pd.read_csv(run / "results.csv")
    table["model"] = table["model"].map({"good": "mace-mpa-0", "poor": "ORB-3d"})
    table.loc[0, ["failure_reason", "converged"]] = ["timeout", False]
    table.to_csv(run / "results.csv", index=False)
    md = write_run_report(run).read_text()
    assert md.count("stopped by the limit of 600 s") >= 7  # the banner and every table it changed
    assert "INCOMPLETE: rows with complete = False" in md
    beside = pd.read_csv(run / "report" / "paper.csv")
    assert beside["complete"].tolist().count(False) == 1
    failures = pd.read_csv(run / "report" / "failures.csv").set_index(["model", "dimension"])
    assert failures.loc[("mace-mpa-0", "0D"), ["structures", "finished", "timeout"]].tolist() == [4, 3, 1]
    table.loc[0, ["failure_reason", "converged"]] = ["", True]
    table.to_csv(run / "results.csv", index=False)
    assert "limit of" not in write_run_report(run).read_text()


def test_wires_the_authors_reset_split_are_named_in_the_report(tmp_path):
    run = make_run(tmp_path, "run-a")
    table = pd.read_csv(run / "results.csv")
    table["wire_split_by_reset"] = False
    table.loc[0, ["failure_reason", "wire_split_by_reset"]] = ["fragmented_width", True]
    table.to_csv(run / "results.csv", index=False)
    assert "1 wire(s) failed as fragmented_width after the authors' adjust_vacuum_1D split them" in \
        write_run_report(run).read_text()


def test_the_dataset_figures_are_drawn_once_per_reference_file(tmp_path, monkeypatch):
    from ase.build import bulk
    from ase.io import write

    import orchestrator.report

    run = make_run(tmp_path, "run-a")
    frames = [bulk("Si"), bulk("Cu")]
    for k, atoms in enumerate(frames):
        atoms.info.update(id=f"s{k}", energy_ref_ev=-3.0)
    write(run / "reference.extxyz", frames, format="extxyz")
    write_run_report(run)
    drawn = []
    real = orchestrator.report.plots.dataset_distributions
    monkeypatch.setattr(orchestrator.report.plots, "dataset_distributions", lambda *a: drawn.append(1) or real(*a))
    write_run_report(run)
    assert drawn == [] and (run / "report" / "dataset_distributions.png").is_file()
    assert "Dataset: atoms per cell" in (run / "report" / "report.html").read_text()
    write(run / "reference.extxyz", frames[:1], format="extxyz")  # other structures: drawn again
    write_run_report(run)
    assert drawn == [1]
