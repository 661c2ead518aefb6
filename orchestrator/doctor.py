"""`doctor`: check what a run needs; every problem comes with its remedy."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from orchestrator.console import console
from orchestrator.errors import BenchError
from orchestrator.models import discover_models
from orchestrator.manifest import Manifest
from orchestrator.run.plan import pick_models
from orchestrator.weights import missing_weights
from orchestrator.workers.slots import host_gpus
from orchestrator.workers.docker import DockerEngine


def doctor(manifest: Manifest) -> bool:
    findings: list[tuple[bool | None, str, str]] = []  # (ok, what, remedy); None: a note

    def check(ok: bool | None, what: str, remedy: str = "") -> None:
        findings.append((ok, what, remedy))

    engine = None
    try:
        engine = DockerEngine()
        engine_name = engine.name()
        check(True, f"container engine: {engine_name} {engine.version()} at {engine.where}")
    except BenchError as exc:
        check(False, "container engine", str(exc))
    if engine is not None:
        try:  # the base images of the Pythons the models to run ask for
            pythons = sorted({model.python for model in pick_models(manifest, manifest["models"])})
        except BenchError:  # said below, with the models
            pythons = []
        for python in pythons:
            base = manifest["base_images"].get(python)
            if base is None:
                check(False, f"base image for Python {python}: none", f'add "{python}": <image> to base_images')
                continue
            if engine.image_id(base):
                check(True, f"base image for Python {python}: {base} present")
            else:
                check(None, f"base image for Python {python}: {base} not present locally",
                      "it is pulled on the first build that needs it; without a registry run "
                      "images/make-local-base.sh and set base_images (or UMLIP_BASE_IMAGES) to its tag")
        if manifest["devices"] != "cpu" and engine_name == "Podman":  # GPUs by CDI
            check(any(Path(folder, "nvidia.yaml").exists() for folder in ("/etc/cdi", "/var/run/cdi")),
                  "NVIDIA CDI specification for Podman", "install the NVIDIA Container Toolkit and run "
                  "`nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`")
        elif manifest["devices"] != "cpu":
            runtimes = engine.runtimes()
            check("nvidia" in runtimes or bool(shutil.which("nvidia-container-cli")),
                  "NVIDIA container runtime", "install the NVIDIA Container Toolkit and restart dockerd")
    if manifest["backend"] == "slurm":
        check(None, f"workers: SLURM array tasks running {manifest['slurm']['runtime']} on the nodes "
                    "(slurm.runtime); the images are built here")
    elif engine is not None:
        check(None, f"workers: {engine_name} containers on this machine")
    if manifest["devices"] != "cpu":
        gpus = host_gpus()
        check(bool(gpus), f"GPUs seen by nvidia-smi: {gpus}", "install the NVIDIA driver, or run with GPUS=cpu")
    cache = manifest.cache.root
    try:
        check(True, f"models: {', '.join(discover_models())}")
        chosen = pick_models(manifest, manifest["models"])
        check(True, f"models to run: {', '.join(m.name for m in chosen)}")
        for model in (m for m in chosen if m.weights):
            missing = missing_weights(model, manifest.cache.weights)
            state = f"missing: {', '.join(missing)}" if missing else "present"
            check(None if missing else True, f"{model.name}: weights {state}",
                  f"make weights MODEL={model.name} (make bench fetches them too; see its model.yaml for gated "
                  "or manual files)")
    except BenchError as exc:
        check(False, "models", str(exc))
    cache.mkdir(parents=True, exist_ok=True)
    check(os.access(cache, os.W_OK), f"cache {cache} writable", f"fix the permissions of {cache} or set cache_dir")
    free_gib = shutil.disk_usage(cache).free / 2**30
    check(free_gib > 20, f"{free_gib:.0f} GiB free under {cache}", "model images and weights need tens of GiB")
    for name in ("ca_bundle", "wheelhouse"):
        path = manifest.path_setting(name)
        if path is not None:
            check(path.exists(), f"{name} {path} exists", f"fix {name} in {manifest.path}")
    if manifest["backend"] == "slurm":
        from orchestrator.workers.slurm import doctor_checks

        doctor_checks(manifest["slurm"], {"results_dir": manifest.path_setting("results_dir"), "cache_dir": cache},
                      check)
    marks = {True: "[green]ok[/green]  ", None: "[yellow]note[/yellow]", False: "[red]FAIL[/red]"}
    for ok, what, remedy in findings:
        console.print(f"{marks[ok]} {what}" + (f"\n       fix: {remedy}" if ok is not True and remedy else ""))
    return all(ok is not False for ok, _, _ in findings)
