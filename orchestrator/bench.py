"""`bench`: plan -> shards -> images -> workers -> merged, scored results."""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter
from pathlib import Path

from adapters import wire
from metrics.per_structure import MISSING
from orchestrator import host, merge, provenance, runfolder
from orchestrator.console import console, show_table
from orchestrator.datasets import write_extxyz
from orchestrator.errors import BenchError, IncompleteRun
from orchestrator.images import REPO, ImageBuilder, copy_build_inputs
from orchestrator.manifest import Manifest
from orchestrator.plan import ResultsProgress, RunLock, RunPlan, check_image
from orchestrator.shards import read_ids, write_shards
from orchestrator.weights import checkpoint_option, ensure_weights
from orchestrator.workers import Assignment, device_slots, one_assignment_per_slot
from orchestrator.workers.docker import DockerBackend, DockerEngine
from orchestrator.workers.spec import worker_threading


def bench(manifest: Manifest, model_names: list[str]) -> Path:
    return run_plan(RunPlan.resolve(manifest, model_names))


def run_plan(plan: RunPlan) -> Path:
    """Relax, merge, score and report a resolved plan; its run folder."""
    engine = DockerEngine()
    started = provenance.now()
    runfolder.mkdir(plan.run_dir)
    runfolder.refuse_links(plan.run_dir)  # nothing is written through a link planted in the run folder
    console.print(f"run folder {plan.run_dir}: {len(plan.structures)} structures x {len(plan.models)} model(s)")
    with RunLock(plan.run_dir):  # one orchestrator per run folder; released however this process ends
        return _relax_and_score(plan, engine, started)


