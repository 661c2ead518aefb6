"""Run shards in model containers, one container per (model, shard), on device slots;
with the batched engine one container per (model, slot) relaxes that slot's share of the
shards as one queue, so its batch stays full from the first shard to the last.

A slot is one worker: a GPU (or the CPU) and a bounded number of CPU threads.
Each container sees only its own GPU, its shards read-only, its shards' result files
and the weights cache. Progress comes from tailing the JSON-line outputs.

Containers carry two labels: the run folder's key (a hash of its absolute path, so
two results folders with the same data never touch each other's containers) and
this orchestrator's own id. Only the holder of the run folder's lock removes what a
killed orchestrator of that folder left behind.

A worker that dies on its own while relaxing a structure (a segfault, the engine's
out-of-memory killer) has that structure appended to `<shard>.crashed`; the worker
records a structure as `model_error` once it has crashed CRASHES_TO_FAIL workers
(adapters.relax). A
worker stopped from outside (Ctrl-C, SIGTERM, `docker kill`, the orchestrator killed)
or one that could not write its results leaves no mark: the structure is relaxed again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import queue
import shutil
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from adapters.relax import CANNOT_WRITE, crash_list_path, id_lines, in_flight_path, read_id_lines
from orchestrator.errors import BenchError
from orchestrator.images import LABEL

SHARDS_MOUNT = "/data/shards"
OUT_MOUNT = "/data/out"
CACHE_MOUNT = "/cache"


#: A container's user when the orchestrator runs as root: never root inside.
UNPRIVILEGED_UID = 65534
SCRATCH_MOUNT = "/tmp"


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


@dataclass
class Job:
    model: str
    image: str
    shards: tuple[Path, ...]  # host paths of the shards one container relaxes
    out_dir: Path             # host folder of this model's results
    job: dict                 # calculator, options, protocol (device is filled per slot)

    def out(self, shard: Path) -> Path:
        return self.out_dir / f"{shard.stem}.jsonl"

    @property
    def outs(self) -> list[Path]:
        return [self.out(shard) for shard in self.shards]

    @property
    def name(self) -> str:
        """Its shards, for messages: shard-0003, or shard-0000 to shard-0039 (40 shards)."""
        first, last = self.shards[0].stem, self.shards[-1].stem
        return first if len(self.shards) == 1 else f"{first} to {last} ({len(self.shards)} shards)"

    @property
    def log(self) -> Path:
        """The container's output, beside its first shard's results."""
        return self.out(self.shards[0]).with_suffix(".log")


def one_job_per_slot(jobs: list[Job], slots: int) -> list[Job]:
    """The batched engine's jobs: each model's shards split into `slots` runs of
    consecutive shards, one container each (a model with fewer shards gets fewer)."""
    merged = []
    for model in dict.fromkeys(job.model for job in jobs):
        same = [job for job in jobs if job.model == model]
        shards = [shard for job in same for shard in job.shards]
        size = -(-len(shards) // slots)
        merged += [Job(model=model, image=same[0].image, shards=tuple(shards[k:k + size]), out_dir=same[0].out_dir,
                       job=same[0].job) for k in range(0, len(shards), size)]
    return merged


#: Exit codes of a worker killed from outside (SIGKILL, SIGTERM): not the structure's fault.
KILLED_FROM_OUTSIDE = (137, 143)


def run_key(run_dir: Path) -> str:
    """12 hex digits naming a run folder among every folder on this engine."""
    return hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]


def container_name(run_key: str, job: Job) -> str:
    return f"umlip-0123d-{run_key}-{job.model}-{job.shards[0].stem}"


def worker_files(job: Job) -> dict[str, tuple[Path, str]]:
    """The only host files a worker may touch, by their path inside the container: its
    shards' outputs and in-flight markers (read-write) and crash lists (read-only)."""
    files = {}
    for out in job.outs:
        files.update({f"{OUT_MOUNT}/{out.name}": (out, "rw"),
                      f"{OUT_MOUNT}/{in_flight_path(out).name}": (in_flight_path(out), "rw"),
                      f"{OUT_MOUNT}/{crash_list_path(out).name}": (crash_list_path(out), "ro")})
    return files


