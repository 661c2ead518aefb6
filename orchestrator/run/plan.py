"""A run, resolved once from the manifest, the command line and the environment: the
models, the data, the protocol, the engine, every setting the later stages read (each with
its source), the run folder and the cache. Every stage of `bench` reads the plan, never the
manifest again."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from adapters.wire import Job
from orchestrator.console import console
from orchestrator.datasets import Dataset, load_dataset, select, subset_key
from orchestrator.errors import BenchError
from orchestrator.models import REPO, Model, discover_models, resolve_models
from orchestrator.manifest import CacheLayout, Manifest
from orchestrator.runfolder import RunFolder
from orchestrator.shards import cut


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


@dataclass(frozen=True)
class RunSettings:
    """Every setting the run's stages read, taken from the manifest once; `sources` says
    where each came from (benchmark.yaml, the environment, the command line, a default)."""

    backend: str                     # docker | slurm
    slurm: dict                      # benchmark.yaml's slurm section
    slurm_image_dir: Path | None     # where SLURM nodes find the images (None: the cache's; Docker's: the engine)
    devices: str | list
    workers_per_device: int | None
    threads_per_worker: int | None
    worker_memory_gb: float | None
    worker_pids: int
    max_worker_retries: int
    shard_size: int
    batch_atoms: int
    structure_timeout_s: float | None
    stall_timeout_s: float
    fragmentation_limits_a: dict
    protocol: dict                   # benchmark.yaml's protocol section, as provenance records it
    subset: dict
    models_requested: list
    base_images: dict                # what the image builder needs
    ca_bundle: Path | None
    wheelhouse: Path | None
    build_logs: Path
    report: bool                     # write the run's report at its end
    sources: dict = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> "RunSettings":
        return cls(backend=manifest["backend"], slurm=manifest["slurm"],
                   slurm_image_dir=manifest.path_setting("slurm.image_dir"), devices=manifest["devices"],
                   workers_per_device=manifest["workers_per_device"], threads_per_worker=manifest["threads_per_worker"],
                   worker_memory_gb=manifest["worker_memory_gb"], worker_pids=manifest["worker_pids"],
                   max_worker_retries=manifest["max_worker_retries"], shard_size=manifest["shard_size"],
                   batch_atoms=manifest["batch_atoms"], structure_timeout_s=manifest["structure_timeout_s"],
                   stall_timeout_s=manifest.stall_timeout_s(),
                   fragmentation_limits_a=manifest["fragmentation_limits_a"], protocol=manifest["protocol"],
                   subset=manifest["subset"], models_requested=list(manifest["models"]),
                   base_images=manifest["base_images"], ca_bundle=manifest.path_setting("ca_bundle"),
                   wheelhouse=manifest.path_setting("wheelhouse"), build_logs=manifest.cache.build_logs,
                   report=manifest["report"], sources=manifest.sources)


@dataclass
class RunPlan:
    settings: RunSettings
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
        return cls(settings=RunSettings.from_manifest(manifest), models=models, dataset=dataset,
                   structures=structures, subset_key=key, protocol=protocol, engine=manifest["engine"],
                   run_dir=run_dir, cache=cache, source=source)

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.run_dir)

    def job(self, model: Model, options: dict) -> Job:
        """What each worker of `model` is asked to do (each worker's slot sets the device)."""
        s = self.settings
        return Job(calculator=model.calculator, options=options, protocol=self.protocol, device="cpu", engine=self.engine,
                   batch_atoms=s.batch_atoms, structure_timeout_s=s.structure_timeout_s,
                   stall_timeout_s=s.stall_timeout_s, max_retries=s.max_worker_retries)

    def shard_sizes(self, slots: int) -> list[int]:
        """The run's shards, as sizes in order. A run folder keeps the cut it started with, so
        resumed runs line up; a reproduction takes its bundle's (`sharding`). A folder from
        before the cut was recorded holds only its shard_size: consecutive shards of that size."""
        folder, wanted = self.folder, self.settings.shard_size
        record = folder.read_sharding()
        if record is None:
            record = self.sharding or {"shard_size": wanted, "slots": slots,
                                       "sizes": cut([len(a) for a in self.structures], wanted, slots)}
            folder.write_sharding(record)
        elif record["shard_size"] != wanted:
            console.print(f"keeping the shards of this run folder (shard_size {record['shard_size']}, "
                          f"asked: {wanted})")
        size, total = record["shard_size"], len(self.structures)
        sizes = record.get("sizes") or [min(size, total - start) for start in range(0, total, size)]
        if sum(sizes) != total:
            raise BenchError(f"{folder.sharding}: its shards hold {sum(sizes)} structures, the run {total}; "
                             "remove the file and the shards/ folder to cut them again")
        return sizes