def _relax_and_score(plan: RunPlan, engine, started: str) -> Path:
    manifest, run_dir = plan.manifest, plan.run_dir
    backend, slots = make_backend(plan, engine)
    shards = write_shards(plan.structures, run_dir / "shards", plan.shard_sizes(len(slots)))
    if not (run_dir / "reference.extxyz").exists():
        write_extxyz(run_dir / "reference.extxyz", plan.structures)

    weights = {model.name: ensure_weights(model, plan.cache.weights) for model in plan.models}  # fails in seconds
    builder = ImageBuilder.from_manifest(engine, manifest, echo=console.print, source=plan.source)
    record = provenance.read(run_dir / "provenance.json")
    model_records = record.get("models", {})
    assignments, totals, set_aside = [], {}, []
    shard_ids = {shard: set(read_ids(shard)) for shard in shards}
    timeout_s = manifest["structure_timeout_s"]
    backend.stop_leftovers([model.name for model in plan.models])  # nothing writes while the files are tidied
    for model in plan.models:
        image = plan.images.get(model.name) or builder.model(model)
        image_id = engine.image_id(image)
        out_dir = run_dir / "raw" / model.name
        check_image(out_dir, image, image_id)
        fresh = model_records.get(model.name, {}).get("image_id") != image_id
        if fresh:
            model_records[model.name] = {"image": image, "image_id": image_id,
                                         "calculator": model.calculator,
                                         "options": model.options, "description": model.description,
                                         "dtype": model.dtype, "paper_tag": model.paper_tag,
                                         "groups": model.groups,
                                         "weights": weights[model.name],
                                         **builder.runtime_record(model.python),
                                         **provenance.image_versions(engine, image, model.packages)}
        if fresh or not (run_dir / "build" / "images" / model.name).is_dir():  # or a run folder from before bundles
            copy_build_inputs(run_dir / "build", model, builder.models, plan.source)  # what built that image
        totals[model.name] = len(plan.structures)
        job = plan.job(model, {**model.options, **checkpoint_option(model)})
        for shard, ids in shard_ids.items():
            out = out_dir / f"{shard.stem}.jsonl"
            try:
                found = wire.set_aside(out, ids, timeout_s)
            except OSError as exc:
                raise BenchError(str(exc)) from None
            set_aside += found.set_aside
            if not ids <= set(found.kept):
                assignments.append(Assignment(model=model.name, image=image, shards=(shard,), out_dir=out_dir,
                                              job=job))
    for message in set_aside:
        console.print(f"[yellow]set aside[/yellow]: {message}")
    if plan.engine == "batched" and manifest["backend"] == "docker":
        assignments = one_assignment_per_slot(assignments, len(slots))  # a batch refilled across shards stays full

    at_once = len(slots) if manifest["backend"] == "docker" else manifest["slurm"]["max_simultaneous_tasks"]
    workers = {model: min(n, at_once or n) for model, n in Counter(a.model for a in assignments).items()}
    if assignments:
        busy = min(len(assignments), at_once or len(assignments))
        console.print(f"{sum(len(a.shards) for a in assignments)} shard(s) in {len(assignments)} worker(s), "
                      f"{busy} at a time on {len(slots)} slot(s): {', '.join(s.name for s in slots)}")
        tracker = ResultsProgress(run_dir, totals)
        with tracker.progress:
            backend.run(assignments, on_tick=tracker.update)
    else:
        console.print("every structure already relaxed: reusing the results")
    for failure in backend.failures:
        console.print(f"[red]worker failed[/red]: {failure}")

    scores_key = scoring_key(run_dir, manifest)
    if not assignments and not set_aside and scored_already(run_dir, scores_key):  # a no-op rerun
        from orchestrator.report import read_results

        print_summary(read_results(run_dir / "results.csv"))
        console.print(f"scores and report unchanged: {run_dir / 'report' / 'report.md'}")
        return run_dir
    (run_dir / SCORED).unlink(missing_ok=True)
    if host.LOCK.is_file():  # the lock of the stack that scores it, for its bundle
        runfolder.write_bytes(run_dir / "build" / "host" / host.LOCK.name, host.LOCK.read_bytes())
    table = score_run(run_dir, manifest, plan.structures)
    missing = table[table["failure_reason"] == MISSING].groupby("model").size().to_dict()
    dataset = plan.dataset
    provenance.write(run_dir / "provenance.json", {
        **record, "run_id": run_dir.name,
        "status": "incomplete" if missing else "complete", "missing": missing,
        "worker_failures": backend.failures,
        "set_aside": record.get("set_aside", []) + set_aside,
        "started": record.get("started", started), "finished": provenance.now(),
        "command": sys.argv, "host": provenance.host_info(engine),
        "dataset": {"name": dataset.name, "files": {p.name: dataset.sha256[p.name] for p in dataset.files},
                    "paths": {p.name: str(p) for p in dataset.files},
                    "identity": dataset.identity, "subset": manifest["subset"], "subset_key": plan.subset_key,
                    "structures": len(plan.structures), "skipped": dataset.skipped},
        "protocol": manifest["protocol"], "engine": plan.engine, "batch_atoms": manifest["batch_atoms"],
        "structure_timeout_s": timeout_s, "stall_timeout_s": manifest.stall_timeout_s(),
        "fragmentation_limits_a": manifest["fragmentation_limits_a"], "symmetry": symmetry_record(),
        "scoring": host.scoring_stack(),
        **backend.provenance(), "devices": [s.__dict__ for s in slots],
        "worker_threading": worker_threading(slots[0].threads), "settings_sources": manifest.sources,
        "workers": {**record.get("workers", {}), **workers},  # per model, at a time: what the speed card timed
        "models": model_records, "models_requested": list(manifest["models"]),
        **({"reproduction": {**record.get("reproduction", {}), **plan.reproduces}} if plan.reproduces else {}),
    })
    from orchestrator.report import write_run_report

    report = write_run_report(run_dir)
    if not missing:
        runfolder.write_text(run_dir / SCORED, scores_key)
    print_summary(table)
    console.print(f"report: {report}")
    if missing:
        counts = ", ".join(f"{model} {n}" for model, n in missing.items())
        why = "; ".join(backend.failures) or "the workers were stopped"
        raise IncompleteRun(f"incomplete run {run_dir}: {sum(missing.values())} structure(s) have no result "
                            f"({counts}). Why: {why}. Finished structures are kept: fix the cause and rerun "
                            "the same command to finish.")
    return run_dir


