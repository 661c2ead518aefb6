"""The Docker engine connection and the console every command writes to."""

from __future__ import annotations

from rich.console import Console

from orchestrator.errors import BenchError

# stderr: stdout carries only results (the run folder, paths) for scripts
console = Console(stderr=True)


def docker_client():
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # the SDK raises several types for "no engine"
        raise BenchError(f"cannot reach the Docker engine ({exc}); start it (e.g. `dockerd &` or "
                         "`systemctl start docker`) and check that this user may use it") from None
    return client
