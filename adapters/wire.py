"""The worker contract: everything the host and a model container agree on, and nothing
else. Standard library only: the host imports this module (and nothing else of
adapters/), the container's supervisor and relaxation engines import it too.

- the job a worker receives (Job: a typed, validated record, sent as JSON);
- the container's mount points and the worker's command line (worker_command);
- the files of a shard in a run folder: its results (one JSON line per structure),
  its in-flight marker and its crash list, and how each is read;
- the exit codes of a worker, the result statuses, the optimizer and cell filter names;
- the vocabulary the host, the scoring (metrics/) and the worker share: the dimensionalities,
  the fragmentation failure of each, and the torn-line rule of JSON-lines files.

Result files: one JSON line per relaxed structure, as the worker writes them and as the
worker (to resume) and the host (to schedule, merge and score) read them back.
A line is kept only when it is a result of this shard's structures that still holds:

- a JSON object whose `id` is a structure of the shard, with the result fields of the
  right types (`converged` a bool, `steps` a whole number >= 0, `failure_reason` text or
  null, numbers where numbers belong);
- the first line of its structure (a second line for the same structure is set aside);
- not a `timeout` under another time limit than the one in force: a structure stopped
  by one limit is relaxed again when the user changes it (or removes it).

A torn last line (a worker killed mid-line) is no result. Every other line that is not
kept is damaged (garbage, NUL bytes after a crash, a hand edit) or stale: the host sets
such lines aside in `<shard>.rejected`, verbatim and never deleted, and relaxes their
structures again (set_aside).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

# ---- names both sides use -------------------------------------------------------------

#: Where a worker's container sees the run folder's shards, its results and the model's weights.
SHARDS_MOUNT, OUT_MOUNT, CACHE_MOUNT = "/data/shards", "/data/out", "/cache"
#: The image's working folder: adapters/ is importable from there.
WORKDIR = "/opt/umlip-0123d"
OPTIMIZERS = ("FIRE", "BFGS", "LBFGS")
CELL_FILTERS = ("FrechetCellFilter", "UnitCellFilter")
#: `paper`: the text of Benedini et al.; `authors`: their code (adapters.relax).
VARIANTS = ("paper", "authors")
#: `ase`: one structure at a time, ASE's own optimizer; `batched`: adapters.batched.
ENGINES = ("ase", "batched")
#: The dimensionalities: how many directions of a structure are periodic (0D molecules and
#: clusters, 1D wires and tubes, 2D layers, 3D bulk crystals).
DIMENSIONS = ("0D", "1D", "2D", "3D")
#: The failure_reason of a structure that came apart, by dimensionality (the paper's vacuum
#: criteria: a layer's thickness, a wire's width, a cluster's diameter).
FRAGMENTED = {"2D": "fragmented_thickness", "1D": "fragmented_width", "0D": "fragmented_diameter"}


def without_torn_line(data: bytes) -> bytes:
    """JSON-lines data up to its last newline: a torn last line (a writer killed mid-line) is
    no line at all, for every reader of a shard or result file."""
    return data[: data.rfind(b"\n") + 1]

#: Exit codes of a worker (adapters.supervise). Results cannot be written (disk full,
#: read-only folder): not the structures' fault, no crash is recorded (EX_TEMPFAIL).
CANNOT_WRITE = 75
#: Its relaxations died max_retries + 1 times in a row without a new result.
GAVE_UP = 69
#: The model could not be loaded (a checkpoint missing or of another format, an option it
#: does not know): no structure's fault, nothing to retry (EX_CONFIG).
CANNOT_LOAD = 78
#: It wrote more results than its shards can need (output_cap): stopped, not rerun.
OVER_CAP = 73
#: Killed from outside (SIGKILL, SIGTERM: `docker kill`, scancel, Ctrl-C): no one's fault.
KILLED_FROM_OUTSIDE = (137, 143)
#: A structure is recorded as model_error once this many relaxation processes died on it.
CRASHES_TO_FAIL = 2
#: Seconds between two heartbeats of a relaxing worker (the in-flight markers' mtime).
HEARTBEAT_S = 10.0


@dataclass(frozen=True)
class Job:
    """What one worker is asked to do, the same for each of its shards. Every field is the
    host's to set (its plan, from benchmark.yaml): the record has no defaults of its own."""

    calculator: str                   # the factory module of adapters/calculators
    protocol: dict                    # variant, fmax, max_steps, limits, optimizer, cell filter (PROTOCOL_KEYS)
    options: dict                     # the factory's keyword arguments (model.yaml, checkpoint)
    device: str                       # cpu | cuda (the worker's slot)
    engine: str                       # ENGINES
    batch_atoms: int                  # the batched engine's atoms in flight
    structure_timeout_s: float | None  # the user's wall-time limit per structure; None: none
    stall_timeout_s: float            # no step and no new result for this long: the relaxation is hung
    max_retries: int                  # deaths in a row without a new result before the worker gives up

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Job":
        """The job of a JSON text, every key and type checked: a ValueError names the key."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("the job must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown, missing = sorted(set(data) - known), sorted(known - set(data))
        if unknown:
            raise ValueError(f"job: unknown key(s) {unknown}; allowed: {sorted(known)}")
        if missing:
            raise ValueError(f"job: missing key(s) {missing}")
        job = cls(**data)
        job.check()
        return job

    def check(self) -> None:
        def fail(key, message):
            raise ValueError(f"job: {key} {message}")

        for key, kind in (("calculator", str), ("protocol", dict), ("options", dict), ("device", str),
                          ("engine", str), ("batch_atoms", int), ("max_retries", int)):
            if not isinstance(getattr(self, key), kind) or isinstance(getattr(self, key), bool):
                fail(key, f"must be a {kind.__name__}, not {getattr(self, key)!r}")
        for key in ("structure_timeout_s", "stall_timeout_s"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                fail(key, f"must be a positive number, not {value!r}")
        if self.engine not in ENGINES:
            fail("engine", f"must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        missing = sorted(set(PROTOCOL_KEYS) - set(self.protocol))
        if missing:
            fail("protocol", f"lacks {missing}")
        for key, choices in (("variant", VARIANTS), ("optimizer", OPTIMIZERS), ("cell_filter", CELL_FILTERS)):
            if self.protocol[key] not in choices:
                fail(f"protocol.{key}", f"must be one of {', '.join(choices)}, not {self.protocol[key]!r}")


#: What a job's protocol holds (benchmark.yaml `protocol`, with its fragmentation limits).
PROTOCOL_KEYS = ("variant", "optimizer", "cell_filter", "fmax_ev_per_a", "max_steps", "divergence_limit_ev_per_a",
                 "fragmentation_limits_a")


def worker_command(job: Job, shards: list[str], outs: list[str]) -> list[str]:
    """The command a worker's container runs: the supervisor, which runs the relaxation
    of the shards (names inside SHARDS_MOUNT) into their outputs (names inside OUT_MOUNT)."""
    pairs = [arg for shard, out in zip(shards, outs, strict=True)
             for arg in ("--shard", f"{SHARDS_MOUNT}/{shard}", "--out", f"{OUT_MOUNT}/{out}")]
    return ["python", "-m", "adapters.supervise", "--job", job.to_json(), *pairs]


# ---- a shard's files beside its results ---------------------------------------------------

def in_flight_path(out: Path) -> Path:
    """The marker naming the structures a worker is relaxing, one a line (empty between)."""
    return out.with_suffix(".inflight")


def crash_list_path(out: Path) -> Path:
    """The structures whose relaxation process died, one id a line, once per death."""
    return out.with_suffix(".crashed")


def rejected_path(out: Path) -> Path:
    """Where the lines set aside from a result file are kept."""
    return out.with_suffix(".rejected")


def id_lines(ids: list[str]) -> str:
    """Structure ids one a line, each as a JSON string: an id may hold any character
    (spaces, newlines, tabs) and still reads back as itself (read_id_lines)."""
    return "".join(json.dumps(sid) + "\n" for sid in ids)


def read_id_lines(text: str) -> list[str]:
    """The ids of id_lines text (a line that is no JSON string is taken as it is)."""
    ids = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            sid = json.loads(line)
        except ValueError:
            sid = None
        ids.append(sid if isinstance(sid, str) else line)
    return ids


def crash_counts(out: Path) -> dict[str, int]:
    """How many relaxation processes died relaxing each structure, from the crash list."""
    path = crash_list_path(out)
    counts: dict[str, int] = {}
    for sid in read_id_lines(path.read_text()) if path.exists() else []:
        counts[sid] = counts.get(sid, 0) + 1
    return counts


#: A line of a worker's output that the host collects into the run's worker failures.
NOTICE = "umlip-0123d notice: "


def notices(log: str) -> list[str]:
    """The notices (NOTICE lines) of a worker's output, without the prefix."""
    return [line[len(NOTICE):] for line in log.splitlines() if line.startswith(NOTICE)]


