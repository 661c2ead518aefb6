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
    assert "## Speed" in rounding.markdown and "µs/atom/step" in rounding.markdown  # other engines: their speed
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


def test_float64_on_gpus_is_not_held_to_bit_equality():
    # the audit's case: two float64 runs, both on GPUs, same engine: a GPU's sums may round otherwise
    cuda = {**PROVENANCE, "devices": [{"name": "gpu0-0", "gpu": "0"}]}
    assert judge.tolerance_for(cuda, cuda, "emt") is judge.FLOAT64
    assert judge.IDENTICAL.why.startswith("float64, both on the CPU")
    # another base image (its libm's exp and log) is other arithmetic too: the audit's emt-metals on a newer Debian
    rebased = {**PROVENANCE, "models": {"emt": {"dtype": "float64", "base_image_id": "sha256:new"}}}
    assert judge.tolerance_for(PROVENANCE, rebased, "emt") is judge.FLOAT64


def test_steps_close_is_the_same_whichever_run_is_a():
    a, b = pd.Series([100, 3, 150]), pd.Series([102, 5, 153])
    assert list(judge.steps_close(a, b)) == list(judge.steps_close(b, a)) == [True, True, True]
    assert list(judge.steps_close(pd.Series([98]), pd.Series([102]))) == [False]
    # the audit's case: 2 % of A alone let 200 -> 196 agree and 196 -> 200 not
    assert list(judge.steps_close(pd.Series([196]), pd.Series([200]))) == list(judge.steps_close(
        pd.Series([200]), pd.Series([196]))) == [True]


def test_a_verdict_needs_its_evidence_on_both_sides():
    # no relaxed structures on one side (relaxed.extxyz removed): not "identical"
    with pytest.raises(CannotCompare, match=r"B: relaxed.extxyz has no relaxed emt a"):
        compare_runs(side("A", table(), relaxed()), side("B", table(), {}))
    # no energy for a structure that succeeded in both
    with pytest.raises(CannotCompare, match=r"emt b succeeded in both runs but results.csv has no energy for it in A"):
        compare_runs(side("A", table(energies=(-4.0, np.nan, -3.0)), relaxed()), side("B", table(), relaxed()))
    # a column the verdict reads
    with pytest.raises(CannotCompare, match=r"A: results.csv has no column energy_ev"):
        compare_runs(side("A", table().drop(columns="energy_ev"), relaxed()), side("B", table(), relaxed()))


def test_a_run_folder_without_provenance_cannot_be_compared(tmp_path):
    from orchestrator.compare import read_side

    table().assign(energy_error_mev_per_atom=0.0, position_mae_a=0.0).to_csv(tmp_path / "results.csv", index=False)
    with pytest.raises(CannotCompare, match="no provenance.json"):
        read_side(tmp_path, tmp_path / "unpack")


def test_an_altered_side_is_never_a_bare_reproduced():
    altered = side("B", table(), relaxed())
    altered.altered = ["b.bundle.tar.gz changed since it was made (results/results.csv)"]
    result = compare_runs(side("A", table(), relaxed()), altered)
    assert result.verdict.code == judge.DIFFERS
    assert result.verdict.line.startswith("NOT VERIFIED: b.bundle.tar.gz changed since it was made "
                                          "(results/results.csv). The structures alone: REPRODUCED")
    assert "NOT VERIFIED" in result.markdown and "NOT VERIFIED" in result.html


def test_how_much_of_a_difference_is_the_scorings(tmp_path):
    """Two runs scored by other stacks: one said a 2D layer fragmented, the other not, from the
    same relaxed structure (as an older numpy or ASE might have measured it). Scored again
    here on one stack, they agree: the difference was the scoring's, and the verdict says so."""
    from metrics.per_structure import score
    from orchestrator.datasets import write_extxyz

    layer = Atoms("Cu2", positions=[[0, 0, 5.0], [1.25, 1.25, 7.3]], cell=[2.5, 2.5, 20.0], pbc=True,
                  info={"id": "a", "dimension": "2D"})
    raw = pd.DataFrame({"model": ["emt"], "id": ["a"], "dimension": ["2D"], "natoms": [2], "failure_reason": [""],
                        "converged": [True], "steps": [10], "energy_ev": [-4.0], "energy_ref_ev": [-4.0]})
    relaxed_layer = {("emt", "a"): layer.copy()}
    scored = score(raw, {"a": layer}, relaxed_layer, {"2D": 7.5})
    assert scored.loc[0, "failure_reason"] == ""
    older = scored.assign(failure_reason="fragmented_thickness")  # what the other stack said of it
    write_extxyz(tmp_path / "reference.extxyz", [layer])
    stacks = [{"python": "3.11.7", "packages": {"numpy": version, "ase": "3.29.0"}} for version in ("1.26.4", "2.4.6")]
    a = RunSide("A", older, relaxed_layer, {**PROVENANCE, "scoring": stacks[0]})
    b = RunSide("B", scored, relaxed_layer, {**PROVENANCE, "scoring": stacks[1]}, reference=tmp_path / "reference.extxyz")
    result = compare_runs(a, b)
    assert result.verdict.code == judge.DIFFERS  # as recorded, the statuses differ
    assert "Scoring stacks differ: Scored again here on one stack, 0 structure(s) disagree, against 1 as recorded: " \
           "1 of the difference is the scoring's, 0 the relaxations'." in result.verdict.line
    assert "The scoring stacks differ (numpy 1.26.4 -> 2.4.6)" in result.markdown
    assert "| scoring numpy | 1.26.4 | 2.4.6 |" in result.markdown  # side by side
    unknown = compare_runs(a, RunSide("B", scored, relaxed_layer, {**PROVENANCE, "scoring": stacks[1]}))
    assert "Neither run holds its PBE structures" in unknown.verdict.line
    same = compare_runs(RunSide("A", scored, relaxed_layer, {**PROVENANCE, "scoring": stacks[1]}), b)
    assert "Scoring stacks differ" not in same.verdict.line and same.verdict.code == judge.REPRODUCED


def test_images_rebuilt_on_another_base_are_said_in_the_verdict():
    elsewhere = ["emt ran in umlip-0123d/emt:b, not the recorded umlip-0123d/emt:a (another base image or wheelhouse)"]
    result = compare_runs(side("A", table(), relaxed()), side("B", table(), relaxed()), rebuilt=elsewhere)
    assert result.verdict.code == judge.REPRODUCED
    assert result.verdict.line.startswith(f"REPRODUCED on other images ({elsewhere[0]}): 3 structure(s), identical")
