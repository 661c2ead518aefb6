"""Slots: where workers run on this machine (a device, its threads, memory and process
limits), one worker at a time per slot."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from orchestrator.errors import BenchError


@dataclass(frozen=True)
class Slot:
    name: str            # "cpu-0", "gpu0-1", ...
    gpu: str | None      # GPU index as the host names it; None = CPU
    threads: int
    memory_bytes: int = 0  # the worker's memory limit; 0 = none
    pids: int = 4096       # the worker's limit on processes and threads

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


def host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def device_slots(devices, workers_per_device: int | None, threads_per_worker: int | None,
                 cpu_count: int | None = None, gpus=host_gpus, memory_gb: float | None = None,
                 pids: int = 4096, batched: bool = False) -> list[Slot]:
    """Slots for devices = "cpu" | "all" | [gpu indices]: workers_per_device per device
    (None: one per core on the CPU for the sequential engine, since ASE's per-step Python
    and the cell filter are serial work; one per GPU, and one for the CPU too when
    `batched`: a batch keeps the model's threads busy), each with threads_per_worker
    threads (None: the cores shared equally), memory_gb (None: the host's memory shared
    equally) and at most `pids` processes and threads."""
    if devices == "cpu":
        owners = [None]
    else:
        present = gpus()
        owners = present if devices == "all" else list(devices)
        if not owners:
            raise BenchError("devices: all, but nvidia-smi reports no GPU; set devices: cpu "
                             "(GPUS=cpu) or install the NVIDIA driver and container toolkit")
        absent = [gpu for gpu in owners if gpu not in present]
        if absent:
            raise BenchError(f"devices: GPU {', '.join(map(str, absent))} not found (nvidia-smi reports "
                             f"{', '.join(map(str, present)) or 'no GPU'}); set GPUS to those, or cpu")
    cores = cpu_count or os.cpu_count() or 1
    workers_per_device = workers_per_device or (cores if devices == "cpu" and not batched else 1)
    count = len(owners) * workers_per_device
    threads = threads_per_worker or max(1, cores // count)
    memory = int(memory_gb * 1024**3) if memory_gb else host_memory_bytes() // count
    return [Slot(name=f"{'cpu' if gpu is None else f'gpu{gpu}'}-{worker}",
                 gpu=None if gpu is None else str(gpu), threads=threads, memory_bytes=memory, pids=pids)
            for gpu in owners for worker in range(workers_per_device)]
