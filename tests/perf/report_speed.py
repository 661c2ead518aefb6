"""How long a run's report takes, and how large its files are (a script, not a test).

    .venv/bin/python tests/perf/report_speed.py [N_STRUCTURES] [N_MODELS]

Builds a run folder of N synthetic structures per model (metrics_speed.build: a quarter
each 0D-3D, 1-40 atoms, some pulled apart), scores it (symmetry included), writes
results, reference.extxyz and relaxed.extxyz as `make bench` does, then times
write_run_report (the tables, the static figures, report.html and explore.html) and prints
the size of each page and of the report folder.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from metrics_speed import build  # noqa: E402

from metrics.per_structure import score  # noqa: E402
from orchestrator.datasets import write_extxyz  # noqa: E402
from orchestrator.merge import write_relaxed, write_table
from orchestrator.runfolder import RunFolder  # noqa: E402
from orchestrator.report import write_run_report  # noqa: E402


def main() -> None:
    n_structures = int(sys.argv[1]) if len(sys.argv) > 1 else 2_000
    n_models = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    results, reference, relaxed = build(n_structures, n_models)
    for atoms in relaxed.values():
        atoms.info.clear()  # as the workers' structures come: no labels of the dataset
    results["elements"] = [" ".join(sorted(set(reference[sid].get_chemical_symbols()))) for sid in results["id"]]
    results["finished_at"] = 1.0e9 + results.index * 0.1
    run = Path(tempfile.mkdtemp(prefix="report-speed-")) / f"synthetic-{n_structures}"
    run.mkdir()
    t0 = time.perf_counter()
    table = score(results, reference, relaxed, {"2D": 7.5, "1D": 12.5, "0D": 20.0})
    print(f"score: {len(table):,} rows in {time.perf_counter() - t0:.1f} s")
    write_table(RunFolder(run), table)
    write_relaxed(run / "relaxed.extxyz", table, relaxed)
    write_extxyz(run / "reference.extxyz", list(reference.values()))
    (run / "provenance.json").write_text(json.dumps({"run_id": run.name, "status": "complete",
                                                     "dataset": {"name": "synthetic"}}))
    t0 = time.perf_counter()
    write_run_report(run)
    seconds = time.perf_counter() - t0
    out = run / "report"
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"report of {len(table):,} rows in {seconds:.1f} s: report.html {(out / 'report.html').stat().st_size / 1e6:.1f} MB,"
          f" explore.html {(out / 'explore.html').stat().st_size / 1e6:.1f} MB, report/ {total / 1e6:.1f} MB ({out})")


if __name__ == "__main__":
    main()
