"""`reproduce`: rerun a bundle's run on this machine from the bundle alone, then compare.

The images are rebuilt from the bundle's own build inputs (its Dockerfiles, locks and
worker code, not this checkout's, which may be newer), or loaded from the bundle's image
archives; the data is had by its sha256 as `bench` has it (or from the bundle); the same
structures relax with the same protocol and settings into a new run folder. Device,
engine and workers may differ: they are recorded, and the comparison says so.
"""

from __future__ import annotations

import re
from pathlib import Path

from orchestrator.bundle import Bundle, label_of, open_bundle
from orchestrator.compare import Comparison, bundle_side, compare_runs, read_side, write_comparison
from orchestrator.console import console
from orchestrator.errors import BenchError
from orchestrator.images import IMAGE_PREFIX
from orchestrator.manifest import load
from orchestrator.report import write_run_report
from orchestrator.run.plan import RunPlan
from orchestrator.run.stages import run_plan
from orchestrator.runfolder import RunFolder

def bundle_overrides(bundle: Bundle, dataset: str | None, engine: str | None) -> dict:
    """The manifest overrides that make this machine's run the bundle's run: the settings that
    decide its results. The user's manifest and command line keep what the machine decides
    (devices, workers, caches), and may choose another engine."""
    record = bundle.provenance
    values = {"subset": record["dataset"]["subset"], "protocol": record["protocol"],
              "fragmentation_limits_a": record["fragmentation_limits_a"], "engine": engine or record.get("engine", "ase"),
              # a bundle from before batch_atoms was recorded ran 2000, the default of then
              "batch_atoms": record.get("batch_atoms", 2000), "structure_timeout_s": record.get("structure_timeout_s")}
    if bundle.sharding:
        values["shard_size"] = bundle.sharding["shard_size"]
    values["dataset"] = dataset or _dataset_spec(bundle)
    return values


def _dataset_spec(bundle: Bundle) -> str:
    """The bundle's own data, else the dataset by the name it ran under (a registry name, or
    a path that exists here); load_dataset then checks its sha256."""
    if (bundle.folder / "data").is_dir():
        return str(bundle.folder / "data")
    return bundle.provenance["dataset"]["name"]


def reproduce(manifest_path: Path, bundle_path: Path, overrides: dict, dataset: str | None = None) -> tuple[Path, Comparison]:
    """Rerun the bundle here; the new run folder and its comparison with the bundle."""
    manifest = load(manifest_path, overrides)
    bundle = open_bundle(bundle_path, manifest.cache.root / "bundles")
    changed = bundle.changed_files()
    if any(name.startswith(("build/", "data/")) for name in changed):
        raise BenchError(f"{bundle.origin}: its build inputs or data changed since it was made "
                         f"({', '.join(n for n in changed if n.startswith(('build/', 'data/')))}): not the run it records")
    settings = bundle_overrides(bundle, dataset, overrides.get("engine"))
    manifest = load(manifest_path, {**settings, **{k: v for k, v in overrides.items() if k != "engine"}})
    for key in manifest.sources:
        if key.split(".")[0] in settings and not (key == "engine" and overrides.get("engine")):
            manifest.sources[key] = f"bundle {bundle.origin.name}"
    models = list(bundle.provenance.get("models", {}))
    run_dir = manifest.path_setting("results_dir") / reproduction_name(label_of(bundle.origin), manifest)
    plan = RunPlan.resolve(manifest, models, source=bundle.build, run_dir=run_dir)
    _check_same_structures(bundle, plan)
    plan.sharding = bundle.sharding  # the same structures in each shard, whatever the slots here
    plan.images = _load_images(bundle, plan)
    plan.reproduces = {"of": bundle.run_id, "bundle": bundle.origin.name, "bundle_sha256": bundle.sha256}
    console.print(f"reproducing {bundle.run_id} from {bundle.origin.name}: images from the bundle's build inputs"
                  f"{' (archives)' if plan.images else ''}, {len(plan.structures)} structures x {len(models)} model(s)")
    run_dir = run_plan(plan)
    rerun = read_side(run_dir, manifest.cache.root / "bundles")
    recorded = bundle_side(bundle, changed)  # the bundle as opened and checked above
    unexplained, elsewhere = _rebuilt_otherwise(bundle.provenance, rerun.provenance)
    recorded.altered += unexplained
    comparison = compare_runs(recorded, rerun, rebuilt=elsewhere)
    for line in _version_changes(bundle.provenance, rerun.provenance):
        console.print(f"[yellow]package differs[/yellow]: {line}")
    folder = RunFolder(run_dir)
    write_comparison(comparison, folder.reproduction)
    record = rerun.provenance
    record["reproduction"] = {**record.get("reproduction", {}), "verdict": comparison.verdict.line,
                              "code": comparison.verdict.code}
    folder.write_provenance(record)
    write_run_report(run_dir)  # its facts now say what it reproduced, and the verdict
    return run_dir, comparison