def worker_user() -> tuple[int, int]:
    """The host user, unless that is root: then an unprivileged one."""
    return (os.getuid(), os.getgid()) if os.getuid() else (UNPRIVILEGED_UID, UNPRIVILEGED_UID)


def prepare_worker_files(job: Job) -> None:
    """Create the files a worker mounts (a missing one would be mounted as a folder), hand
    the writable ones to the worker's user, and empty the in-flight markers: a worker that
    dies before it names a structure (while starting, say, for too little memory) must
    not blame the one an interrupted run left named there. Never follows a symbolic link
    (the orchestrator may be root): one planted in the run folder is refused."""
    job.out_dir.mkdir(parents=True, exist_ok=True)
    uid, gid = worker_user()
    markers = {in_flight_path(out) for out in job.outs}
    for path, mode in worker_files(job).values():
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if path in markers else os.O_APPEND)
        try:
            handle = os.open(path, flags, 0o644)
        except OSError as exc:
            if path.is_symlink():
                raise BenchError(f"{path}: a symbolic link in the run folder; remove it "
                                 "(the orchestrator never follows links there)") from None
            raise exc
        try:
            if mode == "rw" and os.getuid() == 0:
                os.fchown(handle, uid, gid)
        finally:
            os.close(handle)


def container_kwargs(job: Job, slot: Slot, run_key: str, cache_dir: Path, owner: str = "") -> dict:
    """Everything docker needs to run a job's shards on one slot (also used to inspect in tests).

    Least privilege: no network, not root, no capabilities, no privilege escalation, a
    read-only root filesystem with a tmpfs for scratch, the shards and the model's own
    weights folder (never another model's) read-only, only the job's own output files
    writable, bounded memory and pids, and never the Docker socket. Downloads happen on
    the host, before.
    """
    import docker.types

    spec = {**job.job, "device": slot.device}
    volumes = {str(job.shards[0].parent): {"bind": SHARDS_MOUNT, "mode": "ro"},
               str(cache_dir / job.model): {"bind": f"{CACHE_MOUNT}/{job.model}", "mode": "ro"}}  # its own weights only
    volumes.update({str(path): {"bind": inside, "mode": mode} for inside, (path, mode) in worker_files(job).items()})
    kwargs = {
        "image": job.image,
        "command": ["python", "-m", "adapters.relax", "--job", json.dumps(spec),
                    *[arg for shard in job.shards for arg in
                      ("--shard", f"{SHARDS_MOUNT}/{shard.name}", "--out", f"{OUT_MOUNT}/{job.out(shard).name}")]],
        "name": container_name(run_key, job),
        "labels": {f"{LABEL}.run": run_key, f"{LABEL}.owner": owner, f"{LABEL}.model": job.model,
                   f"{LABEL}.slot": slot.name},
        "volumes": volumes,
        **least_privilege(),
        "pids_limit": slot.pids,
        "environment": {"HOME": SCRATCH_MOUNT, "XDG_CACHE_HOME": f"{SCRATCH_MOUNT}/cache",
                        "MPLCONFIGDIR": f"{SCRATCH_MOUNT}/matplotlib", **worker_threading(slot.threads)},
        # the engine refuses a limit above the host's cores
        "nano_cpus": min(slot.threads, os.cpu_count() or 1) * 10**9,
        "working_dir": "/opt/umlip-0123d",
    }
    if slot.memory_bytes:
        kwargs["mem_limit"] = slot.memory_bytes
    if slot.gpu is not None:
        kwargs["device_requests"] = [docker.types.DeviceRequest(device_ids=[slot.gpu], capabilities=[["gpu"]])]
    return kwargs


#: /dev/shm of a worker: what a single-process worker may need for semaphores and buffers.
SHM_BYTES = 64 * 1024**2


def least_privilege() -> dict:
    """The Docker SDK options every container of the tool runs with: not root, no network,
    no capabilities, no privilege escalation, a read-only root with a bounded scratch
    tmpfs, and a bounded /dev/shm (the engine mounts it nosuid, nodev, noexec)."""
    uid, gid = worker_user()
    return {"user": f"{uid}:{gid}", "network_mode": "none", "cap_drop": ["ALL"], "security_opt": ["no-new-privileges"],
            "read_only": True, "tmpfs": {SCRATCH_MOUNT: "rw,nosuid,nodev,size=4g,mode=1777"}, "shm_size": SHM_BYTES}


