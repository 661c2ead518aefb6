"""A run folder's results merged and scored, and the key that says whether its scores are
current."""

from __future__ import annotations

import hashlib
import json

from orchestrator import host, merge
from orchestrator.console import show_table
from orchestrator.models import REPO
from orchestrator.run.plan import RunSettings
from orchestrator.runfolder import RunFolder
from orchestrator.shards import read_ids


def scoring_key(folder: RunFolder, settings: RunSettings) -> str:
    """What the scores and the report of a run folder depend on: every result file (name,
    size, time), the settings the scoring reads, the scoring code itself and the packages
    it runs on (orchestrator.host)."""
    raw = sorted((p.relative_to(folder.root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                 for p in folder.result_files())
    code = hashlib.sha256()
    for path in sorted([*(REPO / "metrics").rglob("*.py"), *(REPO / "metrics").rglob("*.csv"),
                        REPO / "orchestrator" / "merge.py", REPO / "adapters" / "wire.py"]):
        code.update(path.read_bytes())
    stack = host.scoring_stack()
    return json.dumps({"raw": raw, "fragmentation_limits_a": settings.fragmentation_limits_a,
                       "structure_timeout_s": settings.structure_timeout_s, "code": code.hexdigest(),
                       "symmetry": symmetry_record(), "scoring": [stack["python"], stack["packages"]]},
                      sort_keys=True) + "\n"


def symmetry_record() -> dict:
    """Which library and tolerances gave the symmetry columns (its version changes them)."""
    from metrics import symmetry

    return {"library": "moyopy", "version": symmetry.version(), "symprec_a": list(symmetry.SYMPRECS)}


def score_run(folder: RunFolder, settings: RunSettings, structures: list):
    """Merge every model's results in the run folder, score them, write the table and structures."""
    from metrics.per_structure import score

    shards = {shard.stem: set(read_ids(shard)) for shard in folder.shard_files()}
    found = {d.name: merge.read_results(d, shards, settings.structure_timeout_s) for d in folder.model_dirs()}
    table, relaxed = merge.merge(structures, found)
    reference = {a.info["id"]: a for a in structures}
    table = score(table, reference, relaxed, settings.fragmentation_limits_a)
    merge.write_table(folder, table)
    merge.write_relaxed(folder.relaxed, table, relaxed)
    return table


def print_summary(table) -> None:
    from metrics.summary import summary

    columns = {"model": "model", "dimension": "dim", "structures": "n", "failed": "failed",
               "median_steps": "steps (median)", "energy_mae_mev": "ΔE MAE meV/at",
               "energy_median_mev": "ΔE median meV/at", "position_mae_median_a": "Δr MAE median Å"}
    rows = []
    for row in summary(table).itertuples(index=False):
        cells = []
        for key in columns:
            value = getattr(row, key)
            cells.append(value if isinstance(value, str) else "-" if value != value else
                         f"{value:.4f}" if key == "position_mae_median_a" else f"{value:.1f}" if isinstance(value, float)
                         else str(value))
        rows.append(cells)
    show_table("0123D summary (failures by the paper's criteria; errors over successful relaxations)",
               list(columns.values()), rows, right=tuple(list(columns.values())[2:]))
