"""Model images beyond the pipeline's own: each factory loads an explicit checkpoint from
the read-only weights mount, in a worker with no network, and returns finite numbers."""

import json
from pathlib import Path

import pytest
from ase.build import bulk

from orchestrator.errors import BenchError
from orchestrator.models import discover_models
from orchestrator.shards import structure_record
from orchestrator.weights import checkpoint_path
from orchestrator.workers.assignments import Assignment, prepare_worker_files, worker_spec
from orchestrator.workers.slots import device_slots
from orchestrator.zoo import make_stand_in, run_contract
from helpers import last_line, protocol, worker_job

pytestmark = pytest.mark.docker

PROTOCOL = protocol(max_steps=200)


def relax_in_worker(engine, image: str, model: str, options: dict, work: Path, weights: Path,
                    atoms) -> list[dict]:
    """Relax `atoms` with the image's entrypoint in a least-privilege worker that sees
    `weights` as /cache; its result lines."""
    shards = work / "shards"
    shards.mkdir(parents=True)
    atoms.info.update(id="x", dimension="3D")
    (shards / "shard-0000.jsonl").write_text(json.dumps(structure_record(atoms)) + "\n")
    assignment = Assignment(model=model, image=image, shards=(shards / "shard-0000.jsonl",), out_dir=work / "out",
                            job=worker_job(options.pop("calculator"), options=options, protocol=PROTOCOL))
    prepare_worker_files(assignment)
    (out,) = assignment.outs
    engine.output(worker_spec(assignment, device_slots("cpu", 1, 1)[0], "model-test", weights))
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_sevennet_mf_ompa_loads_its_checkpoint_by_path_and_selects_the_fidelity(engine, model_image,
                                                                                 tmp_path):
    image = model_image("sevennet-mf-ompa")
    # SevenNet-MF-0, the multi-fidelity checkpoint inside the wheel, stands in for the MF-ompa file:
    # the same loader and modal selection; its fidelities PBE (renamed mpa, model.yaml's) and R2SCAN
    model = discover_models()["sevennet-mf-ompa"]
    assert model.options["modal"] == "mpa"
    stand_in = make_stand_in(engine, image, model, tmp_path / "weights")
    assert stand_in == tmp_path / "weights" / "sevennet-mf-ompa" / "checkpoint_sevennet_mf_ompa.pth"
    assert stand_in.stat().st_size > 0
    checkpoint = "/cache/sevennet-mf-ompa/checkpoint_sevennet_mf_ompa.pth"
    energies = {}
    for modal in ("mpa", "R2SCAN"):
        silicon = bulk("Si", "diamond", 5.50)
        silicon.rattle(0.02, seed=1)
        (result,) = relax_in_worker(engine, image, "sevennet-mf-ompa",
                                    {"calculator": "sevennet", "modal": modal, "checkpoint": checkpoint},
                                    tmp_path / modal, tmp_path / "weights", silicon)
        assert result["converged"] and result["failure_reason"] is None, result
        energies[modal] = result["energy_ev"]
    assert abs(energies["mpa"] - energies["R2SCAN"]) > 1e-3  # the fidelity asked for is the one used
    # a fidelity the checkpoint does not have stops the worker before any structure, at once, saying which
    with pytest.raises(BenchError, match="code 78: .*the model could not be loaded.*mpa-typo"):
        relax_in_worker(engine, image, "sevennet-mf-ompa",
                        {"calculator": "sevennet", "modal": "mpa-typo", "checkpoint": checkpoint},
                        tmp_path / "typo", tmp_path / "weights", bulk("Si", "diamond", 5.43))


def contract_on_its_stand_in(engine, model_image, folder: str, weights: Path, image_of: str | None = None):
    """The model's stand-in checkpoint (make_test_checkpoint of its family: the package's own
    architecture and file format, random weights) made in its image, then its contract there,
    passed; with `image_of`, the image is that folder's. Its model, image and report."""
    model = discover_models()[folder]
    image = model_image(folder)
    if image_of:
        assert image == model_image(image_of)  # no image of its own
    assert make_stand_in(engine, image, model, weights).is_file()
    report = run_contract(engine, image, model, weights, {**model.options, "checkpoint": checkpoint_path(model)})
    assert report["passed"], report
    return model, image, report