def output_cap(shards: list[Path]) -> int:
    """Bytes the shards' result files may hold: a result line is about the size of its
    structure's shard line (positions and cell) plus a few numbers, an error and a short
    traceback, so twice the shards plus 16 kB a structure is room enough for honest
    results and a bound on a worker that writes without end."""
    return sum(2 * shard.stat().st_size + 16384 * shard.read_bytes().count(b"\n")
               for shard in shards if shard.exists())


# ---- result files -----------------------------------------------------------------------

def timed_out(timeout_s: float, why: str, steps: int) -> dict:
    """The result of a structure stopped by the user's time limit after `steps` optimizer
    steps; the limit is kept so a rerun under another limit relaxes it again (see
    stale_timeout)."""
    return {"converged": False, "failure_reason": "timeout", "steps": steps, "error": why, "timeout_s": timeout_s}


#: Fields that must be numbers (or null) when present.
NUMBER_FIELDS = ("energy_ev", "max_force_ev_per_a", "max_atom_force_ev_per_a", "wall_s", "finished_at", "timeout_s")


@dataclass
class ResultFile:
    """What a result file holds: the kept records by id, in file order, and the lines
    that were not kept as (line number from 1, reason, the line's bytes)."""

    kept: dict[str, dict] = field(default_factory=dict)
    rejected: list[tuple[int, str, bytes]] = field(default_factory=list)
    kept_lines: list[bytes] = field(default_factory=list)
    set_aside: list[str] = field(default_factory=list)  # what set_aside did, one message a line


