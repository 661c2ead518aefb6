"""benchmark.yaml: load, validate, apply overrides, remember where each value came from."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from adapters.wire import CELL_FILTERS, DIMENSIONS, ENGINES, OPTIMIZERS, VARIANTS
from orchestrator.errors import BenchError

#: Seconds a worker may go without a step or a result before it counts as hung: loading a
#: large model on a CPU takes minutes, and one step of a large cell on a CPU can take one.
STALL_S = 1800
OPTIONAL_STR = (str, type(None))
OPTIONAL_INT = (int, type(None))
OPTIONAL_LIST = (list, type(None))

#: key -> (accepted types, default). Nested sections list their own keys.
SCHEMA = {
    "dataset": (str, "0123d"),
    "subset": {
        "dimensions": (OPTIONAL_LIST, None),
        "limit_per_dimension": (OPTIONAL_INT, None),
        "seed": (int, 0),
        "elements": (OPTIONAL_LIST, None),
        "ids": (OPTIONAL_LIST, None),
    },
    "protocol": {
        "variant": (str, "paper"),
        "optimizer": (str, "FIRE"),
        "fmax_ev_per_a": ((int, float), 0.04),
        "max_steps": (int, 15000),
        "divergence_limit_ev_per_a": ((int, float), 10000.0),
        "cell_filter": (str, "FrechetCellFilter"),
    },
    "fragmentation_limits_a": {
        "2D": ((int, float), 7.5),
        "1D": ((int, float), 12.5),
        "0D": ((int, float), 20.0),
    },
    "engine": (str, "ase"),
    "batch_atoms": (int, 2000),
    "devices": ((str, list), "cpu"),
    "workers_per_device": (OPTIONAL_INT, None),
    "threads_per_worker": (OPTIONAL_INT, None),
    "shard_size": (int, 100),
    "max_worker_retries": (int, 2),
    "worker_memory_gb": ((int, float, type(None)), None),
    "worker_pids": (int, 4096),
    "structure_timeout_s": ((int, float, type(None)), None),
    "stall_timeout_s": ((int, float, type(None)), None),
    "results_dir": (str, "results"),
    "report": (bool, True),
    "cache_dir": (str, "~/.cache/umlip-0123d"),
    # a Python version (model.yaml `python`) -> the image its runtime is built FROM
    "base_images": (dict, {"3.11": "python:3.11-slim-bookworm", "3.12": "python:3.12-slim-bookworm",
                           "3.13": "python:3.13-slim-trixie"}),
    "ca_bundle": (OPTIONAL_STR, None),
    "wheelhouse": (OPTIONAL_STR, None),
    "models": (list, ["chgnet", "sevennet-0"]),
    "datasets": (dict, {}),
    "backend": (str, "docker"),
    "slurm": {
        "partition": (OPTIONAL_STR, None),
        "account": (OPTIONAL_STR, None),
        "time_per_task": (str, "24:00:00"),
        "cpus_per_task": (int, 4),
        "gpus_per_task": (int, 0),
        "memory_gb_per_task": ((int, float, type(None)), None),
        "max_simultaneous_tasks": (OPTIONAL_INT, None),
        "sbatch_options": (list, []),
        "shared_dir": (OPTIONAL_STR, None),
        "runtime": (str, "apptainer"),
        "image_dir": (OPTIONAL_STR, None),
        "isolate_network": (bool, True),
        "poll_s": ((int, float), 10),
    },
}
#: Where the shard containers run -> the module that runs them (its for_plan: orchestrator.workers):
#: this machine's Docker engine, or a SLURM cluster. A new backend is one module and one line here.
BACKENDS = {"docker": "orchestrator.workers.docker", "slurm": "orchestrator.workers.slurm"}
#: What runs a SLURM task's container (orchestrator.workers.slurm).
RUNTIMES = ("apptainer", "charliecloud", "docker", "podman")
ENV_PREFIX = "UMLIP_"


@dataclass
class Manifest:
    path: Path
    values: dict
    sources: dict = field(default_factory=dict)  # dotted key -> "command line" | "environment" | file | "default"

    def __getitem__(self, key):
        return self.values[key]

    def path_setting(self, key: str) -> Path | None:
        """A path-valued setting (dotted for sections), ~ expanded and relative to the
        manifest's folder."""
        value = self.values
        for part in key.split("."):
            value = value[part]
        if value is None:
            return None
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.path.parent / path).resolve()

    @property
    def cache(self) -> "CacheLayout":
        return CacheLayout(self.path_setting("cache_dir"))

    def stall_timeout_s(self) -> float:
        """Seconds without a new result line and without a step (the worker's heartbeat)
        after which a worker counts as hung: the setting, else STALL_S."""
        return float(self.values["stall_timeout_s"] or STALL_S)

    def relaxation_protocol(self) -> dict:
        """What decides a relaxation, as sent to the containers (wire.Job's protocol): the
        protocol and, since the authors' variant checks them between its cycles, the
        fragmentation limits."""
        return {**self.values["protocol"], "fragmentation_limits_a": self.values["fragmentation_limits_a"]}


