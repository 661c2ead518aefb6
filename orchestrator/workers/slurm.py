"""The SLURM backend: the Docker backend's images, shards and worker, run as one array job
per model (one task per shard) on a cluster.

The submit host builds the images with Docker as usual and converts each one once per
image id for the nodes' container runtime: a SIF file for Apptainer; for Docker or
Podman on nodes with engines of their own, a `docker save` archive the task loads when
its node lacks the image. Every task runs the same worker as a Docker-backend container
(workers.worker_spec, rendered for the nodes' runtime): the same supervisor, with the
same policy for crashes, hung relaxations and retries (adapters.supervise), the same
mounts and limits. The results land in the run folder on the shared filesystem, where
the host tails them for progress as with the Docker backend; the merge, metrics and
report are the same code. A task whose node fails is requeued by SLURM (--requeue) and
resumes its shard from the lines already written, so a structure is never relaxed into
the results twice.
"""

from __future__ import annotations

import getpass
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from adapters import wire
from orchestrator.console import console
from orchestrator.fetch import sha256_of
from orchestrator.errors import BenchError
from orchestrator.runfolder import RunFolder
from orchestrator.shards import read_ids
from orchestrator.workers.assignments import Assignment, prepare_worker_files, run_key, worker_failures, worker_spec
from orchestrator.workers.slots import Slot
from orchestrator.workers.spec import (WorkerSpec, apptainer_options, charliecloud_options, charliecloud_prefix,
                                       engine_options)

#: Stands for the shard's name in the one command line an array job's tasks share.
SHARD = "@SHARD@"
#: Reasons a pending task gives when it would wait forever, and what to change.
NEVER_STARTS = {
    "PartitionConfig": "the partition cannot give what a task asks: lower slurm.cpus_per_task, "
                       "gpus_per_task or memory_gb_per_task, or pick another slurm.partition",
    "PartitionTimeLimit": "slurm.time_per_task is above the partition's limit",
    "PartitionNodeLimit": "the partition's node limits exclude the task",
    "BadConstraints": "no node has what the task asks (slurm.sbatch_options, cpus, GPUs, memory)",
    "InvalidAccount": "slurm.account is not valid here",
    "InvalidQOS": "the QOS in slurm.sbatch_options is not valid here",
    "JobHeldAdmin": "held by an administrator (or after repeated launch failures: see the task's .out file)",
}
#: A slot's GPU when the batch system picks it for each task (CUDA_VISIBLE_DEVICES).
ASSIGNED_GPU = ""


def task_slot(settings: dict, pids: int) -> Slot:
    """What one array task gets: its CPUs, memory and (if any) the GPU SLURM assigns."""
    memory = int(settings["memory_gb_per_task"] * 1024**3) if settings["memory_gb_per_task"] else 0
    return Slot(name="slurm-task", gpu=ASSIGNED_GPU if settings["gpus_per_task"] else None,
                threads=settings["cpus_per_task"], memory_bytes=memory, pids=pids)


def bash_word(token: str) -> str:
    """`token` quoted for bash, with SHARD expanded to the task's shard name."""
    return '"${shard}"'.join(shlex.quote(part) if part else "" for part in token.split(SHARD))


def bash_array(name: str, tokens: list[str]) -> str:
    return f"{name}=(" + " \\\n  ".join(bash_word(t) for t in tokens) + ")"


def array_spec(numbers: list[int], max_simultaneous: int | None) -> str:
    """--array value: ranges of shard numbers (0-3,7,9-10), then %max."""
    ranges, start = [], None
    for k, number in enumerate(numbers):
        start = number if start is None else start
        if k + 1 == len(numbers) or numbers[k + 1] != number + 1:
            ranges.append(f"{start}-{number}" if number > start else f"{number}")
            start = None
    return ",".join(ranges) + (f"%{max_simultaneous}" if max_simultaneous else "")


def shard_number(assignment: Assignment) -> int:
    """The shard's number (shard-0007 -> 7): its task's index in the array."""
    return int(assignment.shards[0].stem.split("-")[-1])


def job_name(model: str, run_key_: str) -> str:
    """The array job's name: the model and the run folder's key. Only one orchestrator
    holds a run folder, so the name finds exactly its jobs, even one whose sbatch was
    interrupted before it answered."""
    return f"umlip-0123d-{model}-{run_key_}"


