"""One worker container, described once (WorkerSpec) and rendered for each runtime: the
Docker SDK (workers.docker), the docker or podman command line, Apptainer and Charliecloud.

Least privilege, whatever the runtime: no network, not root, no capabilities, no
privilege escalation, a read-only root filesystem with a bounded tmpfs for scratch, the
shards and the model's own weights folder (never another model's) read-only, only the
job's own files writable, bounded memory, CPUs and pids, and never the engine's socket.
Downloads happen on the host, before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from adapters.wire import WORKDIR

#: The label prefix of every image and container of the tool.
LABEL = "org.umlip-0123d"
#: A container's user when the orchestrator runs as root: never root inside.
UNPRIVILEGED_UID = 65534
SCRATCH_MOUNT = "/tmp"
#: /dev/shm of a worker: what a single-process worker may need for semaphores and buffers.
SHM_BYTES = 64 * 1024**2
#: The scratch tmpfs's options.
SCRATCH_OPTIONS = "rw,nosuid,nodev,size=4g,mode=1777"


def worker_user() -> tuple[int, int]:
    """The host user, unless that is root: then an unprivileged one."""
    return (os.getuid(), os.getgid()) if os.getuid() else (UNPRIVILEGED_UID, UNPRIVILEGED_UID)


def worker_threading(threads: int) -> dict[str, str]:
    """The threading environment of a worker with `threads` CPU threads. numpy's BLAS is
    single-threaded: ASE's cell filter does tiny matrix functions every step, many times
    slower threaded. The model's own threads (OpenMP in torch, MKL; GRACE sets
    TensorFlow's from OMP_NUM_THREADS) get the slot's, and none of them spins while it
    waits: a spinning thread whose sibling is starved (a busy machine, a shared node) turns
    every parallel region into a wait (4-9x slower measured with one other busy process on
    two cores)."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": "1",
            "OMP_WAIT_POLICY": "PASSIVE",  # GNU and LLVM OpenMP (torch's CPU wheels): sleep, do not spin
            "KMP_BLOCKTIME": "0"}          # Intel OpenMP (MKL builds): sleep at once after a region


@dataclass
class Mount:
    source: str   # host path
    target: str   # path inside the container
    mode: str = "ro"


@dataclass
class WorkerSpec:
    """Everything a runtime needs to run one least-privilege container."""

    image: str
    command: list[str]
    name: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    mounts: list[Mount] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    threads: int = 1                 # CPUs (the engine refuses more than the host has)
    memory_bytes: int = 0            # 0: no limit
    pids: int = 4096
    gpu: str | None = None           # a GPU index; "" = the one the batch system assigned; None = none

    def __post_init__(self):
        self.environment = {"HOME": SCRATCH_MOUNT, "XDG_CACHE_HOME": f"{SCRATCH_MOUNT}/cache",
                            "MPLCONFIGDIR": f"{SCRATCH_MOUNT}/matplotlib", **self.environment}

    @property
    def user(self) -> str:
        return "{}:{}".format(*worker_user())

    def mount(self, target: str) -> Mount:
        return next(m for m in self.mounts if m.target == target)


def engine_options(spec: WorkerSpec, cpus: int) -> list[str]:
    """`docker run` / `podman run` options of the spec with `cpus` CPUs (the image, the
    command and a GPU are added by whoever runs it)."""
    options = ["--user", spec.user, "--network", "none", "--workdir", WORKDIR, "--pids-limit", str(spec.pids),
               f"--cpus={cpus}", "--cap-drop=ALL", "--security-opt=no-new-privileges", "--read-only",
               f"--tmpfs={SCRATCH_MOUNT}:{SCRATCH_OPTIONS}", f"--shm-size={SHM_BYTES}b"]
    options = (["--name", spec.name] if spec.name else []) + options
    options += [f"--memory={spec.memory_bytes}b"] if spec.memory_bytes else []
    options += [f"--label={key}={value}" for key, value in spec.labels.items()]
    options += [f"--volume={m.source}:{m.target}:{m.mode}" for m in spec.mounts]
    options += [f"--env={key}={value}" for key, value in spec.environment.items()]
    return options


def apptainer_options(spec: WorkerSpec, isolate_network: bool) -> list[str]:
    """`apptainer exec` options of the spec: its own /tmp, /dev and environment
    (--containall --cleanenv), the image read-only (Apptainer's default), the same binds,
    variables and working folder; the user is the one who submitted."""
    options = ["--containall", "--cleanenv", "--pwd", WORKDIR]
    options += ["--no-privs"] if os.getuid() == 0 else []  # root here: drop what root would keep
    options += ["--net", "--network", "none"] if isolate_network else []
    options += [f"--bind={m.source}:{m.target}:{m.mode}" for m in spec.mounts]
    # HOME stays Apptainer's own (under --containall an empty folder of the container's): it
    # refuses to override it, with a warning in every worker's log
    options += [f"--env={key}={value}" for key, value in spec.environment.items() if key != "HOME"]
    return options


def charliecloud_options(spec: WorkerSpec) -> list[str]:
    """`ch-run` options of the spec: the image read-only (ch-run's default), a private /tmp,
    the image's own environment and the spec's variables only (the host's are unset first),
    the same binds and working folder. ch-run has no read-only bind: the shards and weights
    are read-only as far as the host's permissions make them (docs/cluster.md), and no
    network namespace of its own (charliecloud_prefix)."""
    options = ["--private-tmp", "--unset-env=*", "--set-env", f"--cd={WORKDIR}"]
    options += [f"--bind={m.source}:{m.target}" for m in spec.mounts]
    options += [f"--set-env={key}={value}" for key, value in spec.environment.items()]
    return options


def charliecloud_prefix(isolate_network: bool) -> list[str]:
    """What runs ch-run: as the unprivileged user when the orchestrator is root (ch-run keeps
    the caller's uid inside), and in a network namespace of its own with only a loopback
    (`unshare`, util-linux 2.38 or later: ch-run makes none)."""
    uid, gid = worker_user()
    prefix = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"] if os.getuid() == 0 else []
    return prefix + (["unshare", "--user", "--map-current-user", "--net"] if isolate_network else [])