def test_dpa_3_1_contract_checks_its_branch(engine, model_image, tmp_path):
    """DPA-3.1-3M runs in the DPA3 image from a multi-task training checkpoint; its stand-in (deepmd's
    get_model and ModelWrapper) has the Omat24 branch and another: the contract checks that the branch
    asked for is the one used and that a name the file lacks is refused."""
    model, image, report = contract_on_its_stand_in(engine, model_image, "dpa-3.1-3m", tmp_path / "weights",
                                                    image_of="dpa3-v1-openlam")
    assert report["head"]["heads"] == ["Omat24", "other"] and report["head"]["unknown_head_refused"]
    # the relaxation entrypoint with that checkpoint and branch, in a least-privilege worker
    silicon = bulk("Si", "diamond", 5.50)
    silicon.rattle(0.02, seed=1)
    (result,) = relax_in_worker(engine, image, "dpa-3.1-3m", {"calculator": "deepmd", **model.options,
                                                              "checkpoint": checkpoint_path(model)},
                                tmp_path / "relax", tmp_path / "weights", silicon)
    assert result["converged"] and result["failure_reason"] is None and result["energy_ev"] is not None, result
    # its file's sha256 is pinned (deepmd's registry): make bench refuses the stand-in, naming both digests
    with pytest.raises(AssertionError, match=r"DPA-3.1-3M.pt: sha256 [0-9a-f]{64}, but .*model.yaml pins 86dd3a80"):
        bench_sample("dpa-3.1", cache=tmp_path, results=tmp_path / "r")


def test_sevennet_omni_contract_checks_the_fidelity_and_benches_by_name(engine, model_image, tmp_path):
    """SevenNet-Omni runs in SevenNet-0's image; the wheel's multi-fidelity checkpoint stands in
    (its PBE fidelity renamed mpa, model.yaml's; and R2SCAN): the contract checks that the chosen
    fidelity is the one used and a wrong one is refused, and `make bench` relaxes by its name."""
    _, _, report = contract_on_its_stand_in(engine, model_image, "sevennet-omni", tmp_path / "weights",
                                            image_of="sevennet-0")
    assert sorted(report["head"]["heads"]) == ["R2SCAN", "mpa"] and report["head"]["unknown_head_refused"]
    assert abs(report["head"]["energy_ev"]["mpa"] - report["head"]["energy_ev"]["R2SCAN"]) > 1e-3
    table = bench_sample("sevennet-omni", cache=tmp_path, results=tmp_path / "r")
    assert list(table["model"]) == ["sevennet-omni"]


def test_uma_contract_checks_its_task_and_batched_forward_and_benches_by_name(engine, model_image, tmp_path):
    """UMA (fairchem-core 2.x): a small UMA made by fairchem's own hydra model and saved as its
    inference checkpoints are; the contract checks that the omat task is the one used (each
    task gives its own energy), that an unknown task is refused, and that the batched forward
    matches the calculator; UMA-m-1p1 runs in the same image; `make bench MODEL=uma` relaxes."""
    _, image, report = contract_on_its_stand_in(engine, model_image, "uma-s-1p1", tmp_path / "weights")
    assert image == model_image("uma-m-1p1")
    head = report["head"]
    assert head["chosen"] == "omat" and set(head["heads"]) == {"oc20", "omat", "omol", "odac", "omc"}
    assert head["unknown_head_refused"] and len({round(e, 6) for e in head["energy_ev"].values()}) == 5
    assert set(report["batched_deviation"]) == {"energy_ev_per_atom", "force_ev_per_a", "stress_ev_per_a3"}
    table = bench_sample("uma", cache=tmp_path, results=tmp_path / "r")
    assert list(table["model"]) == ["uma-s-1p1"]
    record = json.loads(next((tmp_path / "r").glob("*/provenance.json")).read_text())
    assert record["models"]["uma-s-1p1"]["options"] == {"task": "omat", "inference_settings": "batch"}


