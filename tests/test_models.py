"""Model images beyond the pipeline's own: each factory loads an explicit checkpoint from
the read-only weights mount, in a worker with no network, and returns finite numbers."""

import io
import json
import tarfile
from pathlib import Path

import docker.errors
import pytest
from ase.build import bulk

from orchestrator.scheduler import Job, container_kwargs, device_slots, prepare_worker_files
from orchestrator.shards import structure_record

pytestmark = pytest.mark.docker

PROTOCOL = {"variant": "paper", "optimizer": "FIRE", "cell_filter": "FrechetCellFilter", "fmax_ev_per_a": 0.04,
            "max_steps": 200, "divergence_limit_ev_per_a": 1e4, "fragmentation_limits_a": {}}


def relax_in_worker(docker_client, image: str, model: str, options: dict, work: Path, weights: Path,
                    atoms) -> list[dict]:
    """Relax `atoms` with the image's entrypoint in a least-privilege worker that sees
    `weights` as /cache; its result lines."""
    shards = work / "shards"
    shards.mkdir(parents=True)
    atoms.info.update(id="x", dimension="3D")
    (shards / "shard-0000.jsonl").write_text(json.dumps(structure_record(atoms)) + "\n")
    job = Job(model=model, image=image, shard=shards / "shard-0000.jsonl", out_dir=work / "out",
              job={"calculator": options.pop("calculator"), "options": options, "protocol": PROTOCOL})
    prepare_worker_files(job)
    job.out.write_text("")
    kwargs = container_kwargs(job, device_slots("cpu", 1, 1)[0], "model-test", weights)
    docker_client.containers.run(remove=True, **kwargs)
    return [json.loads(line) for line in job.out.read_text().splitlines()]


