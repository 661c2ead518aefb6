"""Judging two runs of the same structures (metrics.compare, orchestrator.compare): the
tolerance each pair of runs gets, the verdict and its exit code, the structure it names."""

import numpy as np
import pandas as pd
import pytest
from ase import Atoms

from metrics import compare as judge
from orchestrator.compare import CannotCompare, RunSide, compare_runs

PROVENANCE = {"dataset": {"identity": "abc"}, "protocol": {"variant": "paper"}, "fragmentation_limits_a": {"0D": 20},
              "engine": "ase", "devices": [{"name": "cpu-0", "gpu": None}],
              "models": {"emt": {"dtype": "float64"}, "chgnet": {"dtype": "float32"}}}


def table(model="emt", energies=(-4.0, -8.0, -3.0), steps=(10, 20, 30), reasons=("", "", "not_converged")):
    return pd.DataFrame({"model": model, "id": ["a", "b", "c"], "dimension": ["3D", "2D", "0D"], "natoms": [2, 4, 3],
                         "failure_reason": list(reasons), "converged": [r == "" for r in reasons],
                         "steps": list(steps), "energy_ev": list(energies), "wall_s": [1.0, 2.0, 3.0],
                         "finished_at": [11.0, 13.0, 16.0]})


def relaxed(model="emt", shift=0.0):
    out = {}
    for sid, n in (("a", 2), ("b", 4), ("c", 3)):
        atoms = Atoms("H" * n, positions=np.arange(3 * n, dtype=float).reshape(n, 3), cell=[10, 10, 10], pbc=True)
        atoms.positions[0, 0] += shift
        out[(model, sid)] = atoms
    return out


def side(name, frame, atoms, **changes):
    return RunSide(name, frame, atoms, {**PROVENANCE, **changes})


def test_the_tolerance_follows_precision_device_and_engine():
    cuda = {**PROVENANCE, "devices": [{"name": "gpu0-0", "gpu": "0"}]}
    assert judge.tolerance_for(PROVENANCE, PROVENANCE, "emt") is judge.IDENTICAL
    assert judge.tolerance_for(PROVENANCE, {**PROVENANCE, "engine": "batched"}, "emt") is judge.FLOAT64
    assert judge.tolerance_for(PROVENANCE, cuda, "emt") is judge.FLOAT64
    assert judge.tolerance_for(PROVENANCE, PROVENANCE, "chgnet") is judge.FLOAT32  # even on the same machine
    assert judge.tolerance_for(PROVENANCE, {**PROVENANCE, "models": {}}, "emt") is judge.FLOAT32  # not recorded


def test_identical_runs_are_identical_and_one_changed_energy_is_named():
    same = compare_runs(side("A", table(), relaxed()), side("B", table(), relaxed()))
    assert same.verdict.code == judge.REPRODUCED and "identical" in same.verdict.line
    edited = compare_runs(side("A", table(), relaxed()), side("B", table(energies=(-4.0, -8.0001, -3.0)), relaxed()))
    assert edited.verdict.code == judge.DIFFERS
    assert edited.verdict.outside == ["emt b: |ΔE| 0.025 meV/atom"]
    assert "emt b: |ΔE| 0.025 meV/atom" in edited.markdown and "emt b" in edited.html


def test_float64_across_engines_allows_rounding_but_not_a_step():
    batched = {"engine": "batched"}
    rounding = compare_runs(side("A", table(), relaxed()),
                            side("B", table(energies=(-4.0 + 1e-9, -8.0, -3.0)), relaxed(shift=1e-7), **batched))
    assert rounding.verdict.code == judge.REPRODUCED and "within tolerance" in rounding.verdict.line
    assert "## Speed" in rounding.markdown and "us_per_atom_step" in rounding.markdown  # other engines: their speed
    same = compare_runs(side("A", table(), relaxed()), side("B", table(), relaxed()))
    assert "## Speed" not in same.markdown
    step = compare_runs(side("A", table(), relaxed()), side("B", table(steps=(10, 21, 30)), relaxed(), **batched))
    assert step.verdict.code == judge.DIFFERS and step.verdict.outside == ["emt b: steps 20 -> 21"]


def test_float32_is_judged_on_shares_and_status_changes_are_tabulated():
    many = pd.concat([table("chgnet").assign(id=lambda t, k=k: t["id"] + str(k)) for k in range(20)],
                     ignore_index=True)  # 60 structures
    noisy = many.copy()
    noisy.loc[noisy.index[:2], "steps"] += 1                        # within max(2, 2 %)
    noisy.loc[noisy.index[3], "energy_ev"] += 2 * 2 / 1000          # a1, 2 atoms: 2 meV/atom, 1 of 60
    atoms = {("chgnet", sid): relaxed("chgnet")[("chgnet", sid[0])] for sid in many["id"]}
    close = compare_runs(side("A", many, atoms), side("B", noisy, atoms))
    assert close.verdict.code == judge.REPRODUCED and close.verdict.outside == ["chgnet a1: |ΔE| 2 meV/atom"]
    flipped = noisy.copy()
    flipped.loc[flipped.index[:6:3], "failure_reason"] = "not_converged"  # 2 of 60 ok -> not_converged: > 2 %
    worse = compare_runs(side("A", many, atoms), side("B", flipped, atoms))
    assert worse.verdict.code == judge.DIFFERS
    changes = judge.status_changes(worse.rows)
    assert changes.to_dict("records") == [{"model": "chgnet", "status_a": "ok", "status_b": "not_converged",
                                           "structures": 2}]


def test_runs_of_other_data_or_models_cannot_be_compared():
    with pytest.raises(CannotCompare, match="dataset"):
        compare_runs(side("A", table(), relaxed()), side("B", table(), relaxed(), dataset={"identity": "other"}))
    with pytest.raises(CannotCompare, match="no model in common"):
        compare_runs(side("A", table(), relaxed()), side("B", table("chgnet"), relaxed("chgnet")))


def test_missing_results_are_left_out_not_judged():
    incomplete = table(reasons=("", "missing", "not_converged"))
    result = compare_runs(side("A", table(), relaxed()), side("B", incomplete, relaxed()))
    assert len(result.rows) == 2 and result.verdict.code == judge.REPRODUCED
    assert "1 result(s) missing or timed out, left out" in result.markdown


def test_an_atom_wrapped_across_the_cell_has_not_moved():
    cell = np.eye(3) * 5.0
    a = np.array([[0.1, 1.0, 1.0], [2.0, 2.0, 2.0]])
    b = np.array([[4.9 + 0.2, 1.0, 1.0], [2.0, 2.0, 2.3]])  # the first atom: 0.1 -> 5.1, the same site
    assert judge.max_displacement(a, b, cell, [True] * 3) == pytest.approx(0.3)
    assert judge.max_displacement(a, b, cell, [False] * 3) == pytest.approx(5.0)