def worker_threading(threads: int) -> dict[str, str]:
    """The threading environment of a worker with `threads` CPU threads. numpy's BLAS is
    single-threaded: ASE's cell filter does tiny matrix functions every step, many times
    slower threaded. The model's own threads (OpenMP in torch, MKL; GRACE sets
    TensorFlow's from OMP_NUM_THREADS) get the slot's, and none of them spins while it waits: a spinning thread whose sibling
    is starved (a busy machine, a shared node) turns every parallel region into a wait
    (4-9x slower measured with one other busy process on two cores)."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": "1",
            "OMP_WAIT_POLICY": "PASSIVE",  # GNU and LLVM OpenMP (torch's CPU wheels): sleep, do not spin
            "KMP_BLOCKTIME": "0"}          # Intel OpenMP (MKL builds): sleep at once after a region


def remove_containers(client, label: str, value: str) -> None:
    """Remove every container whose label `label` has `value`."""
    for container in client.containers.list(all=True, filters={"label": f"{LABEL}.{label}={value}"}):
        container.remove(force=True)


class RunLock:
    """An exclusive lock on a run folder for one orchestrator; the kernel releases it when
    the process dies, however it dies."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"

    def __enter__(self) -> "RunLock":
        self.handle = self.path.open("a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "another process"
            self.handle.close()
            raise BenchError(f"{self.path.parent}: another bench is running on this run folder ({holder}); "
                             "wait for it to finish, or give this one another results_dir") from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"pid {os.getpid()}\n")
        self.handle.flush()
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()


def record_crash(job: Job) -> None:
    """After a worker died on its own: append the structures it was relaxing (the in-flight
    markers: one, or a batch of them, one a line) to their shards' crash lists."""
    for out in job.outs:
        in_flight = in_flight_path(out)
        ids = read_id_lines(in_flight.read_text()) if in_flight.exists() and not in_flight.is_symlink() else []
        if ids:
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
            with os.fdopen(os.open(crash_list_path(out), flags, 0o644), "a") as handle:
                handle.write(id_lines(ids))


#: What one container run may write to its log on the host; the rest is dropped, with a note.
LOG_CAP_BYTES = 64 * 1024**2


def output_cap(job: Job) -> int:
    """Bytes the job's result files may hold: a result line is about the size of its
    structure's shard line (positions and cell) plus a few numbers, an error and a short
    traceback, so twice the shards plus 16 kB a structure is room enough for honest
    results and a bound on a worker that writes without end."""
    return sum(2 * shard.stat().st_size + 16384 * shard.read_bytes().count(b"\n")
               for shard in job.shards if shard.exists())


def results_size(job: Job) -> int:
    """Bytes in the job's result files: grows with every structure finished."""
    return sum(out.stat().st_size for out in job.outs if out.exists())


def heartbeat(job: Job) -> int:
    """The newest touch of the job's in-flight markers (ns): a worker touches them while
    its relaxations make steps (adapters.relax.Heartbeat)."""
    return max((in_flight_path(out).stat().st_mtime_ns for out in job.outs if in_flight_path(out).exists()),
               default=0)