#: The inputs of a run folder's scores and report when they were last written (see scoring_key).
SCORED = "scored.key"


def scoring_key(run_dir: Path, manifest: Manifest) -> str:
    """What the scores and the report of a run folder depend on: every result file (name,
    size, time), the settings the scoring reads, the scoring code itself and the packages
    it runs on (orchestrator.host)."""
    raw = sorted((p.relative_to(run_dir).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                 for p in (run_dir / "raw").glob("*/shard-*.jsonl"))
    code = hashlib.sha256()
    for path in sorted([*(REPO / "metrics").rglob("*.py"), *(REPO / "metrics").rglob("*.csv"),
                        REPO / "orchestrator" / "merge.py", REPO / "adapters" / "wire.py"]):
        code.update(path.read_bytes())
    stack = host.scoring_stack()
    return json.dumps({"raw": raw, "fragmentation_limits_a": manifest["fragmentation_limits_a"],
                       "structure_timeout_s": manifest["structure_timeout_s"], "code": code.hexdigest(),
                       "symmetry": symmetry_record(), "scoring": [stack["python"], stack["packages"]]},
                      sort_keys=True) + "\n"


def symmetry_record() -> dict:
    """Which library and tolerances gave the symmetry columns (its version changes them)."""
    from metrics import symmetry

    return {"library": "moyopy", "version": symmetry.version(), "symprec_a": list(symmetry.SYMPRECS)}


def scored_already(run_dir: Path, key: str) -> bool:
    """The run folder's table, provenance and report were written from exactly these inputs."""
    done = run_dir / SCORED
    return (done.is_file() and done.read_text() == key and (run_dir / "results.csv").is_file()
            and (run_dir / "provenance.json").is_file() and (run_dir / "report" / "report.md").is_file())


def make_backend(plan: RunPlan, engine):
    """The backend and the slots its workers get: this machine's devices (docker), or one
    array task's resources (slurm)."""
    manifest = plan.manifest
    if manifest["backend"] == "slurm":
        from orchestrator.workers.slurm import SlurmBackend, check_commands, check_shared, task_slot

        settings = manifest["slurm"]
        check_commands(settings["runtime"])
        check_shared(settings, {"results_dir": plan.run_dir, "cache_dir": plan.cache.root})
        image_dir = manifest.path_setting("slurm.image_dir")
        if image_dir is None and settings["runtime"] == "apptainer":
            image_dir = plan.cache.images
        backend = SlurmBackend(engine, settings, plan.run_dir, plan.cache.weights, image_dir,
                               pids=manifest["worker_pids"])
        return backend, [task_slot(settings, manifest["worker_pids"])]
    slots = device_slots(manifest["devices"], manifest["workers_per_device"], manifest["threads_per_worker"],
                         memory_gb=manifest["worker_memory_gb"], pids=manifest["worker_pids"],
                         batched=plan.engine == "batched")
    return DockerBackend(engine, slots, plan.run_dir, plan.cache.weights, manifest["max_worker_retries"]), slots


def score_run(run_dir: Path, manifest: Manifest, structures: list):
    """Merge every model's results in the run folder, score them, write the table and structures."""
    from metrics.per_structure import score

    shards = {shard.stem: set(read_ids(shard)) for shard in sorted((run_dir / "shards").glob("shard-*.jsonl"))}
    found = {d.name: merge.read_results(d, shards, manifest["structure_timeout_s"])
             for d in sorted((run_dir / "raw").iterdir()) if d.is_dir()}
    table, relaxed = merge.merge(structures, found)
    reference = {a.info["id"]: a for a in structures}
    table = score(table, reference, relaxed, manifest["fragmentation_limits_a"])
    merge.write_table(run_dir, table)
    merge.write_relaxed(run_dir / "relaxed.extxyz", table, relaxed)
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
