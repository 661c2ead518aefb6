"""The relaxation process (adapters.relax), run in-process with ASE's EMT (no Docker needed)."""

import json

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT

from adapters.frames import alignment_and_mask
from adapters.relax import finished_ids, main, relax, relax_record, reset_vacuum
from orchestrator.shards import structure_record
from helpers import protocol, worker_job

PROTOCOL = protocol(max_steps=500)


def labelled(atoms, sid, dimension):
    atoms.info.update(id=sid, dimension=dimension)
    return atoms


def test_mask_keeps_vacuum_fixed_in_2d():
    slab = fcc111("Al", (2, 2, 3), vacuum=8.0)
    rotation, mask = alignment_and_mask(slab.cell[:], "ab")
    assert np.allclose(rotation, np.eye(3))
    assert mask.tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 0]]


def test_mask_for_wire_along_a_relaxes_only_the_axis():
    rotation, mask = alignment_and_mask(np.diag([4.0, 15.0, 15.0]), "a")
    assert mask.tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert alignment_and_mask(np.eye(3) * 15, "")[1] is None


def test_tilted_slab_relaxes_like_the_upright_one_and_keeps_its_vacuum_vector():
    slab = fcc111("Al", (2, 2, 3), vacuum=8.0)
    slab.rattle(0.05, seed=3)
    tilted = slab.copy()
    tilted.rotate(30, "x", rotate_cell=True)
    upright = relax(slab.copy(), EMT(), PROTOCOL, "ab")
    turned = relax(tilted.copy(), EMT(), PROTOCOL, "ab")
    assert upright["converged"] and turned["converged"]
    assert turned["steps"] == upright["steps"]
    assert turned["energy_ev"] == pytest.approx(upright["energy_ev"], abs=1e-8)
    assert np.allclose(turned["cell"][2], tilted.cell[2], atol=1e-8)  # vacuum vector untouched


def test_molecule_cell_never_changes():
    mol = molecule("CO")
    mol.center(vacuum=8.0)
    mol.positions[0, 2] += 0.1
    result = relax(mol.copy(), EMT(), PROTOCOL, "")
    assert result["converged"]
    assert np.allclose(result["cell"], mol.cell[:])


def test_not_converged_when_steps_run_out():
    atoms = bulk("Cu", cubic=True)
    atoms.rattle(0.2, seed=1)
    result = relax(atoms, EMT(), {**PROTOCOL, "max_steps": 2}, "abc")
    assert (result["converged"], result["failure_reason"], result["steps"]) == (False, "not_converged", 2)


AUTHORS = {**PROTOCOL, "variant": "authors", "fragmentation_limits_a": {"2D": 7.5, "1D": 12.5, "0D": 20.0}}


class Exploding(Calculator):
    """Forces that grow without bound, like a diverging model; with calm_after, none after
    that many evaluations (a relaxation that goes on, and ends at once)."""
    implemented_properties = ["energy", "forces", "stress"]

    def __init__(self, value=1e5, calm_after=None):
        super().__init__()
        self.value = value
        self.calm_after = calm_after
        self.evaluations = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        calm = self.calm_after is not None and self.evaluations >= self.calm_after
        self.evaluations += 1
        forces = np.full((len(atoms), 3), 0.0 if calm else self.value)
        self.results = {"energy": -1.0, "forces": forces, "stress": np.zeros(6)}


def test_diverging_model_is_stopped_and_named():
    result = relax(bulk("Cu", cubic=True), Exploding(), PROTOCOL, "abc")
    assert result["failure_reason"] == "diverged" and not result["converged"]


@pytest.mark.parametrize("protocol", [PROTOCOL, AUTHORS], ids=["paper", "authors"])
@pytest.mark.parametrize("axes", ["abc", ""])
def test_divergence_is_the_force_magnitude_not_a_component(protocol, axes):
    # (7000, 7000, 7000) eV/Å: every component below 10,000, the magnitude 12,124 above it,
    # where the paper ("the force exceeded 10,000 eV/Å") and the authors' code stop at step 0
    atoms = bulk("Cu", cubic=True) if axes else molecule("CO", vacuum=8.0, pbc=True)
    result = relax(atoms, Exploding(7000.0), protocol, axes)
    assert (result["failure_reason"], result["steps"]) == ("diverged", 0)
    below = relax(atoms.copy(), Exploding(5000.0, calm_after=1), protocol, axes)  # |F| = 8,660, then none
    assert below["failure_reason"] is None and below["steps"] > 0