class Scheduler:
    """Feeds jobs to slots; each slot runs its containers one after another. A job whose
    container cannot be created or run is recorded in `failures` with the reason, and the
    slot goes on with the next job."""

    def __init__(self, client, slots: list[Slot], run_dir: Path, cache_dir: Path, max_retries: int,
                 stall_timeout_s: float = 1800.0):
        self.client = client
        self.stall_timeout_s = stall_timeout_s
        self.slots = slots
        self.run_key = run_key(run_dir)
        self.owner = uuid.uuid4().hex[:12]
        self.cache_dir = cache_dir
        self.max_retries = max_retries
        self.failures: list[str] = []

    def provenance(self) -> dict:
        return {"backend": "docker"}

    def stop_leftovers(self, models: list[str]) -> None:
        """Remove the containers that a killed orchestrator of this run folder left, before
        the host reads and tidies their result files."""
        remove_containers(self.client, "run", self.run_key)

    def run(self, jobs: list[Job], on_tick=lambda: None, tick_s: float = 0.5) -> None:
        """Run every job; the caller holds the run folder's RunLock."""
        remove_containers(self.client, "run", self.run_key)  # left by a killed orchestrator of this folder
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
            remove_containers(self.client, "owner", self.owner)

    def _work(self, slot: Slot, pending: queue.Queue, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                job = pending.get_nowait()
            except queue.Empty:
                return
            try:
                self._run_job(job, slot, stop)
            except Exception as exc:  # the engine refused: record why, keep the queue moving
                self.failures.append(f"{job.model} {job.name} on {slot.name}: {type(exc).__name__}: {exc}")

    def _run_job(self, job: Job, slot: Slot, stop: threading.Event) -> None:
        """Run the job's container until its shards are done. One that dies is rerun; the
        job is given up after max_retries + 1 deaths in a row without a new result, so a
        job of many shards survives as many crashes as it has structures that cause
        them (each one ends as model_error after CRASHES_TO_FAIL of them)."""
        fruitless = 0
        while fruitless <= self.max_retries:
            if stop.is_set():
                return
            written = results_size(job)
            code, out_of_memory, stalled = self._run_container(job, slot)
            if code == 0 or stop.is_set():
                return
            if stalled:
                self.failures.append(f"{job.model} {job.name}: no step and no new result for "
                                     f"{self.stall_timeout_s:g} s: the worker was stopped and its shard resumed")
            if code == CANNOT_WRITE:
                self.failures.append(f"{job.model} {job.name}: the worker cannot write its results "
                                     f"(disk full or folder read-only); see {job.log}")
                return
            size, cap = results_size(job), output_cap(job)
            if size > cap:
                self.failures.append(f"{job.model} {job.name}: the worker wrote {size} bytes of results, more than "
                                     f"the {cap} its shards can need; it was stopped and not rerun; see {job.log}")
                return
            if out_of_memory or code not in KILLED_FROM_OUTSIDE:
                record_crash(job)
            fruitless = 0 if results_size(job) > written else fruitless + 1
        self.failures.append(f"{job.model} {job.name}: container exited with code {code} "
                             f"{fruitless} times in a row without a new result; see {job.log}")

    def _run_container(self, job: Job, slot: Slot) -> tuple[int, bool, bool]:
        """(exit code, killed for memory, stopped as hung) of one container run of the job.
        Its output is streamed into the job's .log as it comes, so a killed run keeps
        its log (up to LOG_CAP_BYTES); a watchdog stops it when for stall_timeout_s its
        output has not grown and its heartbeat has not moved (a paused or deadlocked
        worker; a structure that is slow but stepping is never stopped), and when its
        result files outgrow output_cap."""
        import docker.errors

        prepare_worker_files(job)
        (self.cache_dir / job.model).mkdir(parents=True, exist_ok=True)  # mounted even when it holds nothing
        container = self.client.containers.run(
            detach=True, **container_kwargs(job, slot, self.run_key, self.cache_dir, self.owner))
        done, stalled = threading.Event(), threading.Event()
        cap = output_cap(job)

        def stop() -> None:
            try:
                container.reload()
                if container.status == "paused":  # the engine kills no paused container
                    container.unpause()
                container.kill()
            except docker.errors.APIError:
                pass  # it ended meanwhile

        def watch() -> None:
            progress, since = None, time.monotonic()
            while not done.wait(min(5.0, self.stall_timeout_s / 4)):
                now = (results_size(job), heartbeat(job))
                if now[0] > cap:
                    return stop()
                if now != progress:
                    progress, since = now, time.monotonic()
                elif time.monotonic() - since > self.stall_timeout_s:
                    stalled.set()
                    return stop()

        watchdog = threading.Thread(target=watch, daemon=True)
        watchdog.start()
        try:
            with job.log.open("ab") as log:
                room = LOG_CAP_BYTES
                for chunk in container.logs(stream=True, follow=True):  # read to the end, keep the cap
                    if room > 0:
                        log.write(chunk[:room])
                        room -= len(chunk)
                        if room <= 0:
                            log.write(f"\n[the rest of this run's output is dropped: over {LOG_CAP_BYTES} bytes]\n"
                                      .encode())
                        log.flush()
            code = container.wait()["StatusCode"]
            container.reload()
            return code, bool(container.attrs["State"].get("OOMKilled")), stalled.is_set()
        finally:
            done.set()
            container.remove(force=True)
