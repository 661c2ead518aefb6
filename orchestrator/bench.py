"""`bench`: dataset -> shards -> images -> containers -> merged, scored results."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from adapters import results
from metrics.per_structure import MISSING
from orchestrator import merge, provenance
from orchestrator.engine import console, docker_client, show_table
from orchestrator.datasets import load_dataset, select, subset_key, write_extxyz
from orchestrator.errors import BenchError, IncompleteRun
from orchestrator.images import REPO, ImageBuilder, Model, discover_models, resolve_models
from orchestrator.manifest import Manifest
from orchestrator.scheduler import Job, RunLock, Scheduler, device_slots, one_job_per_slot, worker_threading
from orchestrator.shards import complete_lines, read_ids, write_shards
from orchestrator.weights import checkpoint_option, ensure_weights


def run_identity(dataset, subset: str, protocol: dict) -> str:
    """Run folder name: the data, the subset and the protocol decide the results."""
    digest = hashlib.sha256(json.dumps([dataset.identity, subset, protocol], sort_keys=True).encode())
    name = Path(dataset.name).name.split(".")[0] if Path(dataset.name).exists() else dataset.name
    slug = "".join(c if c.isalnum() or c in "-." else "-" for c in f"{name}-{subset}")[:60]
    return f"{slug}-{digest.hexdigest()[:8]}"


def pick_models(manifest: Manifest, names: list[str]) -> list[Model]:
    """The models named on the command line or in the manifest (folder, paper tag, alias, or paper)."""
    from metrics.paper import table_ii

    try:
        return resolve_models(names, discover_models(), list(dict.fromkeys(table_ii()["tag"])))
    except BenchError as exc:
        raise BenchError(f"{exc} (models from {manifest.sources.get('models', 'command line')})") from None


def check_image(out_dir: Path, image: str, image_id: str) -> None:
    """Never mix results of two different images in one run folder."""
    record = out_dir / "image.json"
    if record.exists():
        previous = json.loads(record.read_text())
        if previous["image"] != image and any(out_dir.glob("shard-*.jsonl")):
            raise BenchError(f"{out_dir} holds results of image {previous['image']}, but the model now builds "
                             f"{image} (its Dockerfile, model.yaml or adapters/ changed). Remove {out_dir} "
                             "to relax again with the new image, or restore the old inputs.")
    out_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"image": image, "image_id": image_id}) + "\n")


class ResultsProgress:
    """Counts finished and failed structures per model by tailing the result files."""

    def __init__(self, run_dir: Path, totals: dict[str, int]):
        self.run_dir = run_dir
        self.offsets: dict[Path, int] = {}
        self.done = {m: 0 for m in totals}
        self.failed = {m: 0 for m in totals}
        self.progress = Progress(TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("failed {task.fields[failed]}"), TextColumn("{task.fields[rate]}"),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=console)
        self.tasks = {m: self.progress.add_task(m, total=t, failed=0, rate="") for m, t in totals.items()}

    def update(self) -> None:
        for model, task in self.tasks.items():
            for path in sorted((self.run_dir / "raw" / model).glob("shard-*.jsonl")):
                with path.open("rb") as handle:
                    handle.seek(self.offsets.get(path, 0))
                    chunk = handle.read()
                self.offsets[path] = self.offsets.get(path, 0) + chunk.rfind(b"\n") + 1
                for line in complete_lines(chunk):
                    self.done[model] += 1
                    self.failed[model] += bool(json.loads(line).get("failure_reason"))
            speed = self.progress.tasks[task].speed
            self.progress.update(task, completed=self.done[model], failed=self.failed[model],
                                 rate=f"{speed:.2f}/s" if speed else "")


def bench(manifest: Manifest, model_names: list[str]) -> Path:
    models = pick_models(manifest, model_names)
    client = docker_client()
    started = provenance.now()
    cache_dir = manifest.path_setting("cache_dir")
    dataset = load_dataset(manifest["dataset"], manifest["datasets"], cache_dir / "datasets")
    subset = manifest["subset"]
    structures = select(dataset.structures, **subset)
    if not structures:
        raise BenchError(f"the subset {subset} of dataset {dataset.name} selects no structure")
    key = subset_key(**subset)
    protocol = manifest.relaxation_protocol()
    run_dir = manifest.path_setting("results_dir") / run_identity(dataset, key, protocol)
    run_dir.mkdir(parents=True, exist_ok=True)
    console.print(f"run folder {run_dir}: {len(structures)} structures x {len(models)} model(s)")
    with RunLock(run_dir):  # one orchestrator per run folder; released however this process ends
        return _relax_and_score(manifest, models, client, dataset, structures, run_dir, started)


def _relax_and_score(manifest: Manifest, models: list[Model], client, dataset, structures: list, run_dir: Path,
                     started: str) -> Path:
    cache_dir = manifest.path_setting("cache_dir")
    subset = manifest["subset"]
    key = subset_key(**subset)
    protocol = manifest.relaxation_protocol()

    scheduler, slots = make_scheduler(manifest, client, run_dir)
    shard_size = _fixed_shard_size(run_dir, manifest["shard_size"])
    shards = write_shards(structures, run_dir / "shards", shard_size)
    if not (run_dir / "reference.extxyz").exists():
        write_extxyz(run_dir / "reference.extxyz", structures)

    weights = {model.name: ensure_weights(model, cache_dir / "weights") for model in models}  # fails in seconds
    builder = ImageBuilder.from_manifest(client, manifest, echo=console.print)
    record = provenance.read(run_dir / "provenance.json")
    model_records = record.get("models", {})
    jobs, totals, set_aside = [], {}, []
    shard_ids = {shard: set(read_ids(shard)) for shard in shards}
    timeout_s = manifest["structure_timeout_s"]
    scheduler.stop_leftovers([model.name for model in models])  # nothing writes while the files are tidied
    for model in models:
        image = builder.model(model)
        image_id = client.images.get(image).id
        out_dir = run_dir / "raw" / model.name
        check_image(out_dir, image, image_id)
        if model_records.get(model.name, {}).get("image_id") != image_id:
            model_records[model.name] = {"image": image, "image_id": image_id, "runtime_image": builder.runtime(model.python),
                                         "base_image": builder.base_image(model.python), "calculator": model.calculator,
                                         "options": model.options, "description": model.description, "dtype": model.dtype,
                                         "paper_tag": model.paper_tag, "weights": weights[model.name],
                                         **provenance.image_versions(client, image, model.packages)}
        totals[model.name] = len(structures)
        job = {"calculator": model.calculator, "options": {**model.options, **checkpoint_option(model)},
               "protocol": protocol, "structure_timeout_s": timeout_s, "batch_atoms": manifest["batch_atoms"]}
        for shard, ids in shard_ids.items():
            out = out_dir / f"{shard.stem}.jsonl"
            try:
                found = results.set_aside(out, ids, timeout_s)
            except OSError as exc:
                raise BenchError(str(exc)) from None
            set_aside += found.set_aside
            if not ids <= set(found.kept):
                jobs.append(Job(model=model.name, image=image, shards=(shard,), out_dir=out_dir, job=job))
    for message in set_aside:
        console.print(f"[yellow]set aside[/yellow]: {message}")
    if manifest["engine"] == "batched" and manifest["backend"] == "docker":
        jobs = one_job_per_slot(jobs, len(slots))  # a batch refilled across shards keeps its device busy

    if jobs:
        console.print(f"{sum(len(job.shards) for job in jobs)} shard(s) in {len(jobs)} job(s) on {len(slots)} slot(s): "
                      f"{', '.join(s.name for s in slots)}")
        tracker = ResultsProgress(run_dir, totals)
        with tracker.progress:
            scheduler.run(jobs, on_tick=tracker.update)
    else:
        console.print("every structure already relaxed: reusing the results")
    for failure in scheduler.failures:
        console.print(f"[red]worker failed[/red]: {failure}")

    scores_key = scoring_key(run_dir, manifest)
    if not jobs and not set_aside and scored_already(run_dir, scores_key):  # a no-op rerun: nothing to score again
        from metrics.report import read_results

        print_summary(read_results(run_dir / "results.csv"))
        console.print(f"scores and report unchanged: {run_dir / 'report' / 'report.md'}")
        return run_dir
    (run_dir / SCORED).unlink(missing_ok=True)
    table = score_run(run_dir, manifest, structures)
    missing = table[table["failure_reason"] == MISSING].groupby("model").size().to_dict()
    provenance.write(run_dir / "provenance.json", {
        **record, "run_id": run_dir.name,
        "status": "incomplete" if missing else "complete", "missing": missing,
        "worker_failures": scheduler.failures,
        "set_aside": record.get("set_aside", []) + set_aside,
        "started": record.get("started", started), "finished": provenance.now(),
        "command": sys.argv, "host": provenance.host_info(client),
        "dataset": {"name": dataset.name, "files": {p.name: dataset.sha256[p.name] for p in dataset.files},
                    "identity": dataset.identity, "subset": subset, "subset_key": key,
                    "structures": len(structures), "skipped": dataset.skipped},
        "protocol": manifest["protocol"], "engine": manifest["engine"], "batch_atoms": manifest["batch_atoms"],
        "structure_timeout_s": timeout_s, "stall_timeout_s": manifest.stall_timeout_s(),
        "fragmentation_limits_a": manifest["fragmentation_limits_a"],
        **scheduler.provenance(), "devices": [s.__dict__ for s in slots],
        "worker_threading": worker_threading(slots[0].threads), "settings_sources": manifest.sources,
        "models": model_records,
    })
    from metrics.report import write_run_report

    report = write_run_report(run_dir)
    if not missing:
        (run_dir / SCORED).write_text(scores_key)
    print_summary(table)
    console.print(f"report: {report}")
    if missing:
        counts = ", ".join(f"{model} {n}" for model, n in missing.items())
        why = "; ".join(scheduler.failures) or "the workers were stopped"
        raise IncompleteRun(f"incomplete run {run_dir}: {sum(missing.values())} structure(s) have no result "
                            f"({counts}). Why: {why}. Finished structures are kept: fix the cause and rerun "
                            "the same command to finish.")
    return run_dir


#: The inputs of a run folder's scores and report when they were last written (see scoring_key).
SCORED = "scored.key"


def scoring_key(run_dir: Path, manifest: Manifest) -> str:
    """What the scores and the report of a run folder depend on: every result file (name,
    size, time), the settings the scoring reads, and the scoring code itself."""
    raw = sorted((p.relative_to(run_dir).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                 for p in (run_dir / "raw").glob("*/shard-*.jsonl"))
    code = hashlib.sha256()
    for path in sorted([*(REPO / "metrics").rglob("*.py"), *(REPO / "metrics").rglob("*.csv"),
                        REPO / "orchestrator" / "merge.py", REPO / "adapters" / "results.py"]):
        code.update(path.read_bytes())
    return json.dumps({"raw": raw, "fragmentation_limits_a": manifest["fragmentation_limits_a"],
                       "structure_timeout_s": manifest["structure_timeout_s"], "code": code.hexdigest()},
                      sort_keys=True) + "\n"


def scored_already(run_dir: Path, key: str) -> bool:
    """The run folder's table, provenance and report were written from exactly these inputs."""
    done = run_dir / SCORED
    return (done.is_file() and done.read_text() == key and (run_dir / "results.csv").is_file()
            and (run_dir / "provenance.json").is_file() and (run_dir / "report" / "report.md").is_file())


