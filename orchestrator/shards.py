"""Structures to shard files: one JSON line per structure, full float precision.

JSON lines rather than extxyz because the container must read back exactly the
coordinates the reference holds (extxyz rounds to 8 decimals) and needs only
the standard library to parse them.
"""

from __future__ import annotations

import json
from pathlib import Path

from metrics.geometry import periodic_axes


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


def write_shards(structures: list, shard_dir: Path, shard_size: int) -> list[Path]:
    """Write shard-NNNN.jsonl files; an existing identical shard is left untouched."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, start in enumerate(range(0, len(structures), shard_size)):
        text = "".join(json.dumps(structure_record(a)) + "\n" for a in structures[start:start + shard_size])
        path = shard_dir / f"shard-{number:04d}.jsonl"
        if not path.exists() or path.read_text() != text:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)
        paths.append(path)
    return paths


def complete_lines(data: bytes) -> list[bytes]:
    """The finished lines of JSON-lines data; a torn last line (a writer killed mid-line) is left out."""
    return [line for line in data[: data.rfind(b"\n") + 1].splitlines() if line.strip()]


def read_records(path: Path) -> list[dict]:
    """The complete JSON lines of a shard or result file, in order."""
    return [json.loads(line) for line in complete_lines(path.read_bytes())] if path.exists() else []


def read_ids(path: Path) -> list[str]:
    return [record["id"] for record in read_records(path)]
