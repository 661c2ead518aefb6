"""metrics.report and metrics.plots on small synthetic run folders."""

import json

import numpy as np
import pandas as pd
import pytest

from metrics import plots
from metrics.report import read_results, write_leaderboard, write_run_report
from orchestrator.errors import BenchError

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
                             "cell_change_rel": 0.01, "extent_a": 3.0})
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
    assert page.count("<table") == 6  # models + five tables
    assert page.count("data:image/png;base64,") == 3
    assert "src=\"energy_error.png\"" not in page  # nothing refers to a file next to it
    for text in ("goodpkg=1.2.3", "poorpkg=?", "sha256:" + "1" * 64, "ab" * 32, "max_steps=15000",
                 "2025-01-01T10:00:00+00:00", "fragmented_thickness", "0123d"):
        assert text in page, text
    md = md_path.read_text()
    assert "| model | dimension | structures | failed |" in md
    assert "![Energy error](energy_error.png)" in md
    assert "goodpkg=1.2.3" in md


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
    md = md_path.read_text()
    assert "## 0D" in md and "## Runs" in md and "run-b" in md and "sha256:111111111111 " in md
    page = (tmp_path / "leaderboard.html").read_text()
    assert page.count("<table") == 4  # 0D, 2D, 3D and runs


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
    figures = plots.plot_all(pd.DataFrame(rows), tmp_path)
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
    png, svg = plots.box_plot(table, "energy_error", tmp_path)
    assert png.exists() and "no structures to show" in svg.read_text()
