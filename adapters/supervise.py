"""The worker's supervisor: the command every model container runs (wire.worker_command).

    python -m adapters.supervise --job JOB_JSON --shard IN.jsonl --out OUT.jsonl [--shard ... --out ...]

It runs the relaxation (`python -m adapters.relax` with the same arguments) as a child
process and holds the tool's one policy for a worker's faults, whichever backend
started the container (Docker on this machine, a SLURM task on a node):

- a relaxation process that dies on its own (a segfault, an abort, the kernel's
  out-of-memory killer) has the structures it was relaxing (its in-flight markers)
  appended to their shards' crash lists, and is started again; the next one records a
  structure as model_error after wire.CRASHES_TO_FAIL deaths on it;
- one that makes no optimizer step and writes no result for the job's stall_timeout_s is
  hung: it is killed and started again (its shards resume), no crash is recorded, and a
  notice says so;
- one whose results outgrow wire.output_cap is killed and not started again (OVER_CAP);
- one that cannot load the model (CANNOT_LOAD) is not started again: the notice quotes
  the last line of its error;
- restarts go on while they bring new results: max_retries + 1 deaths in a row without
  one give up (GAVE_UP); a process that cannot write its results (CANNOT_WRITE) is not
  restarted;
- SIGTERM or SIGINT (docker stop, scancel, Ctrl-C) stops the process and exits 143 with
  nothing recorded: stopped from outside is no structure's fault. A SIGKILL of the
  container kills the supervisor too, so a death the supervisor sees is the process's own.
- the process's output is passed on, up to LOG_CAP_BYTES in all.

It lives in the container, not on the host, so that both backends get the same policy
from the same code and a cluster node needs nothing but its container runtime; and
because inside, a kill from outside and a death of the relaxation cannot be confused.
Standard library only: it starts in a moment and never loads the model.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from adapters.wire import (CANNOT_LOAD, CANNOT_WRITE, GAVE_UP, NOTICE, OVER_CAP, Job, crash_list_path, id_lines,
                           in_flight_path, output_cap, read_id_lines)

#: What one worker may write to its output (its log on the host); the rest is dropped, with a note.
LOG_CAP_BYTES = 64 * 1024**2


def notice(message: str) -> None:
    """A line for the run's worker failures (wire.notices reads them from the log)."""
    print(NOTICE + message, file=sys.stderr, flush=True)


def results_size(outs: list[Path]) -> int:
    """Bytes in the result files: grows with every structure finished."""
    return sum(out.stat().st_size for out in outs if out.exists())


def heartbeat(outs: list[Path]) -> int:
    """The newest touch of the in-flight markers (ns): the relaxation touches them as it steps."""
    return max((in_flight_path(out).stat().st_mtime_ns for out in outs if in_flight_path(out).exists()), default=0)


def record_crash(outs: list[Path]) -> None:
    """Append the structures a dead process was relaxing (its in-flight markers: one, or a
    batch of them) to their shards' crash lists."""
    for out in outs:
        in_flight = in_flight_path(out)
        ids = read_id_lines(in_flight.read_text()) if in_flight.is_file() else []
        if ids:
            with crash_list_path(out).open("a") as handle:
                handle.write(id_lines(ids))


class Supervisor:
    """Runs `command` (the relaxation of `shards` into `outs`) under the policy of the module."""

    def __init__(self, command: list[str], shards: list[Path], outs: list[Path], job: Job, log=None):
        self.command = command
        self.outs = outs
        self.job = job
        self.cap = output_cap(shards)
        self.log = log or sys.stdout.buffer
        self.log_room = LOG_CAP_BYTES
        self.tail = b""  # the end of the process's output, for a notice
        self.stopping = threading.Event()
        self.process: subprocess.Popen | None = None

    def stop(self, *_) -> None:
        """SIGTERM, SIGINT: stop the process, record nothing."""
        self.stopping.set()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()

    def run(self) -> int:
        fruitless, code = 0, 0
        while fruitless <= self.job.max_retries:
            written = results_size(self.outs)
            code, why = self.run_once()
            if self.stopping.is_set():
                return 143
            if code == CANNOT_WRITE:
                notice("the worker cannot write its results (disk full or folder read-only)")
            if code == CANNOT_LOAD:
                last = next((line for line in reversed(self.tail.decode(errors="replace").splitlines())
                             if line.strip()), "")
                notice(f"the model could not be loaded: {last.strip()}")
            if code in (0, CANNOT_WRITE, CANNOT_LOAD):
                return code
            if why == "over the cap":
                notice(f"the worker wrote {results_size(self.outs)} bytes of results, more than the {self.cap} its "
                       "shards can need; it was stopped and not rerun")
                return OVER_CAP
            if why == "stalled":
                notice(f"no step and no new result for {self.job.stall_timeout_s:g} s: the relaxation was stopped "
                       "and its shards resumed")
            else:
                record_crash(self.outs)
            fruitless = 0 if results_size(self.outs) > written else fruitless + 1
        notice(f"the relaxation exited with code {code} {fruitless} times in a row without a new result")
        return GAVE_UP

    def run_once(self) -> tuple[int, str]:
        """(exit code, "" | "stalled" | "over the cap") of one relaxation process."""
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if self.stopping.is_set():  # a signal came while it started
            self.process.kill()
        passer = threading.Thread(target=self.pass_output, args=(self.process.stdout,), daemon=True)
        passer.start()
        why, progress, since = "", None, time.monotonic()
        tick = min(1.0, self.job.stall_timeout_s / 4)
        while True:
            try:
                code = self.process.wait(timeout=tick)
                break
            except subprocess.TimeoutExpired:
                pass
            now = (results_size(self.outs), heartbeat(self.outs))
            if now[0] > self.cap:
                why = "over the cap"
            elif now != progress:
                progress, since = now, time.monotonic()
            elif time.monotonic() - since > self.job.stall_timeout_s:
                why = "stalled"
            if why:
                self.process.kill()
                code = self.process.wait()
                break
        passer.join()
        return (128 - code if code < 0 else code), why  # killed by signal N: 128 + N, as a shell says

    def pass_output(self, stream) -> None:
        for chunk in iter(lambda: stream.read1(65536), b""):
            self.tail = (self.tail + chunk)[-4096:]
            if self.log_room > 0:
                self.log.write(chunk[:self.log_room])
                self.log_room -= len(chunk)
                if self.log_room <= 0:
                    self.log.write(f"\n[the rest of this worker's output is dropped: over {LOG_CAP_BYTES} bytes]\n"
                                   .encode())
                self.log.flush()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", required=True, help="wire.Job as JSON")
    parser.add_argument("--shard", required=True, type=Path, action="append", help="repeatable, with --out")
    parser.add_argument("--out", required=True, type=Path, action="append", help="one per --shard, in order")
    args = parser.parse_args(argv)
    try:
        job = Job.from_json(args.job)
    except ValueError as exc:
        parser.error(str(exc))
    supervisor = Supervisor([sys.executable, "-m", "adapters.relax", *argv], args.shard, args.out, job)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, supervisor.stop)
    return supervisor.run()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