@pytest.mark.parametrize("folder", ["chgnet", "sevennet-0"])
def test_contract_with_the_weights_inside_the_wheel_and_the_batched_forward(engine, model_image, tmp_path,
                                                                            folder):
    model = discover_models()[folder]
    (tmp_path / "weights").mkdir()
    report = run_contract(engine, model_image(folder), model, tmp_path / "weights", model.options)
    assert report["passed"], report
    # both have a batched forward (CHGNet's graph batching, SevenNet's collated graphs): checked
    # on the three structures at once against the calculator one structure at a time
    assert report["batched_deviation"]["force_ev_per_a"] <= 1e-3, report


@pytest.fixture(scope="module")
def mace_weights(engine, model_image, tmp_path_factory):
    """A weights cache pre-seeded with a MACE checkpoint made in the image by mace's own constructor
    (adapters.calculators.mace.make_test_checkpoint), under the MPA-0 file name."""
    image = model_image("mace-mpa-0")
    cache = tmp_path_factory.mktemp("mace-cache")
    make_stand_in(engine, image, discover_models()["mace-mpa-0"], cache / "weights")
    return image, cache


def test_mace_contract_with_a_checkpoint_made_by_mace(engine, mace_weights, tmp_path):
    image, cache = mace_weights
    model = discover_models()["mace-mpa-0"]
    report = run_contract(engine, image, model, cache / "weights",
                          {"checkpoint": "/cache/mace-mpa-0/mace-mpa-0-medium.model", "dtype": ""})
    assert report["passed"], report
    assert all(s["finite"] for s in report["structures"].values())
    assert report["force_deviation_ev_per_a"] < 1e-3 and report["stress_deviation_ev_per_a3"] < 1e-4


def bench_sample(model: str, cache: Path, results: Path, count: int = 1):
    """`make bench MODEL=model DATASET=sample LIMIT=count` with weights pre-seeded under
    cache/weights (no download); the results table, after checking every row relaxed."""
    import pandas as pd

    from helpers import NO_REPORT, bench

    done = bench("--models", model, "--dataset", "sample", "--limit", str(count), "--set", f"cache_dir={cache}",
                 "--set", "protocol.max_steps=60", *NO_REPORT, results=results)
    table = pd.read_csv(Path(last_line(done)) / "results.csv", keep_default_na=False)
    assert len(table) == count and set(table["failure_reason"]) <= {"", "not_converged"}
    assert table["energy_ev"].astype(float).notna().all() and table["max_force_ev_per_a"].astype(float).notna().all()
    return table


def test_make_bench_model_mace_relaxes_with_the_preseeded_checkpoint(mace_weights, tmp_path):
    _, cache = mace_weights
    table = bench_sample("mace", cache=cache, results=tmp_path / "r", count=2)
    assert list(table["model"]) == ["mace-mpa-0"] * 2
    run_dir = next((tmp_path / "r").iterdir())
    provenance = json.loads((run_dir / "provenance.json").read_text())["models"]["mace-mpa-0"]
    assert provenance["paper_tag"] == "MACE"
    assert set(provenance["weights"]) == {"mace-mpa-0-medium.model"}
    assert provenance["packages"]["mace-torch"] == "0.3.16"


