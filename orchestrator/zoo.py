"""`zoo` (make test-zoo): build every model image from a clean Docker cache, one at a
time, check each, and print a table.

Per model: its images and the engine's build cache are removed, the image is built
(timed), the Python, torch and package versions are read from it, the contract runs in
a worker with no network (adapters.contract: finite energy, forces and stress on a
crystal, a layer and a molecule; finite-difference forces and stress for conservative
models) and the contract's copper crystal relaxes through `bench`. The weights
are the real ones where the cache has them, else the family's stand-in checkpoint made
in the image with the package's own constructor. The image is then removed (disk is
finite) unless --keep (with --keep a later image reuses the layers a kept one shares with
it, so its build time is not from a clean cache).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from adapters.wire import CACHE_MOUNT
from orchestrator import provenance
from orchestrator.console import console, show_table
from orchestrator.images import ImageBuilder
from orchestrator.models import REPO, Model
from orchestrator.manifest import Manifest
from orchestrator.runfolder import RunFolder
from orchestrator.weights import checkpoint_path, missing_weights, weights_folder
from orchestrator.workers.docker import DockerEngine
from orchestrator.workers.spec import LABEL, Mount, WorkerSpec, worker_threading, worker_user

#: A model folder with this file cannot be built here; its first line says why.
COLUMNS = ("model", "paper_tag", "result", "build_s", "size_gb", "python", "torch", "packages", "checkpoint",
           "contract", "bench", "note")


def remove_model_images(engine, name: str | None = None) -> None:
    """Every image of the model (or of every model, torch layer and runtime, untagged ones that
    earlier builds left included), each before the images it is built on, and the build cache."""
    kinds = [f"{LABEL}.model={name}"] if name else [f"{LABEL}.model", f"{LABEL}.torch", f"{LABEL}.base-image"]
    for kind in kinds:
        for image_id in engine.labelled_images(kind):
            engine.remove_image(image_id)
    engine.prune_builds()


def run_in_worker(engine, image: str, model: Model, weights: Path, command: list[str], writable: bool = False) -> str:
    """`command` in a least-privilege worker of the image (no network, the model's weights
    folder at /cache/<model>, read-only unless `writable`: making a stand-in); its stdout."""
    folder = weights_folder(weights, model)
    folder.mkdir(parents=True, exist_ok=True)
    spec = WorkerSpec(image, command, mounts=[Mount(str(folder), f"{CACHE_MOUNT}/{model.name}",
                                                    "rw" if writable else "ro")],
                      environment=worker_threading(1))
    return engine.output(spec)


def make_stand_in(engine, image: str, model: Model, weights: Path) -> Path:
    """The family's stand-in checkpoint (adapters.contract --make-checkpoint: the package's
    own constructor and file format, model.yaml's options), written by the image with no
    network into weights/<model>/<first file>; its path on the host."""
    folder = weights_folder(weights, model)
    folder.mkdir(parents=True, exist_ok=True)
    os.chown(folder, *worker_user())
    spec = {"calculator": model.calculator, "options": model.options}
    run_in_worker(engine, image, model, weights, ["python", "-m", "adapters.contract", "--job", json.dumps(spec),
                                                  "--make-checkpoint", checkpoint_path(model)], writable=True)
    return Path(checkpoint_path(model, weights))


def run_contract(engine, image: str, model: Model, weights: Path, options: dict) -> dict:
    """adapters.contract's report for the model with `options`, in a no-network worker."""
    spec = {"calculator": model.calculator, "options": options, "device": "cpu",
            "forces": model.forces or "conservative"}
    output = run_in_worker(engine, image, model, weights, ["python", "-m", "adapters.contract", "--job",
                                                           json.dumps(spec)])
    return json.loads(output.strip().splitlines()[-1])


