"""The SLURM backend: the Docker backend's images, shards and worker command, run as one
array job per model (one task per shard) on a cluster.

The submit host builds the images with Docker as usual and converts each one once per
image id for the nodes' container runtime: a SIF file for Apptainer; for Docker or
Podman on nodes with engines of their own, a `docker save` archive the task loads when
its node lacks the image. Every task runs the same `python -m adapters.relax` command
with the same mounts and limits as a Docker-backend container (container_kwargs). The
results land in the run folder on the shared filesystem, where the host tails them for
progress as with the Docker backend; the merge, metrics and report are the same code.

A task reruns its container until max_worker_retries + 1 deaths in a row bring no new
result and records a structure its worker died on in the crash list, as the Docker
backend does; a task whose node fails
is requeued by SLURM (--requeue) and resumes its shard from the lines already written,
so a structure is never relaxed into the results twice.
"""

from __future__ import annotations

import getpass
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from adapters import results
from adapters.relax import CANNOT_WRITE, crash_list_path, in_flight_path
from orchestrator.datasets import sha256_of
from orchestrator.engine import console
from orchestrator.errors import BenchError
from orchestrator.scheduler import (KILLED_FROM_OUTSIDE, Job, Slot, container_kwargs,
                                    prepare_worker_files, run_key)
from orchestrator.shards import read_ids

RUNTIMES = ("apptainer", "docker", "podman")
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


def engine_options(kwargs: dict, cpus: int) -> list[str]:
    """`docker run` / `podman run` options equal to the Docker SDK arguments of
    container_kwargs, with the task's CPUs (the image, command and GPU are added by the
    task script)."""
    options = ["--name", kwargs["name"], "--user", kwargs["user"], "--network", kwargs["network_mode"],
               "--workdir", kwargs["working_dir"], "--pids-limit", str(kwargs["pids_limit"]), f"--cpus={cpus}"]
    options += [f"--cap-drop={cap}" for cap in kwargs["cap_drop"]]
    options += [f"--security-opt={opt}" for opt in kwargs["security_opt"]]
    options += ["--read-only"] if kwargs["read_only"] else []
    options += [f"--tmpfs={path}:{opts}" for path, opts in kwargs["tmpfs"].items()]
    options += [f"--shm-size={kwargs['shm_size']}b"]
    options += [f"--memory={kwargs['mem_limit']}b"] if "mem_limit" in kwargs else []
    options += [f"--label={key}={value}" for key, value in kwargs["labels"].items()]
    options += [f"--volume={src}:{spec['bind']}:{spec['mode']}" for src, spec in kwargs["volumes"].items()]
    options += [f"--env={key}={value}" for key, value in kwargs["environment"].items()]
    return options


def apptainer_options(kwargs: dict, isolate_network: bool) -> list[str]:
    """`apptainer exec` options for the same container: its own /tmp, /dev and
    environment (--containall --cleanenv), the image read-only (Apptainer's default),
    the same binds, variables and working folder; the user is the one who submitted."""
    options = ["--containall", "--cleanenv", "--pwd", kwargs["working_dir"]]
    options += ["--no-privs"] if os.getuid() == 0 else []  # root here: drop what root would keep
    options += ["--net", "--network", "none"] if isolate_network else []
    options += [f"--bind={src}:{spec['bind']}:{spec['mode']}" for src, spec in kwargs["volumes"].items()]
    options += [f"--env={key}={value}" for key, value in kwargs["environment"].items()]
    return options


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


def shard_number(job: Job) -> int:
    """The shard's number (shard-0007 -> 7): its task's index in the array."""
    return int(job.shards[0].stem.split("-")[-1])


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