def reproduction_name(bundle_name: str, manifest) -> str:
    """The reproduction's run folder: the bundle's name (the run's, unless named otherwise),
    the engine and the devices (a rerun of the same command resumes it)."""
    devices = manifest["devices"]
    where = devices if isinstance(devices, str) else "gpu" + "-".join(str(d) for d in devices)
    return re.sub(r"[^A-Za-z0-9.-]+", "-", f"{bundle_name}-reproduced-{manifest['engine']}-{where}")


def _check_same_structures(bundle: Bundle, plan: RunPlan) -> None:
    recorded = bundle.provenance["dataset"]
    if plan.dataset.identity != recorded["identity"]:
        raise BenchError(f"cannot reproduce {bundle.run_id}: the dataset here ({plan.dataset.name}, identity "
                         f"{plan.dataset.identity}) is not the one it ran on (identity {recorded['identity']}, files "
                         f"{', '.join(recorded['files'])}); give its files with DATASET=")
    if len(plan.structures) != recorded["structures"]:
        raise BenchError(f"cannot reproduce {bundle.run_id}: its subset selects {len(plan.structures)} structures "
                         f"here, {recorded['structures']} there")


def _load_images(bundle: Bundle, plan: RunPlan) -> dict[str, str]:
    """The bundle's image archives, loaded into the engine: model -> image (none: rebuilt)."""
    archives = bundle.folder / "images"
    if not archives.is_dir():
        return {}
    from orchestrator.workers.docker import DockerEngine

    engine, images = DockerEngine(), {}
    for model in plan.models:
        archive = archives / f"{model.name}.tar"
        if archive.is_file():
            record = bundle.provenance["models"][model.name]
            if not str(record.get("image", "")).startswith(f"{IMAGE_PREFIX}/"):
                raise BenchError(f"{bundle.origin}: {model.name}'s image is recorded as {record.get('image')!r}, "
                                 f"not one of this tool's ({IMAGE_PREFIX}/...): not loaded")
            console.print(f"loading {archive.name} from the bundle as {record['image']}")
            engine.load_image(archive, record["image_id"], record["image"])
            images[model.name] = record["image"]
    return images


def _rebuilt_otherwise(before: dict, after: dict) -> tuple[list[str], list[str]]:
    """The models whose image here is not the one the bundle records (a tag is a hash of
    everything that built the image): (those built on the same base image and wheelhouse,
    so from other build inputs than the bundle says: not verified; those built on another
    base image or wheelhouse, as on another machine: the same inputs, another foundation)."""
    unexplained, elsewhere = [], []
    for model, record in before.get("models", {}).items():
        here = after.get("models", {}).get(model) or {}
        if here.get("image") == record.get("image"):
            continue
        line = f"{model} ran in {here.get('image')}, not the recorded {record.get('image')}"
        if any(here.get(key) != record.get(key) for key in ("base_image_id", "wheelhouse")):
            elsewhere.append(f"{line} (another base image or wheelhouse)")
        else:
            unexplained.append(f"{line} (the same base image and wheelhouse: other build inputs)")
    return unexplained, elsewhere


def _version_changes(before: dict, after: dict) -> list[str]:
    """"model package: recorded -> here" for each package version that differs."""
    lines = []
    for model, record in before.get("models", {}).items():
        old = record.get("packages") or {}
        new = (after.get("models", {}).get(model) or {}).get("packages") or {}
        for package in sorted(set(old) | set(new)):
            if old.get(package) != new.get(package):
                lines.append(f"{model} {package}: {old.get(package)} in the bundle, {new.get(package)} here")
    return lines
