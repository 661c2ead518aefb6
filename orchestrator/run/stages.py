"""`bench`, stage by stage: prepare -> build -> assign -> relax -> score -> record.

Each stage reads the plan (never the manifest) and writes through the run folder's object.
An interruption costs nothing already computed: the result lines stay, and rerunning the same
command assigns only what is left."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from adapters import wire
from metrics.per_structure import MISSING
from orchestrator import host, provenance, runfolder
from orchestrator.console import console
from orchestrator.datasets import write_extxyz
from orchestrator.errors import BenchError, IncompleteRun
from orchestrator.images import ImageBuilder, copy_build_inputs
from orchestrator.manifest import Manifest
from orchestrator.models import Model
from orchestrator.run.plan import RunPlan
from orchestrator.run.progress import ResultsProgress
from orchestrator.run.scoring import print_summary, score_run, scoring_key, symmetry_record
from orchestrator.runfolder import RunFolder
from orchestrator.shards import read_ids, write_shards
from orchestrator.weights import checkpoint_option, ensure_weights
from orchestrator.workers import make_backend
from orchestrator.workers.assignments import Assignment, one_assignment_per_slot
from orchestrator.workers.docker import DockerEngine
from orchestrator.workers.spec import worker_threading


def bench(manifest: Manifest, model_names: list[str]) -> Path:
    return run_plan(RunPlan.resolve(manifest, model_names))


def run_plan(plan: RunPlan) -> Path:
    """Relax, merge, score and report a resolved plan; its run folder."""
    docker = DockerEngine()
    folder = plan.folder.create()
    console.print(f"run folder {folder.root}: {len(plan.structures)} structures x {len(plan.models)} model(s)")
    with folder.lock():  # one orchestrator per run folder; released however this process ends
        run = Run(plan, docker, folder)
        run.prepare()
        run.build()
        run.relax(run.assign())
        table = run.score()
        if table is not None:
            run.record(table)
    return folder.root


class Run:
    """One bench of a plan into its run folder; the stages in the order run_plan calls them."""

    def __init__(self, plan: RunPlan, docker: DockerEngine, folder: RunFolder):
        self.plan, self.docker, self.folder = plan, docker, folder
        self.started = provenance.now()
        self.earlier = folder.read_provenance()  # what earlier benches of this folder recorded
        self.model_records = self.earlier.get("models", {})
        self.set_aside: list[str] = []
        self.workers: dict[str, int] = {}

    def prepare(self) -> None:
        """The backend and its slots, the shards, the reference structures and every model's
        weights (a missing one fails in seconds, before any image is built)."""
        plan = self.plan
        self.backend, self.slots = make_backend(plan, self.docker)
        self.shards = write_shards(plan.structures, self.folder.shards, plan.shard_sizes(len(self.slots)))
        if not self.folder.reference.exists():
            write_extxyz(self.folder.reference, plan.structures)
        self.weights = {model.name: ensure_weights(model, plan.cache.weights) for model in plan.models}
        self.backend.stop_leftovers([model.name for model in plan.models])  # nothing writes while files are tidied

    def build(self) -> None:
        """Each model's image (built, reused, or the bundle's), checked against the results the
        folder holds, and recorded with the inputs that built it."""
        s = self.plan.settings
        builder = ImageBuilder(self.docker, s.base_images, s.ca_bundle, s.wheelhouse, s.build_logs,
                               echo=console.print, source=self.plan.source)
        self.images = {}
        for model in self.plan.models:
            image = self.plan.images.get(model.name) or builder.model(model)
            image_id = self.docker.image_id(image)
            self.folder.check_image(model.name, image, image_id)
            fresh = self.model_records.get(model.name, {}).get("image_id") != image_id
            if fresh:
                self.model_records[model.name] = self.model_record(model, image, image_id, builder)
            if fresh or not (self.folder.build / "images" / model.name).is_dir():  # or a folder from before bundles
                copy_build_inputs(self.folder.build, model, builder.models, self.plan.source)
            self.images[model.name] = image

    def model_record(self, model: Model, image: str, image_id: str, builder: ImageBuilder) -> dict:
        return {"image": image, "image_id": image_id, "calculator": model.calculator, "options": model.options,
                "description": model.description, "dtype": model.dtype, "paper_tag": model.paper_tag,
                "groups": model.groups, "weights": self.weights[model.name], **builder.runtime_record(model.python),
                **provenance.image_versions(self.docker, image, model.packages)}

    def assign(self) -> list[Assignment]:
        """An assignment per shard that still has a structure of a model to relax; the lines of
        a structure that crashed or timed out are set aside first (and said)."""
        plan, timeout_s = self.plan, self.plan.settings.structure_timeout_s
        shard_ids = {shard: set(read_ids(shard)) for shard in self.shards}
        assignments = []
        for model in plan.models:
            job = plan.job(model, {**model.options, **checkpoint_option(model)})
            out_dir = self.folder.model_results(model.name)
            for shard, ids in shard_ids.items():
                try:
                    found = wire.set_aside(out_dir / f"{shard.stem}.jsonl", ids, timeout_s)
                except OSError as exc:
                    raise BenchError(str(exc)) from None
                self.set_aside += found.set_aside
                if not ids <= set(found.kept):
                    assignments.append(Assignment(model=model.name, image=self.images[model.name], shards=(shard,),
                                                  out_dir=out_dir, job=job))
        for message in self.set_aside:
            console.print(f"[yellow]set aside[/yellow]: {message}")
        if plan.engine == "batched" and plan.settings.backend == "docker":
            assignments = one_assignment_per_slot(assignments, len(self.slots))  # a refilled batch stays full
        return assignments

    def relax(self, assignments: list[Assignment]) -> None:
        """Every assignment run by the backend, with progress read from the result lines."""
        s, slots = self.plan.settings, self.slots
        at_once = len(slots) if s.backend == "docker" else s.slurm["max_simultaneous_tasks"]
        self.workers = {model: min(n, at_once or n) for model, n in Counter(a.model for a in assignments).items()}
        self.relaxed_any = bool(assignments)
        if assignments:
            busy = min(len(assignments), at_once or len(assignments))
            console.print(f"{sum(len(a.shards) for a in assignments)} shard(s) in {len(assignments)} worker(s), "
                          f"{busy} at a time on {len(slots)} slot(s): {', '.join(slot.name for slot in slots)}")
            totals = {model.name: len(self.plan.structures) for model in self.plan.models}
            tracker = ResultsProgress(self.folder, totals)
            with tracker.progress:
                self.backend.run(assignments, on_tick=tracker.update)
        else:
            console.print("every structure already relaxed: reusing the results")
        for failure in self.backend.failures:
            console.print(f"[red]worker failed[/red]: {failure}")

    def score(self):
        """The merged, scored table (results.csv, relaxed.extxyz); None where a rerun changed
        nothing the scores depend on (the table, provenance and report are kept)."""
        self.scores_key = scoring_key(self.folder, self.plan.settings)
        if not self.relaxed_any and not self.set_aside and self.folder.scored_with(self.scores_key):
            from orchestrator.report import read_results

            print_summary(read_results(self.folder.results))
            console.print(f"scores unchanged; {self.report_line()}")
            return None
        self.folder.scored_key.unlink(missing_ok=True)
        if host.LOCK.is_file():  # the lock of the stack that scores it, for its bundle
            runfolder.write_bytes(self.folder.build / "host" / host.LOCK.name, host.LOCK.read_bytes())
        return score_run(self.folder, self.plan.settings, self.plan.structures)

    def record(self, table) -> None:
        """Provenance, the report and the scoring key; an incomplete run says what is missing
        and why, and exits as such."""
        from orchestrator.report import write_run_report

        missing = table[table["failure_reason"] == MISSING].groupby("model").size().to_dict()
        self.folder.write_provenance(self.provenance_document(missing))
        if self.plan.settings.report:
            write_run_report(self.folder.root)
        if not missing:
            runfolder.write_text(self.folder.scored_key, self.scores_key)
        print_summary(table)
        console.print(self.report_line())
        if missing:
            counts = ", ".join(f"{model} {n}" for model, n in missing.items())
            why = "; ".join(self.backend.failures) or "the workers were stopped"
            raise IncompleteRun(f"incomplete run {self.folder.root}: {sum(missing.values())} structure(s) have no "
                                f"result ({counts}). Why: {why}. Finished structures are kept: fix the cause and "
                                "rerun the same command to finish.")

    def report_line(self) -> str:
        """Where the run's report is, or how to write it."""
        report = self.folder.report / "report.md"
        if report.is_file():
            return f"report: {report}"
        return f"report: none (report: false); `make report` writes {report}"

    def provenance_document(self, missing: dict) -> dict:
        plan, s, record, dataset = self.plan, self.plan.settings, self.earlier, self.plan.dataset
        return {
            **record, "run_id": self.folder.name,
            "status": "incomplete" if missing else "complete", "missing": missing,
            "worker_failures": self.backend.failures,
            "set_aside": record.get("set_aside", []) + self.set_aside,
            "started": record.get("started", self.started), "finished": provenance.now(),
            "command": sys.argv, "host": provenance.host_info(self.docker),
            "dataset": {"name": dataset.name, "files": {p.name: dataset.sha256[p.name] for p in dataset.files},
                        "paths": {p.name: str(p) for p in dataset.files},
                        "identity": dataset.identity, "subset": s.subset, "subset_key": plan.subset_key,
                        "structures": len(plan.structures), "skipped": dataset.skipped},
            "protocol": s.protocol, "engine": plan.engine, "batch_atoms": s.batch_atoms,
            "structure_timeout_s": s.structure_timeout_s, "stall_timeout_s": s.stall_timeout_s,
            "fragmentation_limits_a": s.fragmentation_limits_a, "symmetry": symmetry_record(),
            "scoring": host.scoring_stack(),
            **self.backend.provenance(), "devices": [slot.__dict__ for slot in self.slots],
            "worker_threading": worker_threading(self.slots[0].threads), "settings_sources": s.sources,
            "workers": {**record.get("workers", {}), **self.workers},  # per model, at a time: what the speed card timed
            "models": self.model_records, "models_requested": s.models_requested,
            **({"reproduction": {**record.get("reproduction", {}), **plan.reproduces}} if plan.reproduces else {}),
        }