def test_nan_and_exceptions_become_model_error_records():
    record = structure_record(labelled(bulk("Cu", cubic=True), "x", "3D"))
    nan = relax_record(record, Exploding(np.nan), PROTOCOL)
    assert nan["failure_reason"] == "model_error" and "non-finite" in nan["error"]
    unknown = structure_record(labelled(bulk("Si"), "si", "3D"))  # EMT has no Si parameters
    failed = relax_record(unknown, EMT(), PROTOCOL)
    assert failed["failure_reason"] == "model_error" and failed["id"] == "si"


def write_shard(path, structures):
    path.write_text("".join(json.dumps(structure_record(a)) + "\n" for a in structures))


def run(tmp_path):
    job = worker_job(protocol=PROTOCOL)
    return main(["--job", job.to_json(), "--shard", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "out.jsonl")])


def test_shard_with_a_bad_structure_finishes_and_resumes_without_repeats(tmp_path):
    good = [labelled(bulk(el, cubic=True), el, "3D") for el in ("Cu", "Al", "Ni")]
    for atoms in good:
        atoms.rattle(0.03, seed=2)
    write_shard(tmp_path / "in.jsonl", [good[0], labelled(bulk("Si"), "Si", "3D"), *good[1:]])
    assert run(tmp_path) == 0
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in lines] == ["Cu", "Si", "Al", "Ni"]
    assert [r["failure_reason"] for r in lines] == [None, "model_error", None, None]
    # a torn last line (worker killed mid-write) is dropped and that structure redone
    text = (tmp_path / "out.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "out.jsonl").write_text("".join(text[:3]) + text[3][:20])
    assert finished_ids(tmp_path / "out.jsonl", {"Cu", "Si", "Al", "Ni"}) == {"Cu", "Si", "Al"}
    run(tmp_path)
    ids = [json.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(ids) == ["Al", "Cu", "Ni", "Si"]


def test_an_interrupted_structure_is_relaxed_again(tmp_path):
    structures = [labelled(bulk(el, cubic=True), el, "3D") for el in ("Cu", "Al")]
    write_shard(tmp_path / "in.jsonl", structures)
    (tmp_path / "out.inflight").write_text("Cu")  # as left by a worker stopped from outside
    run(tmp_path)
    lines = {r["id"]: r for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    assert lines["Cu"]["converged"] and lines["Al"]["converged"]
    assert (tmp_path / "out.inflight").read_text() == ""  # nothing in flight any more


def test_structure_that_killed_two_workers_is_recorded_not_retried(tmp_path):
    structures = [labelled(bulk(el, cubic=True), el, "3D") for el in ("Cu", "Al")]
    write_shard(tmp_path / "in.jsonl", structures)
    (tmp_path / "out.crashed").write_text("Cu\n")  # one worker died on Cu: it is tried again
    (tmp_path / "out.jsonl").write_text("")
    from adapters.wire import crash_counts

    assert crash_counts(tmp_path / "out.jsonl") == {"Cu": 1}
    (tmp_path / "out.crashed").write_text("Cu\nCu\n")  # a second one died on it
    run(tmp_path)
    lines = {r["id"]: r for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    assert lines["Cu"]["failure_reason"] == "model_error" and "died 2 times" in lines["Cu"]["error"]
    assert lines["Al"]["converged"]


def test_a_worker_that_cannot_write_exits_with_its_own_code(tmp_path):
    write_shard(tmp_path / "in.jsonl", [labelled(bulk("Cu", cubic=True), "Cu", "3D")])
    (tmp_path / "out.jsonl").mkdir()  # not writable as a file, like a full or read-only disk
    from adapters.wire import CANNOT_WRITE

    assert run(tmp_path) == CANNOT_WRITE


def test_unknown_optimizer_lists_the_choices():
    with pytest.raises(ValueError, match="FIRE"):
        relax(bulk("Cu"), EMT(), {**PROTOCOL, "optimizer": "Adam"}, "abc")


def test_unknown_calculator_family_lists_the_choices():
    from adapters.calculators import make_calculator

    with pytest.raises(ValueError, match="chgnet"):
        make_calculator("mace-typo", "cpu", {})


# ---- the authors' protocol ----------------------------------------------------------



def emt_structures():
    """A rattled EMT structure of every dimensionality, as Alexandria stores them."""
    cluster = Atoms("Cu4", positions=[[0, 0, 0], [2.5, 0, 0], [1.25, 2.2, 0], [1.25, 0.7, 2.0]])
    cluster.center(vacuum=8.0)
    wire = Atoms("Cu2", positions=[[0, 0, 0], [0.3, 0.2, 2.4]], cell=[16.0, 16.0, 5.0])
    wire.center(vacuum=8.0, axis=(0, 1))
    slab = fcc111("Al", (2, 2, 2), vacuum=8.0)
    crystal = bulk("Cu", cubic=True)
    out = {"": cluster, "c": wire, "ab": slab, "abc": crystal}
    for k, atoms in enumerate(out.values()):
        atoms.pbc = True
        atoms.rattle(0.08, seed=k)
    return out


@pytest.mark.parametrize("axes", ["", "c", "ab", "abc"])
def test_authors_cycles_end_converged_at_fmax(axes, monkeypatch):
    import adapters.relax as entry

    monkeypatch.setattr(entry, "AUTHORS_CYCLE_STEPS", 4)  # short cycles: several are needed
    result = relax(emt_structures()[axes], EMT(), AUTHORS, axes)
    assert result["converged"] and result["failure_reason"] is None
    assert 1 < result["cycles"] <= entry.AUTHORS_CYCLES
    assert result["steps"] <= 4 * result["cycles"]
    assert result["max_force_ev_per_a"] < AUTHORS["fmax_ev_per_a"]  # accepted at fmax, not fmax/2


def test_authors_cycles_stop_at_fifteen_and_accept_at_fmax(monkeypatch):
    import adapters.relax as entry

    monkeypatch.setattr(entry, "AUTHORS_CYCLE_STEPS", 1)
    atoms = bulk("Cu", cubic=True)
    atoms.rattle(0.2, seed=1)
    result = relax(atoms, EMT(), AUTHORS, "abc")
    assert result["cycles"] == 15 and result["steps"] == 15
    assert (result["converged"], result["failure_reason"]) == (False, "not_converged")


def test_authors_reset_the_vacuum_of_layers_and_wires():
    structures = emt_structures()
    layer = structures["ab"].copy()
    reset_vacuum(layer, 2, None)
    z = layer.positions[:, 2]
    assert np.allclose(layer.cell[2], [0, 0, np.ptp(z) + 15.0])  # c orthogonal, thickness + 15 Å
    assert z.mean() == pytest.approx(layer.cell[2][2] / 2)  # centred
    wire = structures["c"].copy()
    reset_vacuum(wire, 1, None)
    cell, pos = wire.cell.array, wire.positions
    side = 15.0 + np.linalg.norm(pos[:, :2] - pos[:, :2].mean(axis=0), axis=1).max()
    assert np.allclose(cell[:2], [[side, 0, 0], [-side / 2, side * np.sqrt(3) / 2, 0]])  # hexagonal
    assert cell[2][:2] == pytest.approx([0, 0])


def test_authors_report_the_structure_followed_from_the_start_in_the_pbe_vacuum():
    slab = emt_structures()["ab"]
    slab.positions[:, 2] -= slab.positions[:, 2].mean() - 1.0  # stored across the boundary, as Alexandria may
    slab.wrap()
    result = relax(slab.copy(), EMT(), AUTHORS, "ab")
    assert result["converged"] and result["cycles"] >= 1
    assert np.allclose(result["cell"][2], slab.cell[2])  # the PBE vacuum vector, not the reset box
    moved = np.linalg.norm(np.array(result["positions"]) - slab.positions, axis=1)
    assert moved.max() < 0.5  # neither re-centred (a rigid ~8 Å) nor wrapped by the resets
    wire = emt_structures()["c"]
    result = relax(wire.copy(), EMT(), AUTHORS, "c")
    assert np.allclose(np.array(result["cell"])[:2], wire.cell[:2])  # not the hexagonal box
    across = np.array(result["positions"])[:, :2] - wire.positions[:, :2]  # the vacuum directions
    assert np.abs(across).max() < 0.3
    assert result["wire_split_by_reset"] is False


def test_authors_fail_a_wire_their_hexagonal_reset_splits():
    # a 3.6 Å Cu wire centred in a 22.2 Å square cell: their adjust_vacuum_1D centres it at
    # the square's middle, which lies on the edge of their hexagonal cell, and wraps it in two
    positions = [[i * 1.805, j * 1.805, k * 1.805] for i in range(3) for j in range(3) for k in range(2)
                 if (i + j + k) % 2 == 0]
    wire = Atoms("Cu9", positions=positions, cell=[22.2, 22.2, 3.61], pbc=True)
    wire.positions[:, :2] += 11.1 - wire.positions[:, :2].mean(axis=0)
    result = relax(wire.copy(), EMT(), AUTHORS, "c")
    assert (result["failure_reason"], result["cycles"], result["wire_split_by_reset"]) == ("fragmented_width", 1, True)
    spans = np.ptp(np.array(result["positions"])[:, :2], axis=0)
    assert spans.max() < 5.0  # the wire itself stayed whole
    assert relax(wire.copy(), EMT(), PROTOCOL, "c")["converged"]  # the paper's text relaxes it


def test_authors_frame_for_a_wire_along_a_relaxes_like_along_c():
    wire = emt_structures()["c"]
    order = [2, 0, 1]  # the wire periodic along a (x): lattice vectors and Cartesian axes permuted
    along_a = Atoms(wire.numbers, positions=wire.positions[:, order], cell=wire.cell.array[order][:, order],
                    pbc=True)
    along_c = relax(wire.copy(), EMT(), AUTHORS, "c")
    turned = relax(along_a, EMT(), AUTHORS, "a")
    assert (turned["steps"], turned["cycles"]) == (along_c["steps"], along_c["cycles"])
    assert turned["energy_ev"] == pytest.approx(along_c["energy_ev"], abs=1e-8)
    assert np.linalg.norm(turned["cell"][0]) == pytest.approx(np.linalg.norm(along_c["cell"][2]))


def test_authors_stop_a_layer_that_thickens_past_one_and_a_half_limits():
    slab = fcc111("Al", (2, 2, 2), vacuum=15.0)
    slab.pbc = True
    slab.positions[0, 2] += 12.0  # thicker than 1.5 x 7.5 Å before the first cycle
    result = relax(slab, EMT(), AUTHORS, "ab")
    assert (result["converged"], result["failure_reason"], result["steps"]) == (False, "fragmented_thickness", 0)


def test_default_variant_is_the_papers_text():
    atoms = emt_structures()["abc"]
    assert relax(atoms.copy(), EMT(), PROTOCOL, "abc") == relax(atoms.copy(), EMT(), {**PROTOCOL, "variant": "paper"},
                                                                "abc")
    with pytest.raises(ValueError, match="protocol variant"):
        relax(atoms.copy(), EMT(), {**PROTOCOL, "variant": "mine"}, "abc")


def test_max_force_is_what_the_convergence_test_saw_cell_included():
    strained = bulk("Cu", "fcc", 3.9, cubic=True)  # no force on any atom, a large stress
    result = relax(strained, EMT(), {**PROTOCOL, "max_steps": 1}, "abc")
    assert result["max_atom_force_ev_per_a"] < 1e-8
    assert result["max_force_ev_per_a"] > PROTOCOL["fmax_ev_per_a"]
    assert result["failure_reason"] == "not_converged"


class Slow(EMT):
    """EMT that takes its time, like a large model on a small CPU."""

    def calculate(self, *args, **kwargs):
        import time

        time.sleep(0.05)
        super().calculate(*args, **kwargs)


def test_a_structure_over_the_time_limit_is_a_timeout_and_the_next_one_runs(tmp_path):
    rattled = bulk("Cu", cubic=True)
    rattled.rattle(0.2, seed=1)
    record = structure_record(labelled(rattled, "slow", "3D"))
    result = relax_record(record, Slow(), PROTOCOL, timeout_s=0.3)
    assert (result["failure_reason"], result["converged"]) == ("timeout", False)
    assert "0.3 s" in result["error"] and 0.3 <= result["wall_s"] < 2.0
    assert result["steps"] >= 1  # the steps it made are kept (the audit found 0 recorded)
    assert relax_record(record, EMT(), PROTOCOL, timeout_s=60)["converged"]  # the alarm is gone


# ---- the contract check of a model image --------------------------------------------

class GPaStress(EMT):
    """EMT with its stress in GPa, the unit slip the contract must catch."""

    def calculate(self, *args, **kwargs):
        super().calculate(*args, **kwargs)
        if "stress" in self.results:
            self.results["stress"] = self.results["stress"] * 160.21766


def test_the_contract_passes_a_conservative_model_and_catches_a_stress_in_gpa(monkeypatch):
    import adapters.contract as contract

    report = contract.check({"calculator": "emt", "options": {}, "forces": "conservative"})
    assert report["passed"] and set(report["structures"]) == {"bulk Cu", "graphene layer", "water molecule"}
    assert report["force_deviation_ev_per_a"] < 1e-4 and report["stress_deviation_ev_per_a3"] < 1e-6
    monkeypatch.setattr(contract, "make_calculator", lambda *args: GPaStress())
    report = contract.check({"calculator": "emt", "options": {}, "forces": "conservative"})
    assert not report["passed"] and report["stress_deviation_ev_per_a3"] > 1e-3
    from adapters.batched import each_with_calculator

    monkeypatch.setattr(contract, "make_evaluator", lambda *args: each_with_calculator(GPaStress()))
    assert contract.check({"calculator": "emt", "options": {}, "forces": "direct"})["passed"]  # no gradient check


def test_the_contract_catches_a_batched_forward_that_disagrees_with_the_calculator(monkeypatch):
    import adapters.contract as contract
    from adapters.batched import each_with_calculator

    report = contract.check({"calculator": "emt", "options": {}, "forces": "conservative"})
    assert report["batched_deviation"]["force_ev_per_a"] < 1e-12  # EMT's batched forward: one EMT per structure
    plain = each_with_calculator(EMT())
    monkeypatch.setattr(contract, "make_evaluator",
                        lambda *args: lambda frames: [(e, 1.01 * f, s) for e, f, s in plain(frames)])
    report = contract.check({"calculator": "emt", "options": {}, "forces": "conservative"})
    assert not report["passed"] and report["batched_deviation"]["force_ev_per_a"] > 1e-3



@pytest.mark.slow
@pytest.mark.parametrize("variant", ["paper", "authors"])
@pytest.mark.parametrize("cell_filter", ["FrechetCellFilter", "UnitCellFilter"])
def test_the_filter_is_evaluated_once_a_step_and_every_result_is_bitwise_ases(variant, cell_filter, monkeypatch):
    """The engine's cell filters against ASE's own classes (what the engine used before):
    the same results to the bit, the filter's forces computed a third as often."""
    import ase.filters
    from ase._4.optimize.cellutil import CellUtility

    import adapters.relax as entry

    calls = [0]
    for name in ("get_forces_frechet", "get_forces_unitcellfilter"):
        def counted(*args, _original=getattr(CellUtility, name), **kwargs):
            calls[0] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(CellUtility, name, counted)
    protocol = {**(AUTHORS if variant == "authors" else PROTOCOL), "cell_filter": cell_filter}

    def relax_all():
        calls[0] = 0
        return {axes: (relax(atoms, EMT(), protocol, axes), atoms) for axes, atoms in emt_structures().items()}, calls[0]

    with monkeypatch.context() as ase_own:
        ase_own.setitem(entry.CELL_FILTERS, cell_filter, getattr(ase.filters, cell_filter))
        before, before_calls = relax_all()
    after, after_calls = relax_all()
    steps = 0
    for axes, (result, atoms) in after.items():
        assert result == before[axes][0], axes  # steps, energy, max forces, positions, cell: every bit
        assert np.array_equal(atoms.positions, before[axes][1].positions)
        assert np.array_equal(atoms.cell[:], before[axes][1].cell[:])
        steps += result["steps"] if axes else 0  # (0D relaxes without a cell filter)
    assert steps > 20
    assert before_calls >= 3 * steps  # ASE: for the step, the log and the convergence test
    assert after_calls <= steps + 2 * (entry.AUTHORS_CYCLES + 1) * 3  # once a step, and at each filter's start and end
