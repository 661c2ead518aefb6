"""The container entrypoint, run in-process with ASE's EMT (no Docker needed)."""

import json

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT

from adapters.relax import alignment_and_mask, finished_ids, main, relax, relax_record
from orchestrator.shards import structure_record

PROTOCOL = {"optimizer": "FIRE", "cell_filter": "FrechetCellFilter", "fmax_ev_per_a": 0.04,
            "max_steps": 500, "divergence_limit_ev_per_a": 1e4}


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


class Exploding(Calculator):
    """Forces that grow without bound, like a diverging model."""
    implemented_properties = ["energy", "forces", "stress"]

    def __init__(self, value=1e5):
        super().__init__()
        self.value = value

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        forces = np.full((len(atoms), 3), self.value)
        self.results = {"energy": -1.0, "forces": forces, "stress": np.zeros(6)}


def test_diverging_model_is_stopped_and_named():
    result = relax(bulk("Cu", cubic=True), Exploding(), PROTOCOL, "abc")
    assert result["failure_reason"] == "diverged" and not result["converged"]


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
    job = {"calculator": "emt", "device": "cpu", "options": {}, "protocol": PROTOCOL}
    return main(["--job", json.dumps(job), "--shard", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "out.jsonl")])


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
    assert finished_ids(tmp_path / "out.jsonl") == {"Cu", "Si", "Al"}
    run(tmp_path)
    ids = [json.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(ids) == ["Al", "Cu", "Ni", "Si"]


def test_structure_that_killed_the_worker_is_recorded_not_retried(tmp_path):
    structures = [labelled(bulk(el, cubic=True), el, "3D") for el in ("Cu", "Al")]
    write_shard(tmp_path / "in.jsonl", structures)
    (tmp_path / "out.inflight").write_text("Cu")  # as left by a worker that segfaulted on Cu
    run(tmp_path)
    lines = {r["id"]: r for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    assert lines["Cu"]["failure_reason"] == "model_error" and "died" in lines["Cu"]["error"]
    assert lines["Al"]["converged"]
    assert not (tmp_path / "out.inflight").exists()


def test_unknown_optimizer_lists_the_choices():
    with pytest.raises(ValueError, match="FIRE"):
        relax(bulk("Cu"), EMT(), {**PROTOCOL, "optimizer": "Adam"}, "abc")


def test_unknown_calculator_family_lists_the_choices():
    from adapters.calculators import make_calculator

    with pytest.raises(ValueError, match="chgnet"):
        make_calculator("mace-typo", "cpu", {})