def sbatch_header(model: str, numbers: list[int], settings: dict, log_dir: Path, name: str) -> list[str]:
    options = [f"--job-name={name}", f"--array={array_spec(numbers, settings['max_simultaneous_tasks'])}",
               "--requeue", f"--output={log_dir}/{model}-%A_%a.out", f"--cpus-per-task={settings['cpus_per_task']}",
               f"--time={settings['time_per_task']}", "--ntasks=1"]
    options += [f"--gres=gpu:{settings['gpus_per_task']}"] if settings["gpus_per_task"] else []
    options += [f"--mem={int(settings['memory_gb_per_task'] * 1024)}M"] if settings["memory_gb_per_task"] else []
    options += [f"--partition={settings['partition']}"] if settings["partition"] else []
    options += [f"--account={settings['account']}"] if settings["account"] else []
    options += list(settings["sbatch_options"])
    return [f"#SBATCH {option}" for option in options]


@dataclass
class TaskCommand:
    """How a task runs its worker with one runtime, in bash: the runtime's command and
    options, the image and the worker's command, the options that pass the task's GPUs
    ($CUDA_VISIBLE_DEVICES), how to stop the worker, and what runs once before it starts."""

    run: list[str]
    worker: list[str]
    gpus: str
    stop: str
    before: list[str]


def task_command(spec: WorkerSpec, image: dict, settings: dict) -> TaskCommand:
    """The spec rendered for the nodes' runtime (slurm.runtime)."""
    runtime = settings["runtime"]
    if runtime == "apptainer":
        return TaskCommand(run=["apptainer", "exec", *apptainer_options(spec, settings["isolate_network"])],
                           worker=[image["path"], *spec.command],
                           gpus='(--nv --env "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES")',
                           stop='kill "$pid" 2>/dev/null', before=[])
    if runtime == "charliecloud":
        return TaskCommand(run=[*charliecloud_prefix(settings["isolate_network"]), "ch-run",
                                *charliecloud_options(spec)],
                           worker=[image["path"], "--", *spec.command],
                           gpus='(--set-env "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES")',
                           stop='kill "$pid" 2>/dev/null',
                           before=['export USER="${USER:-$(id -un)}"  # ch-run refuses to start without it'])
    # by its id, not its tag: a node's engine may hold another image of that name (Podman names
    # an image it built docker.io/..., one it loaded localhost/...)
    image_id = image["image_id"].split(":")[-1]
    load = []
    if image.get("archive"):  # nodes with engines of their own load the image once
        load = [f"{runtime} image inspect {image_id} >/dev/null 2>&1 || "
                f"{runtime} load -i {shlex.quote(image['archive'])} >/dev/null"]
    # Docker's --gpus; Podman's devices from the NVIDIA Container Toolkit's CDI specification
    gpus = '(--gpus "device=$CUDA_VISIBLE_DEVICES")' if runtime == "docker" else \
        '($(printf -- "--device=nvidia.com/gpu=%s " ${CUDA_VISIBLE_DEVICES//,/ }))'
    return TaskCommand(run=[runtime, "run", *engine_options(spec, settings["cpus_per_task"])],
                       worker=[image_id, *spec.command], gpus=gpus,
                       stop=f'{runtime} rm -f "$name" >/dev/null 2>&1', before=load)


def task_script(assignment: Assignment, numbers: list[int], settings: dict, image: dict, run_key_: str,
                weights_dir: Path, owner: str, pids: int, log_dir: Path) -> str:
    """The batch script of one model's array job: task N runs the worker of shard-N, the
    same container as the Docker backend's (its supervisor retries and records crashes)."""
    template = Assignment(model=assignment.model, image=assignment.image,
                          shards=(assignment.shards[0].parent / f"{SHARD}.jsonl",), out_dir=assignment.out_dir,
                          job=assignment.job)
    spec = worker_spec(template, task_slot(settings, pids), run_key_, weights_dir, owner)
    command = task_command(spec, image, settings)
    out = template.outs[0]
    return "\n".join([
        "#!/bin/bash",
        *sbatch_header(assignment.model, numbers, settings, log_dir, job_name(assignment.model, run_key_)),
        f"# {assignment.model}: one task per shard; written by the orchestrator (orchestrator/workers/slurm.py)",
        "set -u",
        'shard=$(printf "shard-%04d" "$SLURM_ARRAY_TASK_ID")',
        f"name={bash_word(spec.name)}",
        f"log={bash_word(str(out.with_suffix('.log')))}",
        # one line per start of this task: a restart after a failed node shows here
        f'echo "$(date -u +%FT%TZ) task ${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}} '
        f'restart ${{SLURM_RESTART_COUNT:-0}} on $(hostname)" >> {bash_word(str(out.with_suffix(".attempts")))}',
        bash_array("run", command.run),
        bash_array("worker", command.worker),
        "gpus=()",
        f'[ -n "${{CUDA_VISIBLE_DEVICES:-}}" ] && gpus={command.gpus}',
        'pid=""',
        # scancel, a time limit or a failing node: stop the container too (an engine's
        # container is no child of this script)
        f"stop() {{ {command.stop}; }}",
        "trap 'stop; exit 143' TERM INT",
        *command.before,
        "stop  # a container an earlier run of this task left behind",
        '"${run[@]}" "${gpus[@]}" "${worker[@]}" >> "$log" 2>&1 &',
        'pid=$!; wait "$pid"; code=$?',
        "stop",
        'exit "$code"',
        ""])


