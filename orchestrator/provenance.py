"""What ran, where, on which data: enough to cite and to reproduce a run."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from orchestrator.models import REPO
from orchestrator.workers.slots import query_gpus
from orchestrator.workers.spec import WorkerSpec


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def git_commit() -> str | None:
    result = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if result.returncode:
        return None
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return result.stdout.strip() + ("-dirty" if dirty else "")


def host_info(engine) -> dict:
    return {"hostname": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version(),
            "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "gpus": query_gpus("index,name,driver_version"),
            "engine": f"{engine.name()} {engine.version()}", "tool_commit": git_commit()}


def cpu_model() -> str:
    """The CPU's name as the kernel reports it (float32 results can differ between CPUs)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def image_versions(engine, image: str, packages: list[str]) -> dict:
    """Versions of the model's packages inside its image: one short container run, with
    the workers' least privilege (no network, not root, nothing writable but scratch)."""
    out = engine.output(WorkerSpec(image, ["python", "-m", "adapters.versions", *packages]))
    return json.loads(out.strip().splitlines()[-1])


