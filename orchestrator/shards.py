"""Structures to shard files: one JSON line per structure, full float precision.

JSON lines rather than extxyz because the container must read back exactly the
coordinates the reference holds (extxyz rounds to 8 decimals) and needs only
the standard library to parse them.
"""

from __future__ import annotations

import json
from pathlib import Path

from adapters import wire
from metrics.geometry import periodic_axes
from orchestrator import runfolder


def structure_record(atoms) -> dict:
    axes = atoms.info.get("periodic_axes")
    return {
        "id": atoms.info["id"],
        "dimension": atoms.info["dimension"],
        "periodic_axes": periodic_axes(atoms) if axes is None else axes,
        "numbers": atoms.numbers.tolist(),
        "positions": atoms.positions.tolist(),
        "cell": atoms.cell[:].tolist(),
        "pbc": atoms.pbc.tolist(),
    }


def cut(atoms_counts: list[int], shard_size: int, slots: int) -> list[int]:
    """The sizes of consecutive shards: as few as `shard_size` allows, but at least one per
    slot where there are that many structures (so no slot idles while structures wait),
    cut where the atoms are shared most equally (a structure's cost grows with its atoms).
    The same counts, size and slots always give the same cut."""
    total = len(atoms_counts)
    count = min(total, max(-(-total // shard_size), slots))
    if count <= 1:
        return [total] if total else []
    cumulative, atoms = [], 0
    for n in atoms_counts:
        atoms += n
        cumulative.append(atoms)
    bounds = [0]
    for k in range(1, count):
        wanted = atoms * k / count
        at = next(i + 1 for i, c in enumerate(cumulative) if c >= wanted)
        lowest = max(bounds[-1] + 1, total - (count - k) * shard_size)   # the rest must fit in what is left
        highest = min(bounds[-1] + shard_size, total - (count - k))      # every later shard keeps one
        bounds.append(min(max(at, lowest), highest))
    bounds.append(total)
    return [b - a for a, b in zip(bounds, bounds[1:])]


def write_shards(structures: list, shard_dir: Path, sizes: list[int]) -> list[Path]:
    """Write shard-NNNN.jsonl files of these sizes, in order; an existing identical shard is
    left untouched."""
    runfolder.mkdir(shard_dir)
    paths, start = [], 0
    for number, size in enumerate(sizes):
        text = "".join(json.dumps(structure_record(a)) + "\n" for a in structures[start:start + size])
        start += size
        path = shard_dir / f"shard-{number:04d}.jsonl"
        if not path.is_file() or path.is_symlink() or path.read_text() != text:
            runfolder.write_text(path, text)
        paths.append(path)
    return paths


def complete_lines(data: bytes) -> list[bytes]:
    """The finished lines of JSON-lines data; a torn last line (a writer killed mid-line) is left out."""
    return [line for line in wire.without_torn_line(data).splitlines() if line.strip()]


def read_records(path: Path) -> list[dict]:
    """The complete JSON lines of a shard or result file, in order."""
    return [json.loads(line) for line in complete_lines(path.read_bytes())] if path.exists() else []


def read_ids(path: Path) -> list[str]:
    return [record["id"] for record in read_records(path)]