def _run(command: list[str], what: str) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(command, capture_output=True, text=True)
    except FileNotFoundError:
        raise BenchError(f"{what}: {command[0]} not found on this host; install it or see `make doctor`") from None
    if done.returncode:
        message = (done.stderr or done.stdout).strip().splitlines()
        raise BenchError(f"{what}: `{shlex.join(command[:3])} ...` failed: {message[-1] if message else done.returncode}")
    return done


#: What a converted image is, per runtime: a SIF file, a `docker save` archive, a directory.
CONVERTED = {"apptainer": ".sif", "docker": ".tar", "podman": ".tar", "charliecloud": ""}
#: Folders and files ch-run mounts onto, which an image directory must have (ch-convert's list).
CHARLIECLOUD_MOUNT_POINTS = (("bin", "dev", "etc", "mnt", "proc", "usr", *(f"mnt/{k}" for k in range(10))),
                             ("etc/hosts", "etc/resolv.conf"))


def charliecloud_directory(engine, image: str, target: Path) -> None:
    """What `ch-convert -i docker IMAGE DIR` makes, without its gzip and unpack of the whole
    image (2 min 16 s for the emt image here): the image's files (`docker export` of a container
    never started; /dev left empty, ch-run mounts the host's), its environment in ch/environment
    for `ch-run --set-env`, and the mount points ch-run needs."""
    target.mkdir(parents=True)
    # tar's messages to a file: a pipe nobody reads while the export streams in could fill and stall both
    with tempfile.TemporaryFile() as messages:
        untar = subprocess.Popen(["tar", "-x", "-C", str(target), "--exclude=dev/*"], stdin=subprocess.PIPE,
                                 stderr=messages)
        try:
            engine.export_files(image, untar.stdin)
        finally:
            untar.stdin.close()
            code = untar.wait()
        messages.seek(0)
        if code:
            said = messages.read().decode(errors="replace").strip().splitlines() or [f"exit code {code}"]
            raise BenchError(f"converting {image} for charliecloud: tar: {said[-1]}")
    (target / "ch").mkdir(exist_ok=True)
    (target / "ch" / "environment").write_text("".join(f"{line}\n" for line in engine.image_environment(image)))
    folders, files = CHARLIECLOUD_MOUNT_POINTS
    for name in folders:
        if not os.path.lexists(target / name):
            (target / name).mkdir()
    for name in files:
        if not os.path.lexists(target / name):  # never through a link: it could point at the host's file
            (target / name).touch()