def make_scheduler(manifest: Manifest, client, run_dir: Path):
    """The backend's scheduler and the slots its workers get: this machine's devices
    (docker), or one array task's resources (slurm)."""
    cache_dir = manifest.path_setting("cache_dir")
    if manifest["backend"] == "slurm":
        from orchestrator.slurm import SlurmScheduler, check_commands, check_shared, task_slot

        settings = manifest["slurm"]
        check_commands()
        check_shared(settings, {"results_dir": run_dir, "cache_dir": cache_dir})
        image_dir = manifest.path_setting("slurm.image_dir")
        if image_dir is None and settings["runtime"] == "apptainer":
            image_dir = cache_dir / "images"
        scheduler = SlurmScheduler(client, settings, run_dir, cache_dir / "weights", manifest["max_worker_retries"],
                                   image_dir, pids=manifest["worker_pids"])
        return scheduler, [task_slot(settings, manifest["worker_pids"])]
    slots = device_slots(manifest["devices"], manifest["workers_per_device"], manifest["threads_per_worker"],
                         memory_gb=manifest["worker_memory_gb"], pids=manifest["worker_pids"],
                         batched=manifest["engine"] == "batched")
    return Scheduler(client, slots, run_dir, cache_dir / "weights", manifest["max_worker_retries"],
                     stall_timeout_s=manifest.stall_timeout_s()), slots


def _fixed_shard_size(run_dir: Path, wanted: int) -> int:
    """A run folder keeps the sharding it started with, so resumed runs line up."""
    path = run_dir / "sharding.json"
    if path.exists():
        size = json.loads(path.read_text())["shard_size"]
        if size != wanted:
            console.print(f"keeping shard_size {size} of this run folder (asked: {wanted})")
        return size
    path.write_text(json.dumps({"shard_size": wanted}) + "\n")
    return wanted


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
