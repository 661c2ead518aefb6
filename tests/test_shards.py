"""How a run's structures are cut into shards (orchestrator.shards.cut, RunPlan.shard_sizes):
at least one shard per slot, never more than shard_size structures in one, the atoms shared
out, the same cut for the same inputs, and a run folder's cut kept when it resumes."""

import json

import pytest
from ase import Atoms

from orchestrator.errors import BenchError
from orchestrator.models import REPO
from orchestrator.manifest import load
from orchestrator.run.plan import RunPlan, RunSettings
from orchestrator.shards import cut, read_ids, write_shards


def test_every_slot_gets_a_shard_when_there_are_enough_structures():
    assert cut([1, 1, 1], shard_size=100, slots=2) == [2, 1]
    assert len(cut([1] * 50, shard_size=100, slots=2)) == 2        # the sample on two cores
    assert cut([1], shard_size=100, slots=8) == [1]                 # fewer structures than slots
    assert cut([], shard_size=100, slots=2) == []


def test_shard_size_stays_the_upper_bound():
    sizes = cut([1] * 250, shard_size=100, slots=2)
    assert len(sizes) == 3 and sum(sizes) == 250 and max(sizes) <= 100
    many = cut(list(range(1, 1001)), shard_size=7, slots=4)          # atoms growing along the data
    assert sum(many) == 1000 and max(many) <= 7 and min(many) >= 1 and len(many) == 143


def test_the_atoms_are_shared_out():
    atoms = [2] * 30 + [40] * 10                                     # small molecules first, then crystals
    sizes = cut(atoms, shard_size=100, slots=2)
    first = sum(atoms[:sizes[0]])
    assert sizes == [35, 5] and first == 260 and sum(atoms) - first == 200
    assert cut(atoms, shard_size=100, slots=2) == sizes              # the same inputs, the same cut


def plan_for(run_dir, structures, shard_size=100):
    settings = RunSettings.from_manifest(load(REPO / "benchmark.yaml", {"shard_size": shard_size}))
    return RunPlan(settings=settings, models=[], dataset=None, structures=structures,
                   subset_key="all", protocol={}, engine="ase", run_dir=run_dir, cache=None)


def molecules(count):
    return [Atoms("H2", positions=[[5, 5, 5], [5, 5, 5.74]], cell=[10, 10, 10], info={"id": f"m{k}", "dimension": "0D"})
            for k in range(count)]


def test_a_run_folder_keeps_the_cut_it_started_with(tmp_path):
    structures = molecules(3)
    sizes = plan_for(tmp_path, structures).shard_sizes(slots=2)
    assert sizes == [2, 1]
    assert json.loads((tmp_path / "sharding.json").read_text())["sizes"] == sizes
    # resumed on a machine with one slot, or with another shard_size: the same shards
    assert plan_for(tmp_path, structures, shard_size=1).shard_sizes(slots=1) == sizes
    paths = write_shards(structures, tmp_path / "shards", sizes)
    assert [read_ids(p) for p in paths] == [["m0", "m1"], ["m2"]]


def test_a_folder_from_before_the_cut_was_recorded_keeps_its_fixed_size_shards(tmp_path):
    (tmp_path / "sharding.json").write_text(json.dumps({"shard_size": 2}) + "\n")
    assert plan_for(tmp_path, molecules(5)).shard_sizes(slots=2) == [2, 2, 1]


def test_a_reproduction_cuts_as_its_bundle_did(tmp_path):
    plan = plan_for(tmp_path, molecules(4))
    plan.sharding = {"shard_size": 100, "slots": 4, "sizes": [1, 1, 1, 1]}
    assert plan.shard_sizes(slots=1) == [1, 1, 1, 1]


def test_a_recorded_cut_that_does_not_fit_the_run_is_refused(tmp_path):
    (tmp_path / "sharding.json").write_text(json.dumps({"shard_size": 100, "sizes": [2, 2]}) + "\n")
    with pytest.raises(BenchError, match="sharding.json: its shards hold 4 structures, the run 3"):
        plan_for(tmp_path, molecules(3)).shard_sizes(slots=2)
