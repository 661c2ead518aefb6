"""The Docker engine: the only module of the tool that imports the Docker SDK (DockerEngine),
and the backend that runs workers on this machine's devices (DockerBackend).

DockerBackend runs one container per (model, shard) on device slots; with the batched
engine one container per (model, slot) relaxes that slot's share of the shards as one
queue, so its batch stays full from the first shard to the last. A slot is one worker:
a GPU (or the CPU) and a bounded number of CPU threads. Progress comes from tailing the
JSON-line outputs.

Containers carry two labels: the run folder's key (a hash of its absolute path, so two
results folders with the same data never touch each other's containers) and this
orchestrator's own id. Only the holder of the run folder's lock removes what a killed
orchestrator of that folder left behind.
"""

from __future__ import annotations

import io
import json
import os
import queue
import tarfile
import threading
import time
import uuid
from pathlib import Path

from adapters.wire import KILLED_FROM_OUTSIDE, WORKDIR
from orchestrator import runfolder
from orchestrator.errors import BenchError
from orchestrator.workers.assignments import Assignment, prepare_worker_files, run_key, worker_failures, worker_spec
from orchestrator.workers.slots import Slot, device_slots
from orchestrator.workers.spec import LABEL, SCRATCH_MOUNT, SCRATCH_OPTIONS, SHM_BYTES, WorkerSpec


def sdk_options(spec: WorkerSpec) -> dict:
    """The Docker SDK's arguments for a spec (see workers.spec for what they grant)."""
    import os

    import docker.types

    options = {
        "image": spec.image, "command": spec.command, "labels": spec.labels,
        "volumes": {m.source: {"bind": m.target, "mode": m.mode} for m in spec.mounts},
        "environment": spec.environment, "user": spec.user, "network_mode": "none", "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"], "read_only": True, "tmpfs": {SCRATCH_MOUNT: SCRATCH_OPTIONS},
        "shm_size": SHM_BYTES, "pids_limit": spec.pids, "working_dir": WORKDIR,
        "nano_cpus": min(spec.threads, os.cpu_count() or 1) * 10**9,  # the engine refuses more than the host has
    }
    if spec.name:
        options["name"] = spec.name
    if spec.memory_bytes:
        options["mem_limit"] = spec.memory_bytes
    if spec.gpu is not None:
        options["device_requests"] = [docker.types.DeviceRequest(device_ids=[spec.gpu], capabilities=[["gpu"]])]
    return options


def engine_lost(exc: BaseException) -> bool:
    """An error of the connection to the Docker engine (the SDK's requests errors are
    OSErrors too, and must not read as a full disk)."""
    import requests

    return isinstance(exc, requests.exceptions.RequestException)


def podman_sockets() -> list[str]:
    """Where Podman's Docker-compatible API service listens by default (`podman system service`,
    or systemd's podman.socket): the user's own, then root's."""
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    return [f"unix://{path}" for path in (f"{runtime_dir}/podman/podman.sock", "/run/podman/podman.sock")
            if Path(path).is_socket()]


def connect():
    """A client of the engine, and where it was found: DOCKER_HOST's (Docker's or Podman's),
    else Docker's own socket, else Podman's API service at its default socket, for a machine
    with Podman alone."""
    import docker

    try:
        client = docker.from_env()
        client.ping()
        return client, (f"DOCKER_HOST={os.environ['DOCKER_HOST']}" if os.environ.get("DOCKER_HOST")
                        else "the default socket")
    except Exception as exc:  # the SDK raises several types for "no engine"
        failure = exc
    for socket in ([] if os.environ.get("DOCKER_HOST") else podman_sockets()):
        try:
            client = docker.DockerClient(base_url=socket)
            client.ping()
            return client, socket
        except Exception:
            continue
    raise BenchError(f"cannot reach a container engine ({failure}); start Docker (`dockerd &` or `systemctl start "
                     "docker`), or Podman's API service (`systemctl --user start podman.socket`, or `podman system "
                     "service --time=0 &`, with DOCKER_HOST at its socket), and check that this user may use it")