@dataclass(frozen=True)
class CacheLayout:
    """What lives under cache_dir, shared by every run of this user."""

    root: Path

    @property
    def weights(self) -> Path:   # weights/<model>/<file> (orchestrator.weights)
        return self.root / "weights"

    @property
    def datasets(self) -> Path:  # datasets/<name>/<file>, parsed/ (orchestrator.datasets)
        return self.root / "datasets"

    @property
    def build_logs(self) -> Path:
        return self.root / "build-logs"

    @property
    def images(self) -> Path:    # SIF files and image archives for the SLURM nodes
        return self.root / "images"

    @property
    def reports(self) -> Path:   # the leaderboard when results_dir cannot be written
        return self.root / "reports"


def _type_name(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def _check(value, types, where: str, key: str):
    if isinstance(value, float) and not math.isfinite(value):
        raise BenchError(f"{where}: {key} must be a finite number, not {value!r}")
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise BenchError(f"{where}: {key} must be {_type_name(types)}, not {value!r}")
    if not isinstance(value, types):
        raise BenchError(f"{where}: {key} must be {_type_name(types)}, not {value!r}")


def _merge(schema: dict, data: dict, where: str, source: str, prefix: str, values: dict, sources: dict):
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in schema:
            raise BenchError(f"{where}: unknown key {dotted!r}; allowed here: {', '.join(schema)}")
        spec = schema[key]
        if isinstance(spec, dict):
            if not isinstance(value, dict):
                raise BenchError(f"{where}: {dotted} must be a mapping, not {value!r}")
            _merge(spec, value, where, source, f"{dotted}.", values[key], sources)
        else:
            _check(value, spec[0], where, dotted)
            # a mapping (base_images, datasets) is added to, entry by entry: overriding one
            # Python's base image keeps the others
            values[key] = {**values[key], **value} if isinstance(value, dict) else value
            sources[dotted] = source


def _defaults(schema: dict, prefix: str, sources: dict) -> dict:
    values = {}
    for key, spec in schema.items():
        if isinstance(spec, dict):
            values[key] = _defaults(spec, f"{prefix}{key}.", sources)
        else:
            values[key] = spec[1].copy() if isinstance(spec[1], (dict, list)) else spec[1]
            sources[f"{prefix}{key}"] = "default"
    return values


def _parse_env(value: str):
    parsed = yaml.safe_load(value)
    return value if parsed is None and value else parsed


def load(path: Path, overrides: dict | None = None, environ=os.environ) -> Manifest:
    """Defaults < benchmark.yaml < UMLIP_<KEY> environment < overrides (dotted keys)."""
    path = Path(path)
    if not path.exists():
        raise BenchError(f"{path}: manifest not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise BenchError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise BenchError(f"{path}: the manifest must be a mapping of keys")
    sources: dict = {}
    values = _defaults(SCHEMA, "", sources)
    _merge(SCHEMA, data, str(path), str(path), "", values, sources)
    env = {k[len(ENV_PREFIX):].lower(): _parse_env(v) for k, v in environ.items()
           if k.startswith(ENV_PREFIX) and k[len(ENV_PREFIX):].lower() in SCHEMA}
    _merge(SCHEMA, env, "environment", "environment", "", values, sources)
    for dotted, value in (overrides or {}).items():
        *parents, last = dotted.split(".")
        nested = {last: value}
        for parent in reversed(parents):
            nested = {parent: nested}
        _merge(SCHEMA, nested, "command line", "command line", "", values, sources)
    _validate(values, sources, str(path))
    for entry in values["datasets"].values():  # a shipped dataset's path is relative to the manifest
        if "path" in entry:
            entry["path"] = str((path.parent / Path(entry["path"]).expanduser()).resolve())
    return Manifest(path=path, values=values, sources=sources)


def _validate(values: dict, sources: dict, path: str) -> None:
    """Values that have the right type but cannot work; the error names where each came from."""
    def fail(key: str, message: str):
        source = sources.get(key, path)
        source = "command line (--set or a make variable)" if source == "command line" else \
            "environment (UMLIP_*)" if source == "environment" else source
        raise BenchError(f"{source}: {key} {message}")

    for dim in values["subset"]["dimensions"] or []:
        if dim not in DIMENSIONS:
            fail("subset.dimensions", f"has {dim!r}; choose from {', '.join(DIMENSIONS)}")
    devices = values["devices"]
    if isinstance(devices, str) and devices not in ("cpu", "all"):
        fail("devices", f"must be cpu, all, or a list of GPU indices, not {devices!r}")
    if isinstance(devices, list) and not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                             for d in devices):
        fail("devices", f"must hold GPU indices (integers >= 0), not {devices!r}")
    for key in ("worker_memory_gb", "structure_timeout_s", "stall_timeout_s", "threads_per_worker",
                "workers_per_device"):
        if values[key] is not None and not values[key] > 0:
            fail(key, f"must be positive (or null), not {values[key]!r}")
    for key in ("shard_size", "worker_pids"):
        if values[key] < 1:
            fail(key, f"must be at least 1, not {values[key]!r}")
    if values["max_worker_retries"] < 0:
        fail("max_worker_retries", f"must be 0 or more, not {values['max_worker_retries']!r}")
    if values["backend"] not in BACKENDS:
        fail("backend", f"must be one of {', '.join(BACKENDS)}, not {values['backend']!r}")
    slurm = values["slurm"]
    if slurm["runtime"] not in RUNTIMES:
        fail("slurm.runtime", f"must be one of {', '.join(RUNTIMES)}, not {slurm['runtime']!r}")
    for key, least in (("cpus_per_task", 1), ("gpus_per_task", 0), ("max_simultaneous_tasks", 1)):
        if slurm[key] is not None and slurm[key] < least:
            fail(f"slurm.{key}", f"must be at least {least}, not {slurm[key]!r}")
    for key in ("memory_gb_per_task", "poll_s"):
        if slurm[key] is not None and not slurm[key] > 0:
            fail(f"slurm.{key}", f"must be positive, not {slurm[key]!r}")
    if not all(isinstance(option, str) and option.startswith("-") for option in slurm["sbatch_options"]):
        fail("slurm.sbatch_options", f"must be sbatch options like --qos=long, not {slurm['sbatch_options']!r}")
    protocol = values["protocol"]
    for key, choices in (("variant", VARIANTS), ("optimizer", OPTIMIZERS), ("cell_filter", CELL_FILTERS)):
        if protocol[key] not in choices:
            fail(f"protocol.{key}", f"must be one of {', '.join(choices)}, not {protocol[key]!r}")
    for key in ("fmax_ev_per_a", "max_steps", "divergence_limit_ev_per_a"):
        if protocol[key] <= 0:
            fail(f"protocol.{key}", f"must be positive, not {protocol[key]!r}")
    if protocol["variant"] == "authors" and protocol["max_steps"] != SCHEMA["protocol"]["max_steps"][1]:
        # their code runs cycles of a fixed length (adapters.relax: AUTHORS_CYCLES x AUTHORS_CYCLE_STEPS)
        fail("protocol.max_steps", f"is {protocol['max_steps']}, but the authors' variant runs its own cycles of "
                                   "500 steps and no other limit; leave max_steps at its default under "
                                   "protocol.variant authors")
    if values["engine"] not in ENGINES:
        fail("engine", f"must be one of {', '.join(ENGINES)}, not {values['engine']!r}")
    if values["engine"] == "batched":
        for key, needed in (("variant", "paper"), ("optimizer", "FIRE"), ("cell_filter", "FrechetCellFilter")):
            if protocol[key] != needed:
                fail("engine", f"batched relaxes protocol.{key} {needed} only (asked: {protocol[key]!r}); "
                               "use engine: ase for that protocol")
    if values["batch_atoms"] < 1:
        fail("batch_atoms", f"must be at least 1, not {values['batch_atoms']!r}")
    for dim, limit in values["fragmentation_limits_a"].items():
        if limit <= 0:
            fail(f"fragmentation_limits_a.{dim}", f"must be positive, not {limit!r}")
    for version, image in values["base_images"].items():
        if not (isinstance(version, str) and re.fullmatch(r"3\.\d+", version) and isinstance(image, str)):
            fail("base_images", f"maps quoted Python versions to images, like \"3.11\": python:3.11-slim-bookworm; "
                                f"not {version!r}: {image!r}")
    for name, entry in values["datasets"].items():
        if not isinstance(entry, dict) or ("url" in entry) == ("path" in entry):
            fail(f"datasets.{name}", "needs a url (to download) or a path (shipped), not both")
        unknown = set(entry) - {"url", "path", "sha256", "files"}
        if unknown:
            fail(f"datasets.{name}", f"has unknown key(s) {sorted(unknown)}; allowed: url or path, sha256, files")