@pytest.mark.parametrize("folder", ["mace-mh-1", "mace-omat-0"])
def test_current_mace_models_in_the_mace_image_with_their_heads(engine, model_image, tmp_path, folder):
    """MACE-MH-1 (its omat_pbe head) and MACE-OMAT-0 run in MACE-MPA-0's image; MH-1's stand-in
    is multi-head (mace's own constructor), and the contract checks that the chosen head is
    the one used (its energy differs from the other head's) and that a wrong name is refused."""
    model, image, report = contract_on_its_stand_in(engine, model_image, folder, tmp_path / "weights",
                                                    image_of="mace-mpa-0")
    if folder == "mace-mh-1":
        head = report["head"]
        assert head["chosen"] == "omat_pbe" and head["heads"] == ["omat_pbe", "other"]
        assert abs(head["energy_ev"]["omat_pbe"] - head["energy_ev"]["other"]) > 1e-3
        assert head["unknown_head_refused"]
        with pytest.raises(BenchError, match=r"head 'omol' is not in .*mace-mh-1.model; its heads: omat_pbe, other"):
            run_contract(engine, image, model, tmp_path / "weights",
                         {**model.options, "head": "omol", "checkpoint": checkpoint_path(model)})
    else:
        assert "head" not in report
    table = bench_sample(folder, cache=tmp_path, results=tmp_path / "r")
    assert list(table["model"]) == [folder]
    record = json.loads(next((tmp_path / "r").glob("*/provenance.json")).read_text())
    assert record["models"][folder]["groups"] == ["current", "all"]
    assert record["models"][folder]["options"] == model.options and record["models_requested"] == [folder]


# Checked by `make test-zoo` only, to keep CI from cold under 45 min: eqV2 and eSEN (their image compiles
# torch_scatter: 5 min here), Nequix (its JAX image, 7.1 GB), M3GNet (torch 2.2.1 and dgl, 6.8 GB) and
# GRACE-2L/3L (TensorFlow 2.20, 8.0 GB): images that bring a CUDA stack of their own, 2-3 min to build each
#: Model folders whose contract runs in a test of its own here, and what that test checks too.
OWN_TEST = {
    "emt": "no weights: the pipeline tests relax with it",
    "chgnet": "the weights inside its wheel, and its batched forward",
    "sevennet-0": "the weights inside its wheel, and its batched forward",
    "sevennet-mf-ompa": "its checkpoint by path, and the fidelity",
    "sevennet-omni": "the fidelity, and bench by name",
    "dpa-3.1-3m": "its branch of a multi-task checkpoint",
    "uma-s-1p1": "its task and batched forward, and bench by name",
    "mace-mpa-0": "a checkpoint made by mace, and make bench",
    "mace-mh-1": "its head, in MACE-MPA-0's image",
    "mace-omat-0": "its head, in MACE-MPA-0's image",
}
#: Model folders whose image only `make test-zoo` builds (CI from cold stays under 45 minutes), and why.
ZOO_ONLY = {
    "m3gnet": "its own CUDA stack (torch 2.2.1 for dgl)",
    "grace-2l-oam": "its own TensorFlow stack",
    "grace-3l-oam-l": "GRACE-2L's TensorFlow image",
    "nequix-oam-1": "its own JAX image, 7.3 GB",
    "eqv2-m-omat-salex-mp": "its own fairchem 1.x stack",
    "esen-30m-oam": "eqV2's fairchem 1.x image",
    "uma-m-1p1": "UMA-s's image, whose contract runs here (the same factory and stand-in)",
    "orb-v3-conservative-inf-omat": "the paper's ORB-v3 conservative (inf-mpa) image, factory and options but the "
                                    "checkpoint's name, whose contract runs here",
}


@pytest.mark.parametrize("folder", sorted(discover_models()))
def test_contract_and_bench_with_checkpoints_made_by_the_models_package(engine, model_image, tmp_path,
                                                                        folder):
    if folder in OWN_TEST:
        pytest.skip(f"its own test here: {OWN_TEST[folder]}")
    if folder in ZOO_ONLY:
        pytest.skip(f"make test-zoo only: {ZOO_ONLY[folder]}")
    model, _, report = contract_on_its_stand_in(engine, model_image, folder, tmp_path / "weights")
    assert ("force_deviation_ev_per_a" in report) == (model.forces == "conservative")
    # and through make bench, by its paper tag (or first alias), with the checkpoint pre-seeded (tmp_path/weights)
    table = bench_sample(model.paper_tag or model.aliases[0], cache=tmp_path, results=tmp_path / "r")
    assert list(table["model"]) == [folder]