def task_script(job: Job, numbers: list[int], settings: dict, image: dict, run_key_: str, cache_dir: Path,
                owner: str, max_retries: int, pids: int, log_dir: Path) -> str:
    """The batch script of one model's array job: task N relaxes shard-N with the same
    container as the Docker backend, retried and crash-recorded the same way."""
    template = Job(model=job.model, image=job.image, shards=(job.shards[0].parent / f"{SHARD}.jsonl",),
                   out_dir=job.out_dir, job=job.job)
    kwargs = container_kwargs(template, task_slot(settings, pids), run_key_, cache_dir, owner)
    runtime = settings["runtime"]
    worker = kwargs["command"]
    if runtime == "apptainer":
        run = ["apptainer", "exec", *apptainer_options(kwargs, settings["isolate_network"])]
        tail = [image["path"], *worker]
        gpus = '(--nv --env "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES")'
        stop = 'kill "$pid" 2>/dev/null'
        oom = []  # SLURM itself ends a task over its memory (OUT_OF_MEMORY)
    else:
        run = [runtime, "run", *engine_options(kwargs, settings["cpus_per_task"])]
        tail = [job.image, *worker]
        gpus = '(--gpus "device=$CUDA_VISIBLE_DEVICES")'
        stop = f'{runtime} rm -f "$name" >/dev/null 2>&1'
        oom = [f'  [ "$({runtime} inspect -f "{{{{.State.OOMKilled}}}}" "$name" 2>/dev/null)" = true ] && oom=yes']
    load = []
    if image.get("archive"):  # nodes with engines of their own load the image once
        load = [f"{runtime} image inspect {shlex.quote(job.image)} >/dev/null 2>&1 || "
                f"{runtime} load -i {shlex.quote(image['archive'])} >/dev/null"]
    out = template.outs[0]
    return "\n".join([
        "#!/bin/bash",
        *sbatch_header(job.model, numbers, settings, log_dir, job_name(job.model, run_key_)),
        f"# {job.model}: one task per shard; written by the orchestrator (orchestrator/slurm.py)",
        "set -u",
        'shard=$(printf "shard-%04d" "$SLURM_ARRAY_TASK_ID")',
        f"name={bash_word(kwargs['name'])}",
        f"out={bash_word(str(out))}",
        f"log={bash_word(str(out.with_suffix('.log')))}",
        f"in_flight={bash_word(str(in_flight_path(out)))}",
        f"crashed={bash_word(str(crash_list_path(out)))}",
        # one line per start of this task: a restart after a failed node shows here
        f'echo "$(date -u +%FT%TZ) task ${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}} '
        f'restart ${{SLURM_RESTART_COUNT:-0}} on $(hostname)" >> {bash_word(str(out.with_suffix(".attempts")))}',
        bash_array("run", run),
        bash_array("worker", tail),
        "gpus=()",
        f'[ -n "${{CUDA_VISIBLE_DEVICES:-}}" ] && gpus={gpus}',
        'pid=""',
        # scancel, a time limit or a failing node: stop the container too (an engine's
        # container is no child of this script)
        f"stop() {{ {stop}; }}",
        "trap 'stop; exit 143' TERM INT",
        *load,
        "code=0",
        # given up after max_retries + 1 deaths in a row without a new result (as the Docker backend)
        "fruitless=0",
        f'while [ "$fruitless" -le {max_retries} ]; do',
        '  written=$(stat -c %s "$out" 2>/dev/null || echo 0)',
        "  stop  # a container an earlier run of this task left behind",
        '  "${run[@]}" "${gpus[@]}" "${worker[@]}" >> "$log" 2>&1 &',
        '  pid=$!; wait "$pid"; code=$?',
        "  oom=no",
        *oom,
        "  stop",
        f'  case "$code" in 0|{CANNOT_WRITE}) exit "$code" ;; esac',
        # a worker that died on its own names its structure in the crash list
        f'  if [ "$oom" = yes ] || ! [[ " {" ".join(map(str, KILLED_FROM_OUTSIDE))} " == *" $code "* ]]; then',
        '    [ -s "$in_flight" ] && printf "%s\\n" "$(cat "$in_flight")" >> "$crashed"',
        "  fi",
        '  if [ "$(stat -c %s "$out" 2>/dev/null || echo 0)" -gt "$written" ]; then fruitless=0; '
        "else fruitless=$((fruitless + 1)); fi",
        "done",
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


def convert_image(client, image: str, image_id: str, runtime: str, image_dir: Path | None) -> dict:
    """The image in the form the nodes run, made once per image id: {"path", "sha256"} of a
    SIF for Apptainer; {"archive", "sha256"} of a `docker save` archive for Docker or
    Podman when image_dir is set; nothing to convert when the nodes share this engine."""
    record = {"runtime": runtime, "image": image, "image_id": image_id}
    if runtime != "apptainer" and image_dir is None:
        return record
    image_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{image.split('/')[-1].split(':')[0]}-{image_id.split(':')[-1][:16]}"
    target = image_dir / (f"{stem}.sif" if runtime == "apptainer" else f"{stem}.tar")
    checksum = target.with_name(target.name + ".sha256")
    if not (target.exists() and checksum.exists()):
        partial = target.with_name(target.name + ".partial")
        archive = target.with_suffix(".tar")
        console.print(f"converting {image} for {runtime} on the nodes: {target}")
        if runtime == "apptainer" and not shutil.which("docker"):
            raise BenchError("converting images for Apptainer needs the docker client on this host")
        if runtime == "apptainer":
            try:
                _run(["apptainer", "build", "--force", str(partial), f"docker-daemon://{image}"],
                     f"converting {image}")
            except BenchError:  # no daemon socket for apptainer: go through an archive
                _run(["docker", "save", "-o", str(archive), image], f"saving {image}")
                _run(["apptainer", "build", "--force", str(partial), f"docker-archive://{archive}"],
                     f"converting {image}")
                archive.unlink()
        else:
            _run(["docker", "save", "-o", str(partial), image], f"saving {image}")
        partial.replace(target)
        checksum.write_text(sha256_of(target) + "\n")
    key = "path" if runtime == "apptainer" else "archive"
    return {**record, key: str(target), "sha256": checksum.read_text().strip()}


class SlurmScheduler:
    """Runs jobs as SLURM array jobs and waits for them, tailing results like the Docker
    Scheduler (same interface: run(jobs, on_tick), failures, provenance())."""

    def __init__(self, client, settings: dict, run_dir: Path, cache_dir: Path, max_retries: int,
                 image_dir: Path, pids: int = 4096):
        self.client = client
        self.settings = settings
        self.run_dir = run_dir
        self.cache_dir = cache_dir
        self.max_retries = max_retries
        self.image_dir = image_dir
        self.pids = pids
        self.run_key = run_key(run_dir)
        self.owner = f"slurm-{os.getpid()}"
        self.failures: list[str] = []
        self.submitted: dict[str, str] = {}
        self.images: dict[str, dict] = {}

    def provenance(self) -> dict:
        attempts = {}
        for path in sorted((self.run_dir / "raw").glob("*/*.attempts")):
            lines = path.read_text().splitlines()
            attempts[f"{path.parent.name}/{path.stem}"] = {"starts": len(lines), "last": lines[-1] if lines else ""}
        return {"backend": "slurm", "slurm": {**self.settings, "jobs": self.submitted,
                                              "images": self.images, "task_starts": attempts}}

    def stop_leftovers(self, models: list[str]) -> None:
        """Cancel the tasks of these models that an earlier orchestrator of this run folder
        left queued or running, before the host reads and tidies their result files."""
        self._cancel([job_name(model, self.run_key) for model in models])

    def run(self, jobs: list[Job], on_tick=lambda: None, tick_s: float | None = None) -> None:
        """Submit one array job per model for the shards in `jobs`, wait for them all; the
        caller holds the run folder's RunLock. Ctrl-C cancels exactly these jobs; so does
        the next orchestrator on the folder when this one was killed outright."""
        self._cancel([job_name(model, self.run_key) for model in {job.model for job in jobs}])
        log_dir = self.run_dir / "slurm"
        log_dir.mkdir(parents=True, exist_ok=True)
        by_model: dict[str, list[Job]] = {}
        for job in jobs:
            by_model.setdefault(job.model, []).append(job)
        models = list(by_model)
        finished = False
        try:
            for model, model_jobs in by_model.items():
                first = model_jobs[0]
                image_id = self.client.images.get(first.image).id
                self.images[model] = convert_image(self.client, first.image, image_id, self.settings["runtime"],
                                                   self.image_dir)
                for job in model_jobs:
                    prepare_worker_files(job)
                (self.cache_dir / model).mkdir(parents=True, exist_ok=True)  # its weights folder, mounted
                numbers = sorted(shard_number(job) for job in model_jobs)
                script = log_dir / f"{model}.sbatch"
                script.write_text(task_script(first, numbers, self.settings, self.images[model], self.run_key,
                                              self.cache_dir, self.owner, self.max_retries, self.pids, log_dir))
                done = _run(["sbatch", "--parsable", str(script)], f"submitting {model}")
                self.submitted[model] = done.stdout.strip().split(";")[0]
                console.print(f"{model}: array job {self.submitted[model]}, {len(numbers)} task(s)")
            self._wait(on_tick, tick_s or float(self.settings["poll_s"]))
            finished = True
        finally:
            if not finished:
                self._cancel([job_name(model, self.run_key) for model in models])
        self._report_incomplete(jobs)

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

    def _report_incomplete(self, jobs: list[Job]) -> None:
        for job in jobs:
            (shard,), (out,) = job.shards, job.outs  # a task relaxes one shard
            if not results.complete(out, set(read_ids(shard)), job.job.get("structure_timeout_s")):
                number = shard_number(job)
                self.failures.append(
                    f"{job.model} {shard.name}: incomplete when SLURM task {self.submitted.get(job.model)}_{number} "
                    f"ended; see {job.log} and {self.run_dir / 'slurm'}/{job.model}-*_{number}.out")

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


def check_commands() -> None:
    missing = [tool for tool in SLURM_COMMANDS if not shutil.which(tool)]
    if missing:
        raise BenchError(f"backend slurm: {', '.join(missing)} not found on this host; run on the cluster's "
                         "login node (or load its SLURM module), or set backend: docker")


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
    if settings["runtime"] == "apptainer":
        check(bool(shutil.which("apptainer")), "apptainer on this host (converts the images to SIF files)",
              "install Apptainer here, or convert on a machine that has it and Docker")
    runtime = settings["runtime"]
    probe = [f"{runtime} --version"] + [f"test -w {shlex.quote(str(f))} && echo writable:{shlex.quote(key)}"
                                        for key, f in folders.items()]
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
    version = next((line for line in lines if runtime in line.lower()), "")
    check(bool(version), f"{runtime} on a node: {version or 'not found'}",
          f"ask the site for {runtime} on the nodes, or set slurm.runtime to one they have")
    for key, folder in folders.items():
        check(f"writable:{key}" in lines, f"{key} {folder} writable from a node",
              "put results_dir and cache_dir on the filesystem the nodes share (slurm.shared_dir)")
