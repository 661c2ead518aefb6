"""Assignments: what one worker container relaxes (a model's image, some shards, the
wire.Job), the host files it may write, the container that runs it on a slot, and what its
end means for the run's failures."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

from adapters.wire import (CACHE_MOUNT, CANNOT_LOAD, CANNOT_WRITE, GAVE_UP, OUT_MOUNT, OVER_CAP, SHARDS_MOUNT, Job,
                           crash_list_path, in_flight_path, notices, worker_command)
from orchestrator import runfolder
from orchestrator.workers.slots import Slot
from orchestrator.workers.spec import LABEL, Mount, WorkerSpec, worker_threading, worker_user


@dataclass
class Assignment:
    """What one worker container relaxes: some shards of one model, into its results folder."""

    model: str
    image: str
    shards: tuple[Path, ...]  # host paths of the shards
    out_dir: Path             # host folder of this model's results
    job: Job                  # the device is filled per slot

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


def one_assignment_per_slot(assignments: list[Assignment], slots: int) -> list[Assignment]:
    """The batched engine's assignments: each model's shards split into `slots` runs of
    consecutive shards, one container each (a model with fewer shards gets fewer)."""
    merged = []
    for model in dict.fromkeys(a.model for a in assignments):
        same = [a for a in assignments if a.model == model]
        shards = [shard for a in same for shard in a.shards]
        size = -(-len(shards) // slots)
        merged += [replace(same[0], shards=tuple(shards[k:k + size])) for k in range(0, len(shards), size)]
    return merged


def run_key(run_dir: Path) -> str:
    """12 hex digits naming a run folder among every folder on this engine."""
    return hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]


def container_name(run_key: str, assignment: Assignment) -> str:
    return f"umlip-0123d-{run_key}-{assignment.model}-{assignment.shards[0].stem}"


def worker_files(assignment: Assignment) -> dict[str, Path]:
    """The only host files a worker may touch (read-write), by their path inside the
    container: its shards' outputs, in-flight markers and crash lists."""
    files = {}
    for out in assignment.outs:
        for path in (out, in_flight_path(out), crash_list_path(out)):
            files[f"{OUT_MOUNT}/{path.name}"] = path
    return files


def prepare_worker_files(assignment: Assignment) -> None:
    """Create the files a worker mounts (a missing one would be mounted as a folder), hand
    them to the worker's user, and empty the in-flight markers: a worker that dies before
    it names a structure (while starting, say, for too little memory) must not blame the
    one an interrupted run left named there. Never follows a symbolic link (the
    orchestrator may be root): one planted in the run folder is refused."""
    runfolder.mkdir(assignment.out_dir)
    uid, gid = worker_user()
    markers = {in_flight_path(out) for out in assignment.outs}
    for path in worker_files(assignment).values():
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if path in markers else os.O_APPEND)
        try:
            handle = os.open(path, flags, 0o644)
        except OSError as exc:
            if path.is_symlink():
                raise runfolder.LinkRefused(path) from None
            raise exc
        try:
            if os.getuid() == 0:
                os.fchown(handle, uid, gid)
        finally:
            os.close(handle)


def worker_spec(assignment: Assignment, slot: Slot, run_key: str, weights_dir: Path, owner: str = "") -> WorkerSpec:
    """The container that relaxes an assignment on a slot: the supervisor's command, the
    shards and the model's own weights folder read-only, the assignment's files writable."""
    job = replace(assignment.job, device=slot.device)
    mounts = [Mount(str(assignment.shards[0].parent), SHARDS_MOUNT),
              Mount(str(weights_dir / assignment.model), f"{CACHE_MOUNT}/{assignment.model}")]  # its own weights only
    mounts += [Mount(str(path), inside, "rw") for inside, path in worker_files(assignment).items()]
    return WorkerSpec(
        image=assignment.image,
        command=worker_command(job, [s.name for s in assignment.shards], [o.name for o in assignment.outs]),
        name=container_name(run_key, assignment),
        labels={f"{LABEL}.run": run_key, f"{LABEL}.owner": owner, f"{LABEL}.model": assignment.model,
                f"{LABEL}.slot": slot.name},
        mounts=mounts, environment=worker_threading(slot.threads), threads=slot.threads,
        memory_bytes=slot.memory_bytes, pids=slot.pids, gpu=slot.gpu)


def worker_failures(assignment: Assignment, code: int | None, log_text: str) -> list[str]:
    """The lines of the run's failures for one worker run: its supervisor's notices (a
    hung relaxation stopped and resumed, why it gave up), and an exit code that no
    notice explains (None: not known)."""
    where, see = f"{assignment.model} {assignment.name}", f"; see {assignment.log}"
    lines = [f"{where}: {message}{see}" for message in notices(log_text)]
    if code not in (0, None, CANNOT_LOAD, CANNOT_WRITE, GAVE_UP, OVER_CAP):
        lines.append(f"{where}: the worker exited with code {code}{see}")
    return lines
