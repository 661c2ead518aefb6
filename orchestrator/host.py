"""The host's scoring stack: the packages that merge, score and report every run, locked like
the images are, and recorded, so a changed number is traced to the model or to the scoring.

`requirements.txt` says what the host needs; `requirements.lock` pins every package of it,
with hashes, for every Python the tool supports, and is what `make` installs the host
environment from. It is resolved by uv (`make lock HOST=1`): one universal lock for every
supported Python and platform, where pip-tools resolves for the interpreter it runs on only,
and hash-pinned, so an install gets the very files that were locked.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from orchestrator.errors import BenchError

REPO = Path(__file__).resolve().parent.parent
REQUIREMENTS, LOCK = REPO / "requirements.txt", REPO / "requirements.lock"
#: The oldest Python the lock is resolved for (spglib 2.8 and numpy 2.4 ask for 3.11).
OLDEST_PYTHON = "3.11"
LOCK_COMMAND = "make lock HOST=1"


def write_lock() -> Path:
    """Resolve requirements.txt afresh into requirements.lock (uv, universal, with hashes)."""
    command = [sys.executable, "-m", "uv", "pip", "compile", str(REQUIREMENTS.name), "--universal",
               "--generate-hashes", "--python-version", OLDEST_PYTHON, "--custom-compile-command", LOCK_COMMAND,
               "--quiet", "-o", str(LOCK.name)]
    # never a Python downloaded from elsewhere: resolving needs the package index only
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"})
    if done.returncode:
        raise BenchError(f"{LOCK_COMMAND}: uv could not resolve {REQUIREMENTS.name}: "
                         f"{(done.stderr.strip().splitlines() or ['no message'])[-1]}")
    return LOCK


def locked_versions(lock: Path = LOCK) -> dict[str, list[str]]:
    """Package -> the versions the lock pins for it (two where Pythons differ)."""
    pins: dict[str, list[str]] = {}
    for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)", lock.read_text(), re.M) if lock.is_file() \
            else []:
        pins.setdefault(canonical(name), []).append(version)
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def scoring_stack(lock: Path = LOCK) -> dict:
    """What scores and reports here: the Python, the version of every locked package as
    installed (None: not installed, a package of another platform), the lock's sha256, and
    the packages whose installed version the lock does not pin (an environment not made from
    it)."""
    pins = locked_versions(lock)
    installed = {}
    for name in pins:
        try:
            installed[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed[name] = None
    unlocked = sorted(name for name, version in installed.items() if version is not None and version not in pins[name])
    return {"python": platform.python_version(),
            "lock_sha256": hashlib.sha256(lock.read_bytes()).hexdigest() if lock.is_file() else None,
            "packages": {name: version for name, version in sorted(installed.items()) if version is not None},
            "not_as_locked": unlocked}


def stack_differences(a: dict, b: dict) -> list[str]:
    """"what: A -> B" for each way two runs' scoring stacks differ (empty: the same, or not
    recorded on either side)."""
    if not a or not b:
        return []
    lines = [f"Python {a.get('python')} -> {b.get('python')}"] if a.get("python") != b.get("python") else []
    old, new = a.get("packages") or {}, b.get("packages") or {}
    lines += [f"{name} {old.get(name)} -> {new.get(name)}" for name in sorted(set(old) | set(new))
              if old.get(name) != new.get(name)]
    return lines