def check_model(engine, builder: ImageBuilder, model: Model, manifest: Manifest, keep: bool) -> dict:
    row = {"model": model.name, "paper_tag": model.paper_tag or "-"}
    if not (keep and model.image):  # with --keep, a model sharing a kept image reuses it
        remove_model_images(engine, model.image or model.name)
    start = time.monotonic()
    try:
        image = builder.model(model)
    except Exception as exc:  # noqa: BLE001 - the table says what failed; the zoo goes on
        return {**row, "result": "build failed", "build_s": round(time.monotonic() - start),
                "note": str(exc).splitlines()[0][:200]}
    row["build_s"] = round(time.monotonic() - start)
    row["size_gb"] = round(engine.image_size(image) / 1e9, 2)
    versions = provenance.image_versions(engine, image, sorted({*model.packages, "torch"}))
    row["python"], row["torch"] = versions["python"], versions["packages"].get("torch") or "-"
    row["packages"] = " ".join(f"{k}={v}" for k, v in versions["packages"].items() if k not in ("torch", "ase", "numpy"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cache = work / "cache"
        (cache / "weights").mkdir(parents=True)
        options = dict(model.options)
        real = manifest.cache.weights
        if model.weights and not missing_weights(model, real):
            shutil.copytree(weights_folder(real, model), weights_folder(cache / "weights", model))
            row["checkpoint"] = "in the cache"  # the user's file (bench checks a pinned sha256)
        elif model.weights:
            make_stand_in(engine, image, model, cache / "weights")
            row["checkpoint"] = "stand-in"
        else:
            row["checkpoint"] = "none needed"
        if model.weights:
            options.update(checkpoint=checkpoint_path(model))
        try:
            report = run_contract(engine, image, model, cache / "weights", options)
            row["contract"] = "passed" if report["passed"] else f"FAILED {json.dumps(report)[:150]}"
        except Exception as exc:  # noqa: BLE001 - a contract that crashes is a failed contract
            row["contract"] = f"FAILED {str(exc).splitlines()[-1][:150]}"
        row["bench"] = bench_skipped(model, row["checkpoint"]) or bench_one(model, cache, work / "results")
    row["result"] = result_of(row)
    if not keep:
        remove_model_images(engine, model.image or model.name)
    return row


def bench_skipped(model: Model, checkpoint: str) -> str | None:
    """Why `bench` is not run, if it is not: bench checks pinned files, so not with a stand-in
    in place of a file whose sha256 is pinned (bench refuses it, rightly)."""
    if checkpoint.startswith("stand-in") and model.weights[0].get("sha256"):
        return "skipped: the checkpoint's sha256 is pinned"
    return None


def result_of(row: dict) -> str:
    """ok when the contract passed and bench relaxed or was skipped for a reason it gives."""
    return "ok" if row["contract"] == "passed" and not row["bench"].startswith("FAILED") else "FAILED"


def bench_one(model: Model, cache: Path, results: Path) -> str:
    """The contract's copper crystal (every model, EMT included, knows copper) through
    `python -m orchestrator bench`, network off in the worker."""
    from ase.build import bulk
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    crystal = bulk("Cu", "fcc", 3.66, cubic=True)
    crystal.rattle(0.03, seed=1)
    crystal.info["mat_id"] = "zoo-cu"
    crystal.calc = SinglePointCalculator(crystal, energy=-3.7 * len(crystal))  # a reference energy to score
    results.mkdir(parents=True, exist_ok=True)
    write(results / "zoo-cu.extxyz", crystal, format="extxyz")
    command = [sys.executable, "-m", "orchestrator", "bench", "--models", model.name,
               "--dataset", str(results / "zoo-cu.extxyz"), "--gpus", "cpu", "--set", f"cache_dir={cache}",
               "--set", f"results_dir={results}", "--set", "protocol.max_steps=60"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        return f"FAILED (exit {done.returncode}): {done.stderr.strip().splitlines()[-1][:150]}"
    run = RunFolder(done.stdout.strip().splitlines()[-1])
    with run.results.open() as handle:
        row = next(csv.DictReader(handle))
    return "relaxed" if row["failure_reason"] in ("", "not_converged") and row["energy_ev"] else \
        f"FAILED: {row['failure_reason']}"


def zoo(manifest: Manifest, models: list[Model], keep: bool = False) -> Path:
    engine = DockerEngine()
    builder = ImageBuilder.from_manifest(engine, manifest, echo=console.print)
    console.print("removing every model image and the build cache: each image builds from a clean cache")
    remove_model_images(engine)
    rows = []
    for python in sorted({model.python for model in models}):
        start = time.monotonic()
        runtime = builder.runtime(python)
        rows.append({"model": f"(runtime {python})", "paper_tag": "-", "result": "ok", "python": python,
                     "build_s": round(time.monotonic() - start),
                     "size_gb": round(engine.image_size(runtime) / 1e9, 2), "note": runtime})
    for model in models:
        console.print(f"[bold]{model.name}[/bold]")
        rows.append(check_model(engine, builder, model, manifest, keep))
        console.print(rows[-1])
    out = manifest.path_setting("results_dir") / f"zoo-{provenance.now()[:19].replace(':', '')}"
    out.mkdir(parents=True, exist_ok=True)
    with (out / "zoo.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: row.get(k, "") for k in COLUMNS} for row in rows)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(row.get(k, "")) for k in COLUMNS) + " |" for row in rows]
    if keep:  # the images are all there: what they take together
        lines.append(f"\nImages on disk with every image kept: {engine.images_on_disk() / 1e9:.1f} GB (layers shared "
                     "between images counted once; the base images included)")
    (out / "zoo.md").write_text("\n".join(lines) + "\n")
    print_table(rows)
    console.print(f"zoo table: {out / 'zoo.md'}")
    return out


def print_table(rows: list[dict]) -> None:
    show_table("model zoo: each image from a clean build cache", list(COLUMNS),
               [[str(row.get(k, "")) for k in COLUMNS] for row in rows])
