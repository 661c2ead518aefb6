"""A run, resolved once from the manifest: the models, the data, the protocol, the engine,
the run folder and the cache; and the run folder's name, lock and progress. Every later
stage of `bench` reads the plan, never the manifest again."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from adapters.wire import Job
from orchestrator import runfolder
from orchestrator.console import console
from orchestrator.datasets import Dataset, load_dataset, select, subset_key
from orchestrator.errors import BenchError
from orchestrator.images import REPO, Model, discover_models, resolve_models
from orchestrator.manifest import CacheLayout, Manifest
from orchestrator.shards import complete_lines, cut


def pick_models(manifest: Manifest, names: list[str], source: Path = REPO) -> list[Model]:
    """The models named on the command line or in the manifest (folder, paper tag, alias, or
    paper), from the model folders of source/images (the checkout's, or a bundle's)."""
    from metrics.paper import table_ii

    try:
        return resolve_models(names, discover_models(source / "images"), list(dict.fromkeys(table_ii()["tag"])))
    except BenchError as exc:
        raise BenchError(f"{exc} (models from {manifest.sources.get('models', 'command line')})") from None


def run_identity(dataset: Dataset, subset: str, protocol: dict, engine: str) -> str:
    """Run folder name: the data, the subset, the protocol and the engine decide the results
    (the reference engine adds nothing to the hash: earlier run folders keep their names)."""
    decided = protocol if engine == "ase" else {**protocol, "engine": engine}
    digest = hashlib.sha256(json.dumps([dataset.identity, subset, decided], sort_keys=True).encode())
    name = Path(dataset.name).name.split(".")[0] if Path(dataset.name).exists() else dataset.name
    slug = "".join(c if c.isalnum() or c in "-." else "-" for c in f"{name}-{subset}")[:60]
    return f"{slug}-{digest.hexdigest()[:8]}"


@dataclass
class RunPlan:
    manifest: Manifest
    models: list[Model]
    dataset: Dataset
    structures: list        # the subset's structures (ase Atoms)
    subset_key: str
    protocol: dict          # wire.Job's protocol
    engine: str             # ase | batched
    run_dir: Path
    cache: CacheLayout
    source: Path = REPO               # the tree whose images/ and adapters/ build the images
    images: dict = field(default_factory=dict)  # model -> an image to run as it is (a bundle's), not built
    reproduces: dict | None = None    # the bundle this run reproduces (provenance "reproduction")
    sharding: dict | None = None      # the shards to cut (a bundle's sharding.json), not cut anew

    @classmethod
    def resolve(cls, manifest: Manifest, model_names: list[str], source: Path = REPO,
                run_dir: Path | None = None) -> "RunPlan":
        models = pick_models(manifest, model_names, source)
        cache = manifest.cache
        dataset = load_dataset(manifest["dataset"], manifest["datasets"], cache.datasets)
        structures = select(dataset.structures, **manifest["subset"])
        if not structures:
            raise BenchError(f"the subset {manifest['subset']} of dataset {dataset.name} selects no structure")
        key = subset_key(**manifest["subset"])
        protocol = manifest.relaxation_protocol()
        run_dir = run_dir or manifest.path_setting("results_dir") / run_identity(dataset, key, protocol,
                                                                                   manifest["engine"])
        return cls(manifest=manifest, models=models, dataset=dataset, structures=structures, subset_key=key,
                   protocol=protocol, engine=manifest["engine"], run_dir=run_dir, cache=cache, source=source)

    def job(self, model: Model, options: dict) -> Job:
        """What each worker of `model` is asked to do (the device is the slot's)."""
        return Job(calculator=model.calculator, options=options, protocol=self.protocol, engine=self.engine,
                   batch_atoms=self.manifest["batch_atoms"], structure_timeout_s=self.manifest["structure_timeout_s"],
                   stall_timeout_s=self.manifest.stall_timeout_s(), max_retries=self.manifest["max_worker_retries"])

    def shard_sizes(self, slots: int) -> list[int]:
        """The run's shards, as sizes in order. A run folder keeps the cut it started with, so
        resumed runs line up; a reproduction takes its bundle's (`sharding`). A folder from
        before the cut was recorded holds only its shard_size: consecutive shards of that size."""
        path = self.run_dir / "sharding.json"
        wanted = self.manifest["shard_size"]
        if path.exists():
            record = json.loads(path.read_text())
            if record["shard_size"] != wanted:
                console.print(f"keeping the shards of this run folder (shard_size {record['shard_size']}, "
                              f"asked: {wanted})")
        else:
            record = self.sharding or {"shard_size": wanted, "slots": slots,
                                       "sizes": cut([len(a) for a in self.structures], wanted, slots)}
            runfolder.write_text(path, json.dumps(record) + "\n")
        size, total = record["shard_size"], len(self.structures)
        sizes = record.get("sizes") or [min(size, total - start) for start in range(0, total, size)]
        if sum(sizes) != total:
            raise BenchError(f"{path}: its shards hold {sum(sizes)} structures, the run {total}; "
                             "remove the file and the shards/ folder to cut them again")
        return sizes


def check_image(out_dir: Path, image: str, image_id: str) -> None:
    """Never mix results of two different images in one run folder."""
    record = out_dir / "image.json"
    if record.exists():
        previous = json.loads(record.read_text())
        if previous["image"] != image and any(out_dir.glob("shard-*.jsonl")):
            raise BenchError(f"{out_dir} holds results of image {previous['image']}, but the model now builds "
                             f"{image} (its Dockerfile, model.yaml or the code it runs changed). Remove {out_dir} "
                             "to relax again with the new image, or restore the old inputs.")
    runfolder.write_text(record, json.dumps({"image": image, "image_id": image_id}) + "\n")


class RunLock:
    """An exclusive lock on a run folder for one orchestrator; the kernel releases it when
    the process dies, however it dies."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"

    def __enter__(self) -> "RunLock":
        self.handle = runfolder.open_append(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "another process"
            self.handle.close()
            raise BenchError(f"{self.path.parent}: another bench is running on this run folder ({holder}); "
                             "wait for it to finish, or give this one another results_dir") from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"pid {os.getpid()}\n")
        self.handle.flush()
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()


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