class DockerEngine:
    """The container engine, as the tool uses it: Docker, or Podman through its
    Docker-compatible API (the same calls; `name` says which)."""

    def __init__(self, client=None):
        self.client, self.where = (client, "") if client else connect()

    def name(self) -> str:
        """"Podman" or "Docker", as the engine names itself."""
        components = self.client.version().get("Components") or []
        return "Podman" if any(c.get("Name", "").startswith("Podman") for c in components) else "Docker"

    def version(self) -> str:
        return self.client.version().get("Version", "")

    def runtimes(self) -> dict:
        return self.client.info().get("Runtimes", {})

    def image_id(self, tag: str) -> str | None:
        """The image's id, or None when the engine does not hold it."""
        import docker.errors

        try:
            return self.client.images.get(tag).id
        except docker.errors.ImageNotFound:
            return None

    def image_size(self, tag: str) -> int:
        return self.client.images.get(tag).attrs["Size"]

    def images_on_disk(self) -> int:
        """Bytes every image of the engine takes, layers shared between images counted once."""
        return self.client.df()["LayersSize"]

    def image_digests(self, tag: str) -> list[str]:
        """The registry digests the engine knows for an image (none for a locally built one)."""
        return list(self.client.images.get(tag).attrs.get("RepoDigests") or [])

    def save_image(self, tag: str, path: Path) -> None:
        """`docker save` of one image into a tar archive."""
        with path.open("wb") as out:
            for chunk in self.client.images.get(tag).save(named=True):
                out.write(chunk)

    def export_files(self, tag: str, out) -> None:
        """The image's files as one tar stream, written to `out`: `docker export` of a container
        created from it and never started."""
        container = self.client.containers.create(tag, command=["true"], network_disabled=True)
        try:
            for chunk in container.export():
                out.write(chunk)
        finally:
            container.remove(force=True)

    def image_environment(self, tag: str) -> list[str]:
        """The image's environment, NAME=value lines (its ENV instructions)."""
        return list(self.client.images.get(tag).attrs["Config"].get("Env") or [])

    def load_image(self, path: Path, image_id: str, tag: str) -> None:
        """`docker load` of an archive from elsewhere (a received bundle) as exactly the image
        `image_id`, then tagged `tag`: the names the archive carries are never applied (they
        could repoint any image this engine holds), an archive of another image is refused,
        and so is a `tag` that already names another image here."""
        named = archive_image_ids(path)
        if named != [image_id]:
            raise BenchError(f"{path}: holds image {', '.join(named) or 'none'}, not the recorded {image_id}: "
                             "not loaded (the bundle was altered)")
        held = self.image_id(tag)
        if held not in (None, image_id):
            raise BenchError(f"{path}: {tag} already names image {held} here, not the bundle's {image_id}: not "
                             f"retagged; remove that tag (docker rmi {tag}) if you want the bundle's image")
        reader, writer = os.pipe()
        copier = threading.Thread(target=_copy_without_names, args=(path, writer), daemon=True)
        copier.start()
        with os.fdopen(reader, "rb") as stream:
            loaded = self.client.images.load(iter(lambda: stream.read(1 << 20), b""))
        copier.join()
        ids = {image.id for image in loaded}
        if ids != {image_id}:
            for other in ids - {image_id}:
                self.remove_image(other)
            raise BenchError(f"{path}: loaded as {', '.join(sorted(ids)) or 'nothing'}, not the recorded {image_id}: "
                             "the bundle was altered")
        repository, version = tag.rsplit(":", 1)
        self.client.images.get(image_id).tag(repository, version)

    def labelled_images(self, label: str) -> dict[str, dict]:
        """Id -> labels of every image that carries `label` (`key` or `key=value`)."""
        return {image.id: image.labels for image in self.client.images.list(filters={"label": label})}

    def remove_image(self, ref: str) -> None:
        import docker.errors

        try:
            self.client.images.remove(ref, force=True)
        except docker.errors.ImageNotFound:  # went with an image removed before it
            pass

    def prune_builds(self) -> None:
        self.client.api.prune_builds(all=True)

    def build(self, context: Path, tag: str, args: dict, labels: dict):
        """The build's messages: {"stream": text} or {"error": text}."""
        yield from self.client.api.build(path=str(context), tag=tag, buildargs=args, rm=True, forcerm=True,
                                         labels=labels, decode=True)

    def output(self, spec: WorkerSpec) -> str:
        """Run the spec's container to its end; its output. One that fails is a BenchError
        with its exit code and the end of its error output."""
        import docker.errors

        try:
            return self.client.containers.run(remove=True, **sdk_options(spec)).decode()
        except docker.errors.ContainerError as exc:
            error = (exc.stderr or b"").decode(errors="replace").strip().splitlines()[-5:]
            raise BenchError(f"{spec.image}: `{' '.join(spec.command[:3])} ...` exited with code {exc.exit_status}: "
                             + " / ".join(error)) from None

    def start(self, spec: WorkerSpec):
        """A running container of the spec: logs(stream=True, follow=True), wait(), kill(), remove()."""
        return self.client.containers.run(detach=True, **sdk_options(spec))

    def containers(self, label: str, value: str) -> list:
        return self.client.containers.list(all=True, filters={"label": f"{LABEL}.{label}={value}"})

    def remove_containers(self, label: str, value: str) -> None:
        """Remove every container whose label `label` has `value`."""
        for container in self.containers(label, value):
            container.remove(force=True)

    def kill(self, container) -> None:
        """Kill a container, paused or not; nothing if it ended meanwhile."""
        import docker.errors

        try:
            container.reload()
            if container.status == "paused":  # the engine kills no paused container
                container.unpause()
            container.kill()
        except docker.errors.APIError:
            pass