def _problem(record, ids: set[str], kept: dict) -> str | None:
    """Why a decoded line is not a result of this shard, or None."""
    if not isinstance(record, dict):
        return "not a JSON object"
    sid = record.get("id")
    if not isinstance(sid, str):
        return "no structure id"
    if sid not in ids:
        return f"structure {sid!r} is not in this shard"
    if sid in kept:
        return f"a second line for structure {sid!r}"
    if not isinstance(record.get("converged"), bool):
        return f"structure {sid!r}: `converged` is not true or false"
    steps = record.get("steps")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        return f"structure {sid!r}: `steps` is not a whole number >= 0"
    if not isinstance(record.get("failure_reason"), (str, type(None))):
        return f"structure {sid!r}: `failure_reason` is not text"
    for name in NUMBER_FIELDS:
        value = record.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"structure {sid!r}: `{name}` is not a number"
    return None


def stale_timeout(record: dict, timeout_s: float | None) -> bool:
    """A `timeout` result recorded under another time limit than `timeout_s`."""
    if record.get("failure_reason") != "timeout":
        return False
    recorded = record.get("timeout_s")
    return timeout_s is None or recorded is None or not math.isclose(float(recorded), float(timeout_s))


def read(path: Path, ids: set[str], timeout_s: float | None = None) -> ResultFile:
    """The result file at `path` for a shard of structures `ids` (see the module's rules)."""
    found = ResultFile()
    if not path.exists():
        return found
    data = path.read_bytes()
    for number, line in enumerate(without_torn_line(data).split(b"\n")[:-1], start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            found.rejected.append((number, "not a JSON line", line))
            continue
        why = _problem(record, ids, found.kept)
        if why is None and stale_timeout(record, timeout_s):
            why = (f"structure {record['id']!r} timed out under a limit of {record.get('timeout_s')} s; "
                   f"the limit is now {timeout_s}")
        if why:
            found.rejected.append((number, why, line))
        else:
            found.kept[record["id"]] = record
            found.kept_lines.append(line)
    return found


def set_aside(out: Path, ids: set[str], timeout_s: float | None = None) -> ResultFile:
    """Move the lines of `out` that are not kept (see read) to `<out>.rejected`, verbatim,
    and rewrite `out` with the kept ones in their order (atomically; a torn last line
    goes too). Returns what the file holds now, with one message per line moved, naming
    the file and the line (`set_aside`). Never follows a symbolic link: one is refused
    with an OSError naming it."""
    for path in (out, rejected_path(out)):
        if path.is_symlink():
            raise OSError(f"{path}: a symbolic link in the run folder; remove it (links there are never followed)")
    found = read(out, ids, timeout_s)
    if not found.rejected:
        return found
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
    with os.fdopen(os.open(rejected_path(out), flags, 0o644), "ab") as handle:
        handle.write(b"".join(line + b"\n" for _, _, line in found.rejected))
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(b"".join(line + b"\n" for line in found.kept_lines))
    tmp.replace(out)
    found.set_aside = [f"{out} line {number}: {why}; set aside in {rejected_path(out).name}, its structure is "
                       "relaxed again" for number, why, _ in found.rejected]
    return found


def complete(out: Path, ids: set[str], timeout_s: float | None = None) -> bool:
    """Every structure of the shard has a result in `out` that holds."""
    return ids <= set(read(out, ids, timeout_s).kept)
