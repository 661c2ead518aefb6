"""metrics.summary on a small hand-made scored table."""

import numpy as np
import pandas as pd
import pytest

from metrics import summary


def scored_table():
    rows = [
        # model, dim, converged, reason, steps, energy error, position MAE
        ("m1", "3D", True, "", 10, 2.0, 0.01),
        ("m1", "3D", True, "", 20, -4.0, 0.03),
        ("m1", "3D", True, "", 30, 12.0, 0.02),
        ("m1", "3D", False, "not_converged", 15000, 500.0, 0.9),
        ("m1", "0D", True, "", 5, -20.0, 0.10),
        ("m1", "0D", True, "fragmented_diameter", 7, 1.0, 3.0),
        ("m1", "0D", False, "model_error", 0, np.nan, np.nan),
        ("m2", "2D", True, "fragmented_thickness", 40, 0.0, 0.5),
        ("m2", "3D", True, "", 8, 1.0, 0.004),
    ]
    table = pd.DataFrame(rows, columns=["model", "dimension", "converged", "failure_reason", "steps",
                                        "energy_error_mev_per_atom", "position_mae_a"])
    table["id"] = [f"s{i}" for i in range(len(table))]
    table["position_rmsd_a"] = table["position_mae_a"] * 2
    table["cell_change_rel"] = -0.01
    return table


def row(table, model, dim):
    match = table[(table["model"] == model) & (table["dimension"] == dim)]
    assert len(match) == 1
    return match.iloc[0]


def test_failures_count_each_reason_once_per_model_and_dimension():
    table = summary.failures(scored_table())
    assert list(zip(table["model"], table["dimension"])) == [("m1", "0D"), ("m1", "3D"), ("m2", "2D"), ("m2", "3D")]
    zero_d = row(table, "m1", "0D")
    assert (zero_d["structures"], zero_d["failed"]) == (3, 2)
    assert zero_d["failed_pct"] == pytest.approx(200 / 3)
    assert (zero_d["fragmented_diameter"], zero_d["model_error"], zero_d["diverged"]) == (1, 1, 0)
    assert row(table, "m1", "3D")["not_converged"] == 1
    assert row(table, "m2", "2D")["fragmented_thickness"] == 1
    assert "disconnected" not in table.columns  # a diagnostic, never a failure reason
    assert row(table, "m2", "3D")["failed"] == 0
    assert table["structures"].sum() == 9


def test_steps_are_over_converged_relaxations():
    table = summary.steps(scored_table())
    bulk = row(table, "m1", "3D")
    assert bulk["n"] == 3 and bulk["median"] == 20 and bulk["q1"] == 15 and bulk["q3"] == 25
    zero_d = row(table, "m1", "0D")
    assert zero_d["n"] == 2 and zero_d["median"] == 6  # the fragmented one converged: 5 and 7
    assert row(table, "m2", "2D")["median"] == 40


def test_energy_statistics_over_successful_relaxations():
    table = summary.energy(scored_table())
    bulk = row(table, "m1", "3D")  # 2, -4, 12; the unconverged 500 is left out
    assert bulk["n"] == 3
    assert bulk["mean"] == pytest.approx(10 / 3)
    assert bulk["median"] == pytest.approx(2.0)
    assert bulk["mae"] == pytest.approx(6.0)
    assert bulk["q1"] == pytest.approx(-1.0) and bulk["q3"] == pytest.approx(7.0)
    assert bulk["within_10_mev"] == pytest.approx(2 / 3)
    assert row(table, "m1", "0D")["mean"] == pytest.approx(-20.0)
    empty = row(table, "m2", "2D")  # its only structure failed
    assert empty["n"] == 0 and np.isnan(empty["median"])


def test_position_statistics_over_successful_relaxations():
    table = summary.positions(scored_table())
    bulk = row(table, "m1", "3D")
    assert bulk["n"] == 3 and bulk["median"] == pytest.approx(0.02)
    assert bulk["q1"] == pytest.approx(0.015) and bulk["q3"] == pytest.approx(0.025)
    assert bulk["rmsd_median"] == pytest.approx(0.04)
    assert bulk["cell_change_abs_median"] == pytest.approx(0.01)
    assert row(table, "m1", "0D")["median"] == pytest.approx(0.10)


def test_summary_and_a_table_read_back_from_csv(tmp_path):
    table = scored_table()
    path = tmp_path / "results.csv"
    table.to_csv(path, index=False)
    back = pd.read_csv(path)
    assert back["failure_reason"].isna().sum() == 5  # "" comes back as NaN
    line = row(summary.summary(back), "m1", "3D")
    assert line["failed"] == 1 and line["median_steps"] == 20
    assert line["energy_mae_mev"] == pytest.approx(6.0)
    assert line["position_mae_median_a"] == pytest.approx(0.02)
    assert line["energy_within_10_mev"] == pytest.approx(2 / 3)


