"""The speed card: how fast each model relaxed on the run's devices, in the unit the field
uses (µs per atom per step), and what that means for the full 0123D benchmark.

Each result line says when its structure finished (`finished_at`, Unix time) and how long it
held its worker (`wall_s`): the interval [finished_at - wall_s, finished_at]. A model's busy
time is the length of the union of its structures' intervals, so parallel workers and the
batched engine's overlapping structures count once, as the devices spent it (time between
structures, loading the model and starting containers is left out). Then, per model:

- µs per atom per step = busy time / Σ atoms × steps (a structure that took no step counts one);
- structures per second = structures / busy time;
- projected hours = Σ over the dimensionalities the run has of 10,000 (the paper's count per
  dimensionality) × that dimensionality's mean atoms × steps × µs per atom per step. A run of
  one dimensionality projects that dimensionality only; `projected_from` says which.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from metrics.paper import PAPER_STRUCTURES
from adapters.wire import DIMENSIONS

COLUMNS = ["model", "devices", "engine", "structures", "busy_s", "us_per_atom_step", "structures_per_s",
           "projected_h", "projected_from"]


def busy_seconds(starts: np.ndarray, ends: np.ndarray) -> float:
    """The length of the union of the intervals [starts[i], ends[i]]."""
    order = np.argsort(starts)
    total, reach = 0.0, -np.inf
    for start, end in zip(np.asarray(starts)[order], np.asarray(ends)[order]):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return float(total)


def devices_text(provenance: dict, model: str | None = None) -> str:
    """The run's devices as a reader wants them: the CPU's or the GPUs' names, and the workers
    that relaxed `model` at a time (as recorded; a run from before that: the slots)."""
    slots = [s for s in provenance.get("devices") or [] if isinstance(s, dict)]
    host = provenance.get("host") if isinstance(provenance.get("host"), dict) else {}
    gpus = sorted({str(s["gpu"]) for s in slots if s.get("gpu") is not None})
    if gpus:
        names = {str(line).split(",")[0].strip(): str(line).split(",")[1].strip()
                 for line in host.get("gpus") or [] if str(line).count(",") >= 1}
        where = ", ".join(f"GPU {g}" + (f" {names[g]}" if g in names else "") for g in gpus)
    else:
        where = f"CPU {host['cpu_model']}" if host.get("cpu_model") else "CPU"
    if not slots:
        return where
    ran = (provenance.get("workers") or {}).get(model)
    count = ran if isinstance(ran, int) and ran > 0 else len(slots)
    threads = {s.get("threads") for s in slots}
    thread = threads.pop() if len(threads) == 1 else None
    return f"{where}; {count} worker{'s' if count != 1 else ''}" + (
        f" × {thread} thread{'s' if thread != 1 else ''}" if isinstance(thread, int) else "")


def speed_card(scored: pd.DataFrame, provenance: dict) -> pd.DataFrame:
    """One row per model with timed results (COLUMNS); empty when the run predates the
    finish times (or every structure is still missing)."""
    if "finished_at" not in scored:
        return pd.DataFrame(columns=COLUMNS)
    rows = []
    for model, group in scored.groupby(scored["model"].astype(str), sort=False):
        ends = pd.to_numeric(group["finished_at"], errors="coerce")
        walls = pd.to_numeric(group["wall_s"], errors="coerce")
        timed = group[ends.notna() & walls.notna()]
        if timed.empty:
            continue
        ends, walls = ends[timed.index].to_numpy(float), walls[timed.index].to_numpy(float)
        busy = busy_seconds(ends - walls, ends)
        atom_steps = timed["natoms"].astype(float) * np.maximum(timed["steps"].astype(float), 1.0)
        per_atom_step = busy / float(atom_steps.sum()) if busy > 0 else np.nan
        dims = [d for d in DIMENSIONS if d in set(timed["dimension"])]
        mean_atom_steps = atom_steps.groupby(timed["dimension"]).mean()
        projected = sum(PAPER_STRUCTURES * mean_atom_steps[d] * per_atom_step for d in dims) / 3600.0
        rows.append({"model": model, "devices": devices_text(provenance, model), "engine": provenance.get("engine", "ase"),
                     "structures": len(timed), "busy_s": busy, "us_per_atom_step": per_atom_step * 1e6,
                     "structures_per_s": len(timed) / busy if busy > 0 else np.nan, "projected_h": projected,
                     "projected_from": ",".join(dims)})
    return pd.DataFrame(rows, columns=COLUMNS)
