"""Result files: one JSON line per relaxed structure, as the worker writes them and as the
worker (to resume) and the host (to schedule, merge and score) read them back. Standard
library only: the worker imports it, and so does the host.

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
from dataclasses import dataclass, field
from pathlib import Path

#: Fields that must be numbers (or null) when present.
NUMBER_FIELDS = ("energy_ev", "max_force_ev_per_a", "max_atom_force_ev_per_a", "wall_s", "timeout_s")


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
    for number, line in enumerate(data[: data.rfind(b"\n") + 1].split(b"\n")[:-1], start=1):
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


def rejected_path(out: Path) -> Path:
    """Where the lines set aside from a result file are kept."""
    return out.with_suffix(".rejected")


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