def _convert(engine, image: str, runtime: str, target: Path) -> None:
    """Make `target` from the engine's image: Apptainer's SIF (from the daemon, else through
    a `docker save` archive), Charliecloud's directory, an engine's archive."""
    if runtime == "apptainer":
        try:
            _run(["apptainer", "build", "--force", str(target), f"docker-daemon://{image}"], f"converting {image}")
        except BenchError:  # no daemon socket for apptainer: go through an archive
            archive = target.with_suffix(".tar")
            try:
                engine.save_image(image, archive)
                _run(["apptainer", "build", "--force", str(target), f"docker-archive://{archive}"],
                     f"converting {image}")
            finally:  # an archive is gigabytes
                archive.unlink(missing_ok=True)
    elif runtime == "charliecloud":
        charliecloud_directory(engine, image, target)
    else:
        engine.save_image(image, target)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def convert_image(engine, image: str, image_id: str, runtime: str, image_dir: Path | None) -> dict:
    """The image in the form the nodes run, made once per image id: {"path", "sha256"} of a
    SIF for Apptainer, {"path"} of an image directory for Charliecloud, {"archive",
    "sha256"} of a `docker save` archive for Docker or Podman when image_dir is set (nothing
    to convert when the nodes share this engine)."""
    record = {"runtime": runtime, "image": image, "image_id": image_id}
    if runtime in ("docker", "podman") and image_dir is None:
        return record
    image_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{image.split('/')[-1].split(':')[0]}-{image_id.split(':')[-1][:16]}"
    target = image_dir / (stem + CONVERTED[runtime])
    # written last, so a conversion cut short is made again: the file's sha256, a directory's source image id
    made = image_dir / (f"{target.name}.sha256" if CONVERTED[runtime] else f"{target.name}.image-id")
    if not (target.exists() and made.exists()):
        console.print(f"converting {image} for {runtime} on the nodes: {target}")
        partial = target.with_name(target.name + ".partial")
        try:
            _remove(partial)
            _convert(engine, image, runtime, partial)
            _remove(target)
            partial.replace(target)
        finally:  # a failed conversion leaves nothing behind
            _remove(partial)
        made.write_text((image_id if target.is_dir() else sha256_of(target)) + "\n")
    if runtime == "charliecloud":
        return {**record, "path": str(target)}
    return {**record, "path" if runtime == "apptainer" else "archive": str(target), "sha256": made.read_text().strip()}


def charliecloud_mount_points(image_path: Path, spec: WorkerSpec) -> None:
    """Charliecloud binds only onto paths its (read-only) image has: make the spec's, empty,
    in the image directory (a folder for a folder, a file for a file)."""
    for mount in spec.mounts:
        point = image_path / mount.target.lstrip("/")
        if Path(mount.source).is_dir():
            point.mkdir(parents=True, exist_ok=True)
        else:
            point.parent.mkdir(parents=True, exist_ok=True)
            point.touch(exist_ok=True)


