"""Run shards in model containers, one container per (model, shard), on device slots.

A slot is one worker: a GPU (or the CPU) and a bounded number of CPU threads.
Each container sees only its own GPU, its shard read-only, its results folder
and the weights cache. Progress comes from tailing the JSON-line outputs.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import BenchError
from orchestrator.images import LABEL

SHARDS_MOUNT = "/data/shards"
OUT_MOUNT = "/data/out"
CACHE_MOUNT = "/cache"


@dataclass(frozen=True)
class Slot:
    name: str            # "cpu-0", "gpu0-1", ...
    gpu: str | None      # GPU index as the host names it; None = CPU
    threads: int

    @property
    def device(self) -> str:
        return "cuda" if self.gpu is not None else "cpu"


def query_gpus(fields: str) -> list[str]:
    """One line per GPU from nvidia-smi (e.g. fields="index,name"); empty without a driver."""
    if not shutil.which("nvidia-smi"):
        return []
    listing = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
                             capture_output=True, text=True, check=False)
    return [line.strip() for line in listing.stdout.splitlines() if line.strip()]


def host_gpus() -> list[int]:
    """GPU indices the NVIDIA driver reports; empty when there is none."""
    return [int(line) for line in query_gpus("index") if line.isdigit()]


def device_slots(devices, workers_per_device: int, threads_per_worker: int | None,
                 cpu_count: int | None = None, gpus=host_gpus) -> list[Slot]:
    """Slots for devices = "cpu" | "all" | [gpu indices]."""
    if devices == "cpu":
        owners = [None]
    else:
        owners = gpus() if devices == "all" else list(devices)
        if not owners:
            raise BenchError("devices: all, but nvidia-smi reports no GPU; set devices: cpu "
                             "(GPUS=cpu) or install the NVIDIA driver and container toolkit")
    count = len(owners) * workers_per_device
    threads = threads_per_worker or max(1, (cpu_count or os.cpu_count() or 1) // count)
    return [Slot(name=f"{'cpu' if gpu is None else f'gpu{gpu}'}-{worker}",
                 gpu=None if gpu is None else str(gpu), threads=threads)
            for gpu in owners for worker in range(workers_per_device)]


@dataclass
class Job:
    model: str
    image: str
    shard: Path           # host path of the shard
    out_dir: Path         # host folder of this model's results
    job: dict             # calculator, options, protocol (device is filled per slot)

    @property
    def out(self) -> Path:
        return self.out_dir / f"{self.shard.stem}.jsonl"


def container_name(run_id: str, job: Job) -> str:
    return f"umlip-0123d-{run_id}-{job.model}-{job.shard.stem}"


def container_kwargs(job: Job, slot: Slot, run_id: str, cache_dir: Path) -> dict:
    """Everything docker needs to run one shard on one slot (also used to inspect in tests)."""
    import docker.types

    spec = {**job.job, "device": slot.device}
    threads = str(slot.threads)
    kwargs = {
        "image": job.image,
        "command": ["python", "-m", "adapters.relax", "--job", json.dumps(spec),
                    "--shard", f"{SHARDS_MOUNT}/{job.shard.name}", "--out", f"{OUT_MOUNT}/{job.out.name}"],
        "name": container_name(run_id, job),
        "labels": {f"{LABEL}.run": run_id, f"{LABEL}.model": job.model, f"{LABEL}.slot": slot.name},
        "volumes": {
            str(job.shard.parent): {"bind": SHARDS_MOUNT, "mode": "ro"},
            str(job.out_dir): {"bind": OUT_MOUNT, "mode": "rw"},
            str(cache_dir): {"bind": CACHE_MOUNT, "mode": "rw"},
        },
        # the host user owns what the container writes
        "user": f"{os.getuid()}:{os.getgid()}",
        "environment": {"HOME": "/tmp", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                        "OPENBLAS_NUM_THREADS": threads},
        # the engine refuses a limit above the host's cores
        "nano_cpus": min(slot.threads, os.cpu_count() or 1) * 10**9,
        "working_dir": "/opt/umlip-0123d",
    }
    if slot.gpu is not None:
        kwargs["device_requests"] = [docker.types.DeviceRequest(device_ids=[slot.gpu], capabilities=[["gpu"]])]
    return kwargs


def remove_containers(client, run_id: str) -> None:
    """Stop what an earlier, killed orchestrator of this run left running."""
    for container in client.containers.list(all=True, filters={"label": f"{LABEL}.run={run_id}"}):
        container.remove(force=True)


class Scheduler:
    """Feeds jobs to slots; each slot runs its containers one after another."""

    def __init__(self, client, slots: list[Slot], run_id: str, cache_dir: Path, max_retries: int):
        self.client = client
        self.slots = slots
        self.run_id = run_id
        self.cache_dir = cache_dir
        self.max_retries = max_retries
        self.failures: list[str] = []

    def run(self, jobs: list[Job], on_tick=lambda: None, tick_s: float = 0.5) -> None:
        remove_containers(self.client, self.run_id)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        pending: queue.Queue = queue.Queue()
        for job in jobs:
            pending.put(job)
        stop = threading.Event()
        threads = [threading.Thread(target=self._work, args=(slot, pending, stop), daemon=True)
                   for slot in self.slots]
        for thread in threads:
            thread.start()
        try:
            while any(t.is_alive() for t in threads):
                on_tick()
                time.sleep(tick_s)
            on_tick()
        finally:
            stop.set()
            remove_containers(self.client, self.run_id)

    def _work(self, slot: Slot, pending: queue.Queue, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                job = pending.get_nowait()
            except queue.Empty:
                return
            for attempt in range(self.max_retries + 1):
                if stop.is_set():
                    return
                code = self._run_container(job, slot)
                if code == 0:
                    break
            else:
                self.failures.append(f"{job.model} {job.shard.name}: container exited with code {code} "
                                     f"{self.max_retries + 1} times; see {job.out.with_suffix('.log')}")

    def _run_container(self, job: Job, slot: Slot) -> int:
        job.out_dir.mkdir(parents=True, exist_ok=True)
        container = self.client.containers.run(detach=True, **container_kwargs(job, slot, self.run_id, self.cache_dir))
        try:
            code = container.wait()["StatusCode"]
            with job.out.with_suffix(".log").open("ab") as log:
                log.write(container.logs())
            return code
        finally:
            container.remove(force=True)