def archive_image_ids(path: Path) -> list[str]:
    """The ids of the images a `docker save` archive holds, from its manifest.json."""
    try:
        with tarfile.open(path) as tar:
            manifest = json.load(tar.extractfile("manifest.json"))
        return [f"sha256:{Path(entry['Config']).name.removesuffix('.json')}" for entry in manifest]
    except (tarfile.TarError, KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise BenchError(f"{path}: not an image archive (no readable manifest.json: {exc})") from None


def _copy_without_names(source: Path, fd: int) -> None:
    """The archive into a pipe, less every name it gives its images: the repositories file,
    manifest.json's RepoTags and index.json's name annotations."""
    names = ("io.containerd.image.name", "org.opencontainers.image.ref.name")
    try:
        with os.fdopen(fd, "wb") as sink, tarfile.open(source) as src, tarfile.open(fileobj=sink, mode="w|") as out:
            for member in src:
                if member.name == "repositories":
                    continue
                if member.name in ("manifest.json", "index.json"):
                    record = json.load(src.extractfile(member))
                    for entry in record if isinstance(record, list) else record.get("manifests", []):
                        entry.pop("RepoTags", None)
                        for name in names:
                            (entry.get("annotations") or {}).pop(name, None)
                    data = json.dumps(record).encode()
                    member.size = len(data)
                    out.addfile(member, io.BytesIO(data))
                else:
                    out.addfile(member, src.extractfile(member) if member.isfile() else None)
    except BrokenPipeError:  # the engine stopped reading: its error is the one to report
        pass


class DockerBackend:
    """Feeds assignments to slots; each slot runs its containers one after another. An
    assignment whose container cannot be created, or that ends unfinished, is recorded in
    `failures` with the reason, and the slot goes on with the next one."""

    def __init__(self, engine: DockerEngine, slots: list[Slot], run_dir: Path, weights_dir: Path, max_retries: int):
        self.engine = engine
        self.slots = slots
        self.run_key = run_key(run_dir)
        self.owner = uuid.uuid4().hex[:12]
        self.weights_dir = weights_dir
        self.max_retries = max_retries
        self.failures: list[str] = []

    def provenance(self) -> dict:
        return {"backend": "docker"}

    def stop_leftovers(self, models: list[str]) -> None:
        """Remove the containers that a killed orchestrator of this run folder left, before
        the host reads and tidies their result files."""
        self.engine.remove_containers("run", self.run_key)

    def run(self, assignments: list[Assignment], on_tick=lambda: None, tick_s: float = 0.5) -> None:
        self.engine.remove_containers("run", self.run_key)  # left by a killed orchestrator of this folder
        pending: queue.Queue = queue.Queue()
        for assignment in assignments:
            pending.put(assignment)
        stop = threading.Event()
        threads = [threading.Thread(target=self._work, args=(slot, pending, stop), daemon=True) for slot in self.slots]
        for thread in threads:
            thread.start()
        try:
            while any(t.is_alive() for t in threads):
                on_tick()
                time.sleep(tick_s)
            on_tick()
        finally:
            stop.set()
            self.engine.remove_containers("owner", self.owner)

    def _work(self, slot: Slot, pending: queue.Queue, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                assignment = pending.get_nowait()
            except queue.Empty:
                return
            try:
                self._run_assignment(assignment, slot, stop)
            except Exception as exc:  # the engine refused: record why, keep the queue moving
                self.failures.append(f"{assignment.model} {assignment.name} on {slot.name}: "
                                     f"{type(exc).__name__}: {exc}")

    def _run_assignment(self, assignment: Assignment, slot: Slot, stop: threading.Event) -> None:
        """Run the assignment's container to its end; start it again when it was killed
        from outside (up to max_retries times in a row without a new result)."""
        lost = 0
        while True:
            written = sum(out.stat().st_size for out in assignment.outs if out.exists())
            code, log_text = self._run_container(assignment, slot)
            if stop.is_set():
                return
            if code in KILLED_FROM_OUTSIDE and lost < self.max_retries:
                grew = sum(out.stat().st_size for out in assignment.outs if out.exists()) > written
                lost = 0 if grew else lost + 1
                continue
            self.failures += worker_failures(assignment, code, log_text)
            return

    def _run_container(self, assignment: Assignment, slot: Slot) -> tuple[int, str]:
        """(exit code, output) of one container run of the assignment; its output is
        streamed into the assignment's .log as it comes, so a killed run keeps its log."""
        prepare_worker_files(assignment)
        (self.weights_dir / assignment.model).mkdir(parents=True, exist_ok=True)  # mounted even when empty
        container = self.engine.start(worker_spec(assignment, slot, self.run_key, self.weights_dir, self.owner))
        try:
            with runfolder.open_append(assignment.log) as log:
                start = log.tell()
                for chunk in container.logs(stream=True, follow=True):
                    log.write(chunk)
                    log.flush()
            with assignment.log.open("rb") as log:
                log.seek(start)
                return container.wait()["StatusCode"], log.read().decode(errors="replace")
        finally:
            container.remove(force=True)


def for_plan(plan, docker: DockerEngine) -> tuple[DockerBackend, list[Slot]]:
    """The Docker backend of a run plan, and its slots: this machine's devices."""
    s = plan.settings
    slots = device_slots(s.devices, s.workers_per_device, s.threads_per_worker, memory_gb=s.worker_memory_gb,
                         pids=s.worker_pids, batched=plan.engine == "batched")
    return DockerBackend(docker, slots, plan.run_dir, plan.cache.weights, s.max_worker_retries), slots