class SlurmBackend:
    """Runs assignments (one shard each) as SLURM array jobs and waits for them, tailing
    results like the Docker backend (workers.Backend)."""

    def __init__(self, engine, settings: dict, run_dir: Path, weights_dir: Path, image_dir: Path | None,
                 pids: int = 4096):
        self.engine = engine
        self.settings = settings
        self.folder = RunFolder(run_dir)
        self.weights_dir = weights_dir
        self.image_dir = image_dir
        self.pids = pids
        self.run_key = run_key(run_dir)
        self.owner = f"slurm-{os.getpid()}"
        self.failures: list[str] = []
        self.submitted: dict[str, str] = {}
        self.images: dict[str, dict] = {}

    def provenance(self) -> dict:
        attempts = {}
        for path in sorted(self.folder.raw.glob("*/*.attempts")):
            lines = path.read_text().splitlines()
            attempts[f"{path.parent.name}/{path.stem}"] = {"starts": len(lines), "last": lines[-1] if lines else ""}
        return {"backend": "slurm", "slurm": {**self.settings, "jobs": self.submitted,
                                              "images": self.images, "task_starts": attempts}}

    def stop_leftovers(self, models: list[str]) -> None:
        """Cancel the tasks of these models that an earlier orchestrator of this run folder
        left queued or running, before the host reads and tidies their result files."""
        self._cancel([job_name(model, self.run_key) for model in models])

    def run(self, assignments: list[Assignment], on_tick=lambda: None, tick_s: float | None = None) -> None:
        """Submit one array job per model for the assignments' shards, wait for them all.
        Ctrl-C cancels exactly these jobs; so does the next orchestrator on the folder when
        this one was killed outright."""
        self._cancel([job_name(model, self.run_key) for model in {a.model for a in assignments}])
        log_dir = self.folder.slurm_logs
        log_dir.mkdir(parents=True, exist_ok=True)
        by_model: dict[str, list[Assignment]] = {}
        for assignment in assignments:
            by_model.setdefault(assignment.model, []).append(assignment)
        logs = {a.log: a.log.stat().st_size if a.log.exists() else 0 for a in assignments}  # read from there
        finished = False
        try:
            for model, model_assignments in by_model.items():
                first = model_assignments[0]
                self.images[model] = convert_image(self.engine, first.image, self.engine.image_id(first.image),
                                                   self.settings["runtime"], self.image_dir)
                for assignment in model_assignments:
                    prepare_worker_files(assignment)
                    if self.settings["runtime"] == "charliecloud":
                        charliecloud_mount_points(Path(self.images[model]["path"]), worker_spec(
                            assignment, task_slot(self.settings, self.pids), self.run_key, self.weights_dir))
                (self.weights_dir / model).mkdir(parents=True, exist_ok=True)  # its weights folder, mounted
                numbers = sorted(shard_number(a) for a in model_assignments)
                script = log_dir / f"{model}.sbatch"
                script.write_text(task_script(first, numbers, self.settings, self.images[model], self.run_key,
                                              self.weights_dir, self.owner, self.pids, log_dir))
                done = _run(["sbatch", "--parsable", str(script)], f"submitting {model}")
                self.submitted[model] = done.stdout.strip().split(";")[0]
                console.print(f"{model}: array job {self.submitted[model]}, {len(numbers)} task(s)")
            self._wait(on_tick, tick_s or float(self.settings["poll_s"]))
            finished = True
        finally:
            if not finished:
                self._cancel([job_name(model, self.run_key) for model in by_model])
        self._report(assignments, logs)

    def _wait(self, on_tick, tick_s: float) -> None:
        ids = ",".join(self.submitted.values())
        while True:
            on_tick()
            listing = subprocess.run(["squeue", "-h", "-j", ids, "-o", "%i %T %r"], capture_output=True, text=True)
            if listing.returncode == 0 and not listing.stdout.strip():
                break
            if listing.returncode and "Invalid job id" in listing.stderr:
                break  # every job ended and left the controller's memory
            for task, state, reason in (line.split(maxsplit=2) for line in listing.stdout.splitlines()):
                if state == "PENDING" and reason in NEVER_STARTS:
                    raise BenchError(f"SLURM task {task} cannot start: {reason} ({NEVER_STARTS[reason]}); "
                                     "the jobs of this run were cancelled, finished structures are kept")
            time.sleep(tick_s)
        on_tick()

    def _report(self, assignments: list[Assignment], logs: dict[Path, int]) -> None:
        """The workers' notices, and each shard left incomplete when its task ended."""
        for assignment in assignments:
            (shard,), (out,) = assignment.shards, assignment.outs  # a task relaxes one shard
            text = ""
            if assignment.log.exists():
                with assignment.log.open("rb") as log:
                    log.seek(logs[assignment.log])
                    text = log.read().decode(errors="replace")
            self.failures += worker_failures(assignment, None, text)
            if not wire.complete(out, set(read_ids(shard)), assignment.job.structure_timeout_s):
                number = shard_number(assignment)
                self.failures.append(
                    f"{assignment.model} {shard.name}: incomplete when SLURM task "
                    f"{self.submitted.get(assignment.model)}_{number} ended; see {assignment.log} and "
                    f"{self.folder.slurm_logs}/{assignment.model}-*_{number}.out")

    def _cancel(self, names: list[str]) -> None:
        """Cancel this user's jobs of these names and wait (up to a minute) until SLURM
        has let them go: the tasks stop their containers on SIGTERM."""
        user = ["--user", getpass.getuser()]
        for name in names:
            subprocess.run(["scancel", *user, "--name", name], capture_output=True)
        for _ in range(60):
            listing = subprocess.run(["squeue", "-h", *user, "--name", ",".join(names)], capture_output=True, text=True)
            if listing.returncode or not listing.stdout.strip():
                return
            time.sleep(1)


#: What the submit host runs.
SLURM_COMMANDS = ("sbatch", "squeue", "scancel")
#: What converts the images for a runtime on the submit host, beside the engine.
CONVERTERS = {"apptainer": "apptainer"}
#: What a node runs for a runtime, where that is not the runtime's name.
NODE_COMMANDS = {"charliecloud": "ch-run"}


def check_commands(runtime: str) -> None:
    """The SLURM commands, and the tools that convert images for `runtime`, before anything
    is converted or submitted."""
    missing = [tool for tool in SLURM_COMMANDS if not shutil.which(tool)]
    if missing:
        raise BenchError(f"backend slurm: {', '.join(missing)} not found on this host; run on the cluster's "
                         "login node (or load its SLURM module), or set backend: docker")
    converter = CONVERTERS.get(runtime)
    if converter and not shutil.which(converter):
        raise BenchError(f"slurm.runtime {runtime}: {converter} not found on this host (it converts the images); "
                         "install it, or convert on a machine that has it (docs/cluster.md)")


