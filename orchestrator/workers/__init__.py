"""Workers: the containers that relax shards, and the backends that run them.

A backend (workers.docker.DockerBackend on this machine, workers.slurm.SlurmBackend on a
cluster) takes Assignments (a model's image, some shards, the wire.Job) and runs each
as one worker container, described once by worker_spec and rendered for its runtime.
Every backend has the same interface (Backend): run(assignments, on_tick) until they
are done, stop_leftovers(models) of an orchestrator that was killed, `failures` (one
line per assignment that did not finish, and the workers' notices), provenance(). A backend
is one module with a `for_plan(plan, docker)` that returns it and its slots, named in
orchestrator.manifest.BACKENDS (one line): `make_backend` finds it there.

`slots` (where workers run on this machine), `assignments` (what a worker relaxes and the
container that does it) and `spec` (one container, rendered for each runtime) are what the
backends share.

The policy for a worker's faults (crashes, hung relaxations, runaway output, retries)
is not here: the supervisor inside every container holds it (adapters.supervise), so
both backends apply the same one. A backend only starts the container again when it
was killed from outside (a lost container, `docker kill`; SLURM requeues a task whose
node failed) and turns the supervisor's exit code into a line of `failures`.
"""

from __future__ import annotations

import importlib
from typing import Protocol

from orchestrator.manifest import BACKENDS
from orchestrator.workers.assignments import Assignment
from orchestrator.workers.slots import Slot


class Backend(Protocol):
    """What bench needs of a backend."""

    failures: list[str]

    def stop_leftovers(self, models: list[str]) -> None:
        """Stop what a killed orchestrator of this run folder left running for these models."""

    def run(self, assignments: list[Assignment], on_tick=lambda: None) -> None:
        """Run every assignment to its end (the caller holds the run folder's RunLock)."""

    def provenance(self) -> dict:
        """What the run's provenance records of the backend."""


def make_backend(plan, docker) -> tuple[Backend, list[Slot]]:
    """The plan's backend (plan.settings.backend, a key of manifest.BACKENDS) and the slots
    its workers get; `docker` is the host's Docker engine (images, and the docker backend)."""
    return importlib.import_module(BACKENDS[plan.settings.backend]).for_plan(plan, docker)
