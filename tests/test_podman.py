"""Podman as a workstation's engine, for a machine without Docker: its Docker-compatible API
service (`podman system service`), found through DOCKER_HOST. `make bench` builds with it and
its workers are Podman containers, with the Docker engine's results; `make doctor` names it."""

import json
import os
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.errors import BenchError

from helpers import NO_REPORT, bench, emt_dataset, last_line, make

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def podman_socket(podman, tmp_path_factory):
    """Podman's API service on a socket of the test's own, where a user's systemd would put it
    (XDG_RUNTIME_DIR/podman/podman.sock, XDG_RUNTIME_DIR standing for a folder of the test's),
    stopped at the end."""
    socket = tmp_path_factory.mktemp("runtime") / "podman" / "podman.sock"
    socket.parent.mkdir()
    service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{socket}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not socket.is_socket():
        assert service.poll() is None and time.monotonic() < deadline, "podman system service did not start"
        time.sleep(0.1)
    yield f"unix://{socket}"
    service.terminate()
    service.wait(timeout=60)


def podman_holds(*images: str) -> None:
    """Put images of the Docker engine into Podman's store, as a registry would (none here)."""
    missing = [image for image in images
               if subprocess.run(["podman", "image", "exists", image], capture_output=True).returncode]
    if missing:
        save = subprocess.Popen(["docker", "save", *missing], stdout=subprocess.PIPE)
        subprocess.run(["podman", "load", "-q"], stdin=save.stdout, check=True, capture_output=True)
        assert save.wait() == 0


def podman_forgets(tag: str) -> None:
    """Remove every image Podman holds under `tag`, whatever registry it put before the name."""
    listing = subprocess.run(["podman", "images", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True,
                             text=True, check=True).stdout.split()
    for name in listing:
        if name == tag or name.endswith("/" + tag):
            subprocess.run(["podman", "rmi", "-f", name], capture_output=True, check=True)


def containers_started(engine: str, since: str, run_key: str) -> list[str]:
    """Names of the containers `engine` (docker or podman) started since then for a run folder."""
    until = ["--until", "0s"] if engine == "docker" else ["--stream=false"]  # up to now, then end
    listing = subprocess.run([engine, "events", "--since", since, *until, "--filter", "event=start",
                              "--format", "{{json .}}"], capture_output=True, text=True, check=True).stdout.splitlines()
    names = []
    for line in listing:
        event = json.loads(line)
        name = event.get("Name") or event.get("Actor", {}).get("Attributes", {}).get("name", "")
        if run_key in name:
            names.append(name)
    return names


def test_make_bench_and_doctor_with_podman_as_the_engine(podman_socket, builder, model_image, tmp_path):
    from orchestrator.workers.assignments import run_key

    podman_holds(builder.base_image("3.11"), builder.runtime())
    podman_forgets(model_image("emt"))  # Podman builds the model's image itself
    dataset = tmp_path / "emt.extxyz"
    emt_dataset(dataset)
    on_docker = Path(last_line(bench("--models", "emt", "--dataset", str(dataset), *NO_REPORT,
                                     results=tmp_path / "docker")))

    since = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    env = {**os.environ, "DOCKER_HOST": podman_socket, "UMLIP_RESULTS_DIR": str(tmp_path / "podman"),
           "UMLIP_REPORT": "false"}
    done = make("bench", "MODEL=emt", f"DATASET={dataset}", "GPUS=cpu", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"building {model_image('emt')}" in done.stderr
    run_dir = Path(last_line(done))
    columns = [c for c in pd.read_csv(run_dir / "results.csv").columns if c not in ("wall_s", "finished_at")]
    on_podman = pd.read_csv(run_dir / "results.csv", keep_default_na=False)[columns]
    pd.testing.assert_frame_equal(on_podman, pd.read_csv(on_docker / "results.csv", keep_default_na=False)[columns])
    assert json.loads((run_dir / "provenance.json").read_text())["host"]["engine"].startswith("Podman ")

    key = run_key(run_dir)
    assert containers_started("podman", since, key)  # the run's workers, Podman's
    assert containers_started("docker", since, key) == []

    doctor = make("doctor", "MODEL=emt", "GPUS=cpu", env={**env, "COLUMNS": "300"})
    assert "container engine: Podman" in doctor.stderr and f"at DOCKER_HOST={podman_socket}" in doctor.stderr
    assert "workers: Podman containers on this machine" in doctor.stderr


def test_a_machine_with_podman_alone_finds_its_service(podman_socket, monkeypatch):
    import docker

    from orchestrator.workers.docker import DockerEngine

    def no_docker():
        raise docker.errors.DockerException("no Docker here")

    monkeypatch.setattr(docker, "from_env", no_docker)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(Path(podman_socket.removeprefix("unix://")).parent.parent))
    engine = DockerEngine()
    assert engine.name() == "Podman" and engine.where == podman_socket
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/nowhere")
    if not Path("/run/podman/podman.sock").is_socket():  # root's service, where it runs
        with pytest.raises(BenchError, match="cannot reach a container engine .*podman system service"):
            DockerEngine()