def check_shared(settings: dict, folders: dict[str, Path]) -> None:
    """With slurm.shared_dir set, the run and cache folders must be inside it (the nodes
    see nothing else)."""
    shared = settings["shared_dir"]
    if not shared:
        return
    shared_path = Path(shared).expanduser().resolve()
    for key, folder in folders.items():
        if not Path(folder).resolve().is_relative_to(shared_path):
            raise BenchError(f"backend slurm: {key} {folder} is not inside slurm.shared_dir {shared_path}, "
                             "which the nodes see; set results_dir and cache_dir under it")


def doctor_checks(settings: dict, folders: dict[str, Path], check) -> None:
    """`make doctor` for backend slurm: the commands, the partition, the runtime and the
    shared folders as a node sees them (one short probe task). check(ok, what, remedy)."""
    missing = [tool for tool in (*SLURM_COMMANDS, "sinfo", "srun") if not shutil.which(tool)]
    check(not missing, "SLURM commands " + (f"missing: {', '.join(missing)}" if missing else "found"),
          "run on the cluster's login node, or load its SLURM module")
    if missing:
        return
    listing = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True)
    partitions = listing.stdout.split()
    wanted = settings["partition"]
    found = wanted in (p.rstrip("*") for p in partitions) if wanted else any(p.endswith("*") for p in partitions)
    check(found, f"partition {wanted or '(the default)'} among {', '.join(partitions) or 'none'}",
          "set slurm.partition to one of these" if partitions else f"sinfo: {listing.stderr.strip()}")
    try:
        check_shared(settings, folders)
        check(True, f"results and cache inside the shared folder {settings['shared_dir'] or '(not set)'}")
    except BenchError as exc:
        check(False, "shared folder", str(exc))
    runtime = settings["runtime"]
    converter = CONVERTERS.get(runtime)
    if converter:
        check(bool(shutil.which(converter)), f"{converter} on this host (converts the images for {runtime})",
              f"install {converter} here, or convert on a machine that has it (docs/cluster.md)")
    node_command = NODE_COMMANDS.get(runtime, runtime)
    probe = [f'command -v {node_command} >/dev/null && echo "runtime: $(USER=${{USER:-$(id -un)}} '
             f'{node_command} --version 2>&1 | head -n1)"']
    probe += [f"test -w {shlex.quote(str(f))} && echo writable:{shlex.quote(key)}" for key, f in folders.items()]
    command = ["srun", "-N1", "-n1", "--immediate=60", "--time=2", f"--cpus-per-task={settings['cpus_per_task']}"]
    command += [f"--partition={wanted}"] if wanted else []
    command += [f"--account={settings['account']}"] if settings["account"] else []
    try:
        done = subprocess.run([*command, "sh", "-c", "; ".join(probe)], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        check(False, "a probe task on a node", "the cluster gave no node within two minutes; try again later")
        return
    lines = done.stdout.splitlines()
    if not lines:
        check(False, "a probe task on a node", f"srun: {done.stderr.strip()[-300:]}")
        return
    version = next((line.split(": ", 1)[1] for line in lines if line.startswith("runtime: ")), "")
    check(bool(version), f"{runtime} on a node: {version or 'not found'}",
          f"ask the site for {runtime} on the nodes, or set slurm.runtime to one they have")
    for key, folder in folders.items():
        check(f"writable:{key}" in lines, f"{key} {folder} writable from a node",
              "put results_dir and cache_dir on the filesystem the nodes share (slurm.shared_dir)")


def for_plan(plan, docker) -> tuple[SlurmBackend, list[Slot]]:
    """The SLURM backend of a run plan (its commands and shared folders checked first), and
    its one slot: an array task's resources. Converted images go to the cache unless
    slurm.image_dir says where (Docker's nodes share the submit host's engine unless it is
    set; Podman keeps images per node, or per user)."""
    s = plan.settings
    check_commands(s.slurm["runtime"])
    check_shared(s.slurm, {"results_dir": plan.run_dir, "cache_dir": plan.cache.root})
    image_dir = s.slurm_image_dir
    if image_dir is None and s.slurm["runtime"] != "docker":
        image_dir = plan.cache.images
    backend = SlurmBackend(docker, s.slurm, plan.run_dir, plan.cache.weights, image_dir, pids=s.worker_pids)
    return backend, [task_slot(s.slurm, s.worker_pids)]