def test_an_unknown_failure_reason_is_counted_under_its_name():
    table = scored_table()
    table.loc[0, "failure_reason"] = "exploded"
    fails = summary.failures(table)
    assert row(fails, "m1", "3D")["exploded"] == 1
    assert row(fails, "m1", "3D")["failed"] == 2


def test_missing_and_timed_out_structures_are_neither_failed_nor_successful():
    table = scored_table()
    table.loc[1, ["failure_reason", "converged"]] = ["missing", False]  # no result yet: an incomplete run
    table.loc[2, ["failure_reason", "converged"]] = ["timeout", False]  # over the tool's time limit
    bulk = row(summary.failures(table), "m1", "3D")
    assert (bulk["structures"], bulk["finished"], bulk["failed"], bulk["missing"], bulk["timeout"]) == (4, 2, 1, 1, 1)
    assert bulk["failed_pct"] == pytest.approx(50.0) and not bulk["complete"]
    assert row(summary.failures(scored_table()), "m1", "3D")["complete"]
    assert row(summary.energy(table), "m1", "3D")["n"] == 1


def test_the_failed_percentage_is_of_the_finished_structures():
    # 2 failures among 8 finished structures and 2 without a result: 25 %, not 20 %
    reasons = ["not_converged", "diverged"] + [""] * 6 + ["missing", "timeout"]
    table = pd.DataFrame({"model": "m", "dimension": "2D", "converged": [r == "" for r in reasons],
                          "failure_reason": reasons, "steps": 10, "energy_error_mev_per_atom": 1.0,
                          "position_mae_a": 0.01, "id": [f"s{i}" for i in range(10)]})
    fails = row(summary.failures(table), "m", "2D")
    assert (fails["structures"], fails["finished"], fails["failed"]) == (10, 8, 2)
    assert fails["failed_pct"] == pytest.approx(25.0)
    assert row(summary.summary(table), "m", "2D")["failed_pct"] == pytest.approx(25.0)


def test_steps_count_step_0_and_converged_then_fragmented_relaxations():
    table = scored_table()
    table.loc[0, "steps"] = 0  # converged at the PBE geometry: no FIRE step
    st = summary.steps(table)
    bulk, zero_d = row(st, "m1", "3D"), row(st, "m1", "0D")
    assert (bulk["n"], bulk["at_step_0"], bulk["fragmented"]) == (3, 1, 0)
    assert bulk["median"] == 20
    assert (zero_d["n"], zero_d["at_step_0"], zero_d["fragmented"]) == (2, 0, 1)  # 7 steps, then fragmented


def test_errors_and_failures_against_coordination_and_the_hard_cases():
    from metrics.summary import coordination, hard_cases

    table = pd.DataFrame({
        "model": ["a", "a", "a", "b", "b", "b", "c", "c", "c"], "id": ["x", "y", "z"] * 3,
        "dimension": ["0D", "3D", "2D"] * 3, "coordination": [1.0, 12.0, 2.9] * 3,
        "failure_reason": ["diverged", "", "", "fragmented_diameter", "", "timeout", "", "", "not_converged"],
        "energy_error_mev_per_atom": [1.0, -2.0, 3.0, 3.0, 4.0, 0.0, 5.0, 6.0, 7.0],
        "position_mae_a": [0.1, 0.2, 0.3, 0.3, 0.4, 0.0, 0.5, 0.6, 0.7]})
    bins = coordination(table).set_index(["model", "coordination_bin"])
    assert bins.loc[("a", "1"), ["n", "failed_share"]].tolist() == [1, 1.0]
    assert np.isnan(bins.loc[("a", "1"), "energy_mae_mev"])  # no successful relaxation to measure
    assert bins.loc[("a", "≥10"), ["energy_mae_mev", "position_mae_median_a", "dimensions"]].tolist() == [2.0, 0.2, "3D"]
    assert ("b", "3") not in bins.index  # a timed-out structure is no outcome
    assert bins.loc[("c", "3"), "failed_share"] == 1.0
    # x: failed by a and b, not by c (all but one of three); z: failed by c alone
    hard = hard_cases(table)
    assert hard["id"].tolist() == ["x"] and hard.loc[0, "failed"] == 2 and hard.loc[0, "models"] == 3
    assert hard.loc[0, "failure_reasons"] == "a: diverged; b: fragmented_diameter; c: ok"
    assert hard_cases(table, spare=0).empty
    assert coordination(table.drop(columns="coordination")).empty  # a table from before the column