def file_from_image(docker_client, image: str, path: str) -> bytes:
    """A file's bytes out of an image (through the engine's archive API: logs would mangle binary)."""
    container = docker_client.containers.create(image)
    try:
        stream, _ = container.get_archive(path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
            return archive.extractfile(archive.getmembers()[0]).read()
    finally:
        container.remove(force=True)


def test_sevennet_mf_ompa_loads_its_checkpoint_by_path_and_selects_the_fidelity(docker_client, model_image,
                                                                                 tmp_path):
    image = model_image("sevennet-mf-ompa")
    # SevenNet-MF-0, the multi-fidelity checkpoint inside the wheel, stands in for the MF-ompa file:
    # the same loader and modal selection; its fidelities are PBE and R2SCAN (MF-ompa's: mpa, omat24)
    wheel_file = "/opt/venv/lib/python3.11/site-packages/sevenn/pretrained_potentials/SevenNet_MF_0/" \
                 "checkpoint_sevennet_mf_0.pth"
    folder = tmp_path / "weights" / "sevennet-mf-ompa"
    folder.mkdir(parents=True)
    (folder / "checkpoint_sevennet_mf_ompa.pth").write_bytes(file_from_image(docker_client, image, wheel_file))
    checkpoint = "/cache/sevennet-mf-ompa/checkpoint_sevennet_mf_ompa.pth"
    energies = {}
    for modal in ("PBE", "R2SCAN"):
        silicon = bulk("Si", "diamond", 5.50)
        silicon.rattle(0.02, seed=1)
        (result,) = relax_in_worker(docker_client, image, "sevennet-mf-ompa",
                                    {"calculator": "sevennet", "modal": modal, "checkpoint": checkpoint},
                                    tmp_path / modal, tmp_path / "weights", silicon)
        assert result["converged"] and result["failure_reason"] is None, result
        energies[modal] = result["energy_ev"]
    assert abs(energies["PBE"] - energies["R2SCAN"]) > 1e-3  # the fidelity asked for is the one used
    # a fidelity the checkpoint does not have stops the worker before any structure, saying which
    with pytest.raises(docker.errors.ContainerError, match="mpa-typo"):
        relax_in_worker(docker_client, image, "sevennet-mf-ompa",
                        {"calculator": "sevennet", "modal": "mpa-typo", "checkpoint": checkpoint},
                        tmp_path / "typo", tmp_path / "weights", bulk("Si", "diamond", 5.43))


#: A small MACE built with mace's own constructor and saved the way its .model files are
#: (a pickled module), in float64, for the elements of the contract and the sample's first crystals.
MAKE_MACE = r"""
import sys
import numpy as np
import torch
from mace import modules, tools  # first: it lets torch.load read e3nn's own constants
from e3nn import o3

torch.set_default_dtype(torch.float64)
torch.manual_seed(0)
table = tools.AtomicNumberTable(list(range(1, 90)))
block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
model = modules.ScaleShiftMACE(
    r_max=5.0, num_bessel=8, num_polynomial_cutoff=5, max_ell=2, interaction_cls=block,
    interaction_cls_first=block, num_interactions=2, num_elements=len(table),
    hidden_irreps=o3.Irreps("8x0e + 8x1o"), MLP_irreps=o3.Irreps("8x0e"), gate=torch.nn.functional.silu,
    atomic_energies=np.full(len(table), -1.0), avg_num_neighbors=10.0, atomic_numbers=table.zs, correlation=2,
    radial_type="bessel", atomic_inter_scale=0.1, atomic_inter_shift=0.0)
torch.save(model, sys.argv[1])
"""


@pytest.fixture(scope="module")
def mace_weights(docker_client, model_image, tmp_path_factory):
    """A weights cache pre-seeded with a MACE checkpoint made in the image, under the MPA-0 file name."""
    image = model_image("mace-mpa-0")
    cache = tmp_path_factory.mktemp("mace-cache")
    folder = cache / "weights" / "mace-mpa-0"
    folder.mkdir(parents=True)
    docker_client.containers.run(image, ["python", "-c", MAKE_MACE, "/w/mace-mpa-0-medium.model"], remove=True,
                                 network_mode="none", volumes={str(folder): {"bind": "/w", "mode": "rw"}})
    return image, cache


def test_mace_contract_with_a_checkpoint_made_by_mace(docker_client, mace_weights, tmp_path):
    image, cache = mace_weights
    job = Job(model="mace-mpa-0", image=image, shard=tmp_path / "shards" / "shard-0000.jsonl", out_dir=tmp_path,
              job={})
    kwargs = container_kwargs(job, device_slots("cpu", 1, 1)[0], "contract-test", cache / "weights")
    spec = {"calculator": "mace", "device": "cpu", "forces": "conservative",
            "options": {"checkpoint": "/cache/mace-mpa-0/mace-mpa-0-medium.model", "dtype": ""}}
    kwargs["command"] = ["python", "-m", "adapters.contract", "--job", json.dumps(spec)]
    (tmp_path / "shards").mkdir()
    prepare_worker_files(job)
    report = json.loads(docker_client.containers.run(remove=True, **kwargs).decode().strip().splitlines()[-1])
    assert report["passed"], report
    assert all(s["finite"] for s in report["structures"].values())
    assert report["force_deviation_ev_per_a"] < 1e-3 and report["stress_deviation_ev_per_a3"] < 1e-4


def bench_sample(model: str, cache: Path, results: Path, count: int = 1):
    """`make bench MODEL=model DATASET=sample LIMIT=count` with weights pre-seeded under
    cache/weights (no download); the results table, after checking every row relaxed."""
    import pandas as pd

    from conftest import bench

    done = bench("--models", model, "--dataset", "sample", "--limit", str(count), "--set", f"cache_dir={cache}",
                 "--set", "protocol.max_steps=60", results=results)
    table = pd.read_csv(Path(done.stdout.strip().splitlines()[-1]) / "results.csv", keep_default_na=False)
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


#: Orb models with random weights, built by orb-models' own architecture functions and saved as
#: its checkpoints are (a state dict), under each model's file name.
MAKE_ORB = r"""
import sys
import torch
from orb_models.forcefield import pretrained
from orb_models.forcefield.atomic_system import SystemConfig

torch.manual_seed(0)
build = {"orb_v2": lambda: pretrained.orb_v2_architecture(
             device="cpu", system_config=SystemConfig(radius=6.0, max_num_neighbors=20)),
         "orb_v3_conservative_inf_mpa": lambda: pretrained.orb_v3_conservative_architecture(
             device="cpu", system_config=SystemConfig(radius=6.0, max_num_neighbors=120)),
         "orb_v3_direct_inf_mpa": lambda: pretrained.orb_v3_direct_architecture(
             device="cpu", system_config=SystemConfig(radius=6.0, max_num_neighbors=120))}
torch.save(build[sys.argv[1]]().state_dict(), sys.argv[2])
"""


@pytest.mark.parametrize("folder", ["orb-v2", "orb-v3-conservative-inf-mpa", "orb-v3-direct-inf-mpa"])
def test_orb_contract_with_checkpoints_made_by_orb_models(docker_client, model_image, tmp_path, folder):
    from orchestrator.images import discover_models

    model = discover_models()[folder]
    image = model_image(folder)
    weights = tmp_path / "weights" / folder
    weights.mkdir(parents=True)
    checkpoint = model.weights[0]["file"]
    docker_client.containers.run(image, ["python", "-c", MAKE_ORB, model.options["model"], f"/w/{checkpoint}"],
                                 remove=True, network_mode="none", volumes={str(weights): {"bind": "/w", "mode": "rw"}})
    job = Job(model=folder, image=image, shard=tmp_path / "shards" / "shard-0000.jsonl", out_dir=tmp_path, job={})
    (tmp_path / "shards").mkdir()
    prepare_worker_files(job)
    kwargs = container_kwargs(job, device_slots("cpu", 1, 1)[0], "contract-test", tmp_path / "weights")
    spec = {"calculator": "orb", "device": "cpu", "forces": model.forces,
            "options": {**model.options, "checkpoint": f"/cache/{folder}/{checkpoint}"}}
    kwargs["command"] = ["python", "-m", "adapters.contract", "--job", json.dumps(spec)]
    report = json.loads(docker_client.containers.run(remove=True, **kwargs).decode().strip().splitlines()[-1])
    assert report["passed"], report
    assert ("force_deviation_ev_per_a" in report) == (model.forces == "conservative")
    # and through make bench, by its paper tag, with the checkpoint pre-seeded (tmp_path/weights)
    table = bench_sample(model.paper_tag, cache=tmp_path, results=tmp_path / "r")
    assert list(table["model"]) == [folder]
