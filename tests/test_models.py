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
