"""The SLURM backend: the batch script and image conversion with stand-in runtimes (what a
real runtime cannot show here: GPU flags, the order of conversion attempts; and a task's exit
code and stop, quicker so), then whole runs through a real SLURM (`.ci/slurm start`) with the emt
image on each runtime of its node: docker, podman, charliecloud and a real Apptainer
(`.ci/apptainer start`), each probed for least privilege inside a running worker."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write

from helpers import NO_REPORT, REPO, bench, bench_command, emt_dataset, last_line, relaxations, worker_job


def load_manifest(**overrides):
    from orchestrator.manifest import load

    return load(REPO / "benchmark.yaml", {"backend": "slurm", **overrides})


def stub(bin_dir: Path, name: str, body: str) -> None:
    """An executable `name` on a PATH of the test's own: records its arguments, then runs `body`."""
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(f'#!/bin/bash\nprintf "%s\\n" "{name} $*" >> "{bin_dir}/calls"\n{body}\n')
    path.chmod(0o755)


def write_task_script(tmp_path: Path, image: dict | None = None, **slurm) -> Path:
    from orchestrator.workers.assignments import Assignment
    from orchestrator.workers.slurm import task_script

    settings = load_manifest(**{f"slurm.{k}": v for k, v in slurm.items()})["slurm"]
    run_dir = tmp_path / "run"
    out_dir = run_dir / "raw" / "emt"
    out_dir.mkdir(parents=True)
    assignment = Assignment(model="emt", image="umlip-0123d/emt:test", shards=(run_dir / "shards" / "shard-0003.jsonl",),
                            out_dir=out_dir, job=worker_job(protocol=load_manifest().relaxation_protocol()))
    script = run_dir / "emt.sbatch"
    script.write_text(task_script(assignment, [3], settings, image or {"path": str(tmp_path / "emt.sif")}, "key",
                                  tmp_path / "weights", "owner", pids=64, log_dir=run_dir / "slurm"))
    return script


def run_task(script: Path, bin_dir: Path, **env) -> subprocess.CompletedProcess:
    environ = {key: value for key, value in os.environ.items() if key != "CUDA_VISIBLE_DEVICES"}
    environ.update(PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_ARRAY_TASK_ID="3", SLURM_ARRAY_JOB_ID="77", **env)
    return subprocess.run(["bash", str(script)], env=environ, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("code", [0, 69, 137])
def test_a_task_runs_the_same_worker_once_and_ends_with_its_exit_code(tmp_path, code):
    script = write_task_script(tmp_path)
    out_dir = tmp_path / "run" / "raw" / "emt"
    bin_dir = tmp_path / "bin"
    stub(bin_dir, "apptainer", f'echo "relaxing"; exit {code}')
    done = run_task(script, bin_dir, SLURM_RESTART_COUNT="1")
    assert done.returncode == code, done.stderr
    calls = (bin_dir / "calls").read_text().splitlines()
    assert len(calls) == 1  # retries are the supervisor's, inside the container
    assert "task 77_3 restart 1 on" in (out_dir / "shard-0003.attempts").read_text()
    assert (out_dir / "shard-0003.log").read_text() == "relaxing\n"
    call = calls[0].split()
    assert call[:4] == ["apptainer", "exec", "--containall", "--cleanenv"]
    assert "--net" in call and call[call.index("--network") + 1] == "none"
    run_dir = tmp_path / "run"
    assert f"--bind={run_dir / 'shards'}:/data/shards:ro" in call
    assert f"--bind={tmp_path / 'weights' / 'emt'}:/cache/emt:ro" in call  # its own weights only
    assert f"--bind={out_dir / 'shard-0003.jsonl'}:/data/out/shard-0003.jsonl:rw" in call
    assert f"--bind={out_dir / 'shard-0003.crashed'}:/data/out/shard-0003.crashed:rw" in call
    assert "--env=OPENBLAS_NUM_THREADS=1" in call and "--nv" not in call
    image = call.index(str(tmp_path / "emt.sif"))
    assert call[image + 1:image + 4] == ["python", "-m", "adapters.supervise"]
    assert call[call.index("--shard") + 1] == "/data/shards/shard-0003.jsonl"
    assert '"device": "cpu"' in (bin_dir / "calls").read_text()


def test_a_task_stopped_by_slurm_stops_its_worker(tmp_path):
    script = write_task_script(tmp_path, {"image_id": "sha256:" + "7" * 64}, runtime="docker")
    bin_dir = tmp_path / "bin"
    stub(bin_dir, "docker", 'if [ "$1" = run ]; then sleep 30; fi')
    environ = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_ARRAY_TASK_ID": "3",
               "SLURM_ARRAY_JOB_ID": "77"}
    task = subprocess.Popen(["bash", str(script)], env=environ)
    deadline = time.monotonic() + 20
    while "docker run" not in ((bin_dir / "calls").read_text() if (bin_dir / "calls").exists() else ""):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    task.send_signal(signal.SIGTERM)  # scancel, a time limit
    assert task.wait(timeout=20) == 143
    calls = (bin_dir / "calls").read_text().splitlines()
    assert calls[-1].startswith("docker rm -f umlip-0123d-key-emt-shard-0003")  # the container goes too


def test_a_gpu_task_passes_its_assigned_gpu_only(tmp_path):
    script = write_task_script(tmp_path, gpus_per_task=1, isolate_network=False)
    text = script.read_text()
    assert "#SBATCH --gres=gpu:1" in text and "#SBATCH --requeue" in text and "#SBATCH --array=3" in text
    bin_dir = tmp_path / "bin"
    stub(bin_dir, "apptainer", "exit 0")
    assert run_task(script, bin_dir, CUDA_VISIBLE_DEVICES="2").returncode == 0
    call = (bin_dir / "calls").read_text().split()
    assert call[call.index("--nv") + 2] == "CUDA_VISIBLE_DEVICES=2" and "--net" not in call
    assert '"device": "cuda"' in (bin_dir / "calls").read_text()


def test_a_podman_task_loads_the_archive_when_its_node_lacks_the_image_and_passes_gpus_by_cdi(tmp_path):
    script = write_task_script(tmp_path, {"archive": str(tmp_path / "emt.tar"), "image_id": "sha256:" + "7" * 64},
                               runtime="podman", gpus_per_task=2)
    text = script.read_text()
    bin_dir = tmp_path / "bin"
    stub(bin_dir, "podman", 'case "$1" in image) exit 1;; esac; exit 0')  # the node lacks the image
    assert run_task(script, bin_dir, CUDA_VISIBLE_DEVICES="1,3").returncode == 0
    calls = (bin_dir / "calls").read_text().splitlines()
    assert calls[0] == "podman image inspect " + "7" * 64 and calls[1] == f"podman load -i {tmp_path / 'emt.tar'}"
    run = next(call.split() for call in calls if call.startswith("podman run"))
    assert {"--device=nvidia.com/gpu=1", "--device=nvidia.com/gpu=3"} <= set(run) and "--gpus" not in run
    assert {"--read-only", "--cap-drop=ALL", "--security-opt=no-new-privileges"} <= set(run)
    assert run[run.index("--network") + 1] == "none" and "#SBATCH --gres=gpu:2" in text
    assert run[run.index("--device=nvidia.com/gpu=3") + 1] == "7" * 64  # the image that was recorded, by its id


def test_a_charliecloud_task_runs_ch_run_unprivileged_without_a_network_or_the_host_s_environment(tmp_path):
    script = write_task_script(tmp_path, runtime="charliecloud")
    words = script.read_text().replace("\\\n", " ").split()
    run = words[words.index("run=(setpriv" if os.getuid() == 0 else "run=(unshare"):]
    if os.getuid() == 0:  # ch-run keeps the caller's uid: never root inside
        assert run[1:4] == ["--reuid=65534", "--regid=65534", "--clear-groups"]
    assert run[run.index("unshare") + 1:run.index("ch-run")] == ["--user", "--map-current-user", "--net"]
    options = run[run.index("ch-run") + 1:]
    assert options[:4] == ["--private-tmp", "'--unset-env=*'", "--set-env", "--cd=/opt/umlip-0123d"]
    assert f"--bind={tmp_path / 'weights' / 'emt'}:/cache/emt" in options  # its own weights only
    assert "--set-env=OPENBLAS_NUM_THREADS=1" in options
    worker = words[words.index("worker=(" + str(tmp_path / "emt.sif")):]
    assert worker[1:5] == ["--", "python", "-m", "adapters.supervise"]
    plain = write_task_script(tmp_path / "open", runtime="charliecloud", isolate_network=False).read_text()
    assert "unshare" not in plain


def test_charliecloud_binds_onto_mount_points_made_in_its_image_directory(tmp_path):
    from orchestrator.workers.slurm import charliecloud_mount_points
    from orchestrator.workers.spec import Mount, WorkerSpec

    (tmp_path / "shards").mkdir()
    (tmp_path / "shard-0003.jsonl").touch()
    mounts = [Mount(str(tmp_path / "shards"), "/data/shards"),
              Mount(str(tmp_path / "shard-0003.jsonl"), "/data/out/shard-0003.jsonl")]
    spec = WorkerSpec(image="emt", command=[], mounts=mounts)
    image = tmp_path / "image"
    charliecloud_mount_points(image, spec)
    charliecloud_mount_points(image, spec)  # again: nothing changes
    assert (image / "data" / "shards").is_dir() and (image / "data" / "out" / "shard-0003.jsonl").is_file()


def test_array_ranges_and_sbatch_options():
    from orchestrator.workers.slurm import array_spec, sbatch_header

    assert array_spec([0, 1, 2, 5, 7, 8], None) == "0-2,5,7-8"
    assert array_spec([4], 3) == "4%3"
    settings = load_manifest(**{"slurm.partition": "gpu", "slurm.account": "mat", "slurm.memory_gb_per_task": 8,
                                "slurm.sbatch_options": ["--qos=long"]})["slurm"]
    header = sbatch_header("mace", [0, 1], settings, Path("/logs"), "umlip-0123d-mace-key")
    for option in ("--partition=gpu", "--account=mat", "--mem=8192M", "--qos=long", "--array=0-1",
                   "--output=/logs/mace-%A_%a.out", "--cpus-per-task=4", "--time=24:00:00"):
        assert f"#SBATCH {option}" in header


class Engine:
    """The engine as the conversions use it, with images of a few bytes; it writes its calls
    where the stand-in executables write theirs."""

    def __init__(self, calls: Path):
        self.calls = calls

    def save_image(self, tag: str, path: Path) -> None:
        with self.calls.open("a") as calls:
            calls.write(f"engine save {tag}\n")
        path.write_text(f"archive of {tag}\n")

    def export_files(self, tag: str, out) -> None:
        import io
        import tarfile

        with self.calls.open("a") as calls:
            calls.write(f"engine export {tag}\n")
        files = io.BytesIO()
        with tarfile.open(fileobj=files, mode="w") as tar:
            release = tarfile.TarInfo("etc/os-release")
            release.size = 7
            tar.addfile(release, io.BytesIO(b"trixie\n"))
            link = tarfile.TarInfo("etc/resolv.conf")  # a link to a host path: never to be written through
            link.type, link.linkname = tarfile.SYMTYPE, "/run/umlip-test-nowhere/resolv.conf"
            tar.addfile(link)
            device = tarfile.TarInfo("dev/null")  # ch-run mounts the host's /dev
            tar.addfile(device)
        out.write(files.getvalue())

    def image_environment(self, tag: str) -> list[str]:
        return ["PATH=/opt/venv/bin:/usr/bin", "LANG=C.UTF-8"]


def test_images_are_converted_once_per_image_id(tmp_path, monkeypatch):
    from orchestrator.workers.slurm import convert_image

    bin_dir = tmp_path / "bin"
    # no daemon access for apptainer: the conversion goes through a `docker save` archive
    stub(bin_dir, "apptainer", 'case "$4" in docker-daemon://*) exit 1;; esac; echo "SIF of $4" > "$3"')
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    engine = Engine(bin_dir / "calls")
    first = convert_image(engine, "umlip-0123d/emt:abc", "sha256:" + "1" * 64, "apptainer", tmp_path / "images")
    sif = Path(first["path"])
    assert sif.read_text().startswith("SIF of docker-archive://")
    assert first["sha256"] == hashlib.sha256(sif.read_bytes()).hexdigest()
    assert [c.split()[:2] for c in (bin_dir / "calls").read_text().splitlines()] == [
        ["apptainer", "build"], ["engine", "save"], ["apptainer", "build"]]
    assert not list((tmp_path / "images").glob("*.tar"))  # the archive was a step, not a product
    calls = (bin_dir / "calls").read_text()
    assert convert_image(engine, "umlip-0123d/emt:abc", "sha256:" + "1" * 64, "apptainer",
                         tmp_path / "images") == first
    assert (bin_dir / "calls").read_text() == calls  # reused
    second = convert_image(engine, "umlip-0123d/emt:abd", "sha256:" + "2" * 64, "apptainer", tmp_path / "images")
    assert second["path"] != first["path"]  # a new image id is a new conversion

    directory = convert_image(engine, "umlip-0123d/emt:abc", "sha256:" + "1" * 64, "charliecloud",
                              tmp_path / "images")
    tree = Path(directory["path"])
    assert (tree / "ch" / "environment").read_text() == "PATH=/opt/venv/bin:/usr/bin\nLANG=C.UTF-8\n"
    assert (tree / "etc" / "os-release").read_text() == "trixie\n" and (tree / "mnt" / "9").is_dir()
    assert (tree / "etc" / "hosts").is_file() and not list((tree / "dev").iterdir())
    assert (tree / "etc" / "resolv.conf").is_symlink() and not Path("/run/umlip-test-nowhere").exists()
    assert Path(directory["path"] + ".image-id").read_text() == "sha256:" + "1" * 64 + "\n"
    calls = (bin_dir / "calls").read_text()
    assert convert_image(engine, "umlip-0123d/emt:abc", "sha256:" + "1" * 64, "charliecloud",
                         tmp_path / "images") == directory
    assert (bin_dir / "calls").read_text() == calls and not list((tmp_path / "images").glob("*.partial"))

    archive = convert_image(engine, "umlip-0123d/emt:abc", "sha256:" + "1" * 64, "podman", tmp_path / "images")
    assert Path(archive["archive"]).read_text() == "archive of umlip-0123d/emt:abc\n"
    assert convert_image(engine, "umlip-0123d/emt:abc", "sha256:1", "docker", None) == {
        "runtime": "docker", "image": "umlip-0123d/emt:abc", "image_id": "sha256:1"}


def test_slurm_settings_are_checked(tmp_path, monkeypatch):
    from orchestrator.errors import BenchError
    from orchestrator.workers.slurm import check_shared

    with pytest.raises(BenchError, match="slurm.runtime must be one of apptainer, charliecloud, docker, podman"):
        load_manifest(**{"slurm.runtime": "singularty"})
    with pytest.raises(BenchError, match="backend must be one of docker, slurm"):
        load_manifest(backend="k8s")
    with pytest.raises(BenchError, match="slurm.sbatch_options"):
        load_manifest(**{"slurm.sbatch_options": ["qos=long"]})
    from orchestrator.workers import make_backend
    from orchestrator.run.plan import RunPlan, RunSettings

    plan = RunPlan(settings=RunSettings.from_manifest(load_manifest()), models=[], dataset=None, structures=[], subset_key="all", protocol={},
                   engine="ase", run_dir=tmp_path / "run", cache=load_manifest().cache)
    with pytest.raises(BenchError, match="sbatch, squeue, scancel not found on this host"):
        monkeypatch.setenv("PATH", str(tmp_path))
        make_backend(plan, None)
    monkeypatch.undo()
    settings = load_manifest(**{"slurm.shared_dir": str(tmp_path / "shared")})["slurm"]
    check_shared(settings, {"results_dir": tmp_path / "shared" / "results"})
    with pytest.raises(BenchError, match=r"cache_dir .*/home/cache is not inside slurm.shared_dir"):
        check_shared(settings, {"cache_dir": tmp_path / "home" / "cache"})


# --- a real SLURM -----------------------------------------------------------------------

def emt_set_with_slow_crystals(path: Path) -> None:
    """The emt pipeline set plus three rattled 108-atom copper crystals, whose relaxations
    last long enough to fail a node under them."""
    emt_dataset(path)
    frames = read(path, index=":")
    for seed in range(3):
        crystal = bulk("Cu", cubic=True).repeat(3)
        crystal.rattle(0.12, seed=seed)
        crystal.info["mat_id"] = f"cu108-{seed}"
        crystal.calc = SinglePointCalculator(crystal, energy=-3.5 * len(crystal))
        frames.append(crystal)
    write(path, frames, format="extxyz")


def slurm_args(runtime: str) -> tuple:
    """A bench of emt on SLURM with `runtime` on the node: one structure a task, one CPU each."""
    return ("--models", "emt", "--backend", "slurm", "--set", f"slurm.runtime={runtime}",
            "--set", "slurm.cpus_per_task=1", "--set", "slurm.poll_s=0.5", "--set", "shard_size=1", *NO_REPORT)


def our_tasks(state: str = "", besides: frozenset = frozenset()) -> list[str]:
    """'<task id> <state>' of the emt array jobs (of any run folder) in `state`, leaving
    out the jobs `besides`."""
    listing = subprocess.run(["squeue", "-h", "-o", "%j %i %F %T"], capture_output=True, text=True)
    return [f"{task} {task_state}" for name, task, job, task_state in map(str.split, listing.stdout.splitlines())
            if name.startswith("umlip-0123d-emt-") and state in task_state and job not in besides]


def wait_for(condition, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def raw_ids(run_dir: Path) -> Counter:
    return Counter(json.loads(line)["id"] for path in (run_dir / "raw" / "emt").glob("shard-*.jsonl")
                   for line in path.read_text().splitlines())


#: What every run on SLURM is compared with: the Docker backend's columns.
COLUMNS = ["id", "dimension", "steps", "energy_ev", "failure_reason", "converged"]


@pytest.fixture(scope="module")
def slow_set(cluster_folder, tmp_path_factory, engine):
    """The slow EMT set on the cluster's folder, and its results with the Docker backend on this host."""
    dataset = cluster_folder / "emt-set.extxyz"
    emt_set_with_slow_crystals(dataset)
    local = bench("--models", "emt", "--dataset", str(dataset), "--set", "shard_size=1", *NO_REPORT,
                  results=tmp_path_factory.mktemp("docker"))
    local_dir = Path(last_line(local))
    on_docker = pd.read_csv(local_dir / "results.csv", keep_default_na=False)[COLUMNS].sort_values("id")
    return cluster_folder, dataset, on_docker


def run_through_a_failed_node(command: list[str], slurm_node: str, while_running=lambda: None,
                              timeout_s: float = 600) -> Path:
    """Run `command` (a bench on SLURM), call while_running() once a task runs, then fail the
    node under it and bring it back; the finished run's folder."""
    run = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: our_tasks("RUNNING"), timeout_s)
        while_running()
        subprocess.run(["scontrol", "update", f"nodename={slurm_node}", "state=down", "reason=umlip-test"], check=True)
        time.sleep(2)
    finally:
        subprocess.run(["scontrol", "update", f"nodename={slurm_node}", "state=resume"])
    out, err = run.communicate(timeout=timeout_s)
    assert run.returncode == 0, err[-3000:]
    return Path(out.strip().splitlines()[-1])


def assert_like_docker_once_and_restarted(run_dir: Path, on_docker: pd.DataFrame, runtime: str) -> None:
    on_slurm = pd.read_csv(run_dir / "results.csv", keep_default_na=False)[COLUMNS].sort_values("id")
    assert len(on_slurm) == 8
    pd.testing.assert_frame_equal(on_slurm.reset_index(drop=True), on_docker.reset_index(drop=True))
    assert set(raw_ids(run_dir).values()) == {1}  # every structure exactly once
    starts = {p.stem: p.read_text().splitlines() for p in (run_dir / "raw" / "emt").glob("*.attempts")}
    assert len(starts) == 8
    assert any("restart 1" in line for lines in starts.values() for line in lines), starts
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["backend"] == "slurm" and provenance["status"] == "complete"
    assert provenance["slurm"]["runtime"] == runtime and provenance["slurm"]["jobs"]["emt"]
    # provenance keeps each task's starts; the restarted one's last start says so (its first start may
    # not have written its line: a node can fail between a task's start and its script's first command)
    assert any("restart 1" in s["last"] for s in provenance["slurm"]["task_starts"].values())


#: Reads, as the worker's own user, what a running worker process can write and do.
PROBE = """
import json, os, sys
pid = sys.argv[1]
status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
mounts = []
for line in open(f"/proc/{pid}/mountinfo"):
    fields = line.split()
    point, kind = fields[4], fields[fields.index("-") + 1]
    mounts.append([point, kind, os.access(f"/proc/{pid}/root{point}", os.W_OK)])
interfaces = [line.split(":")[0].strip() for line in open(f"/proc/{pid}/net/dev").readlines()[2:]]
print(json.dumps({"uid": status["Uid"].split(), "caps": [status[k].strip() for k in ("CapPrm", "CapEff", "CapBnd")],
                  "no_new_privs": status["NoNewPrivs"].strip(), "interfaces": interfaces, "mounts": mounts,
                  "image_writable": os.access(f"/proc/{pid}/root/opt/umlip-0123d", os.W_OK)}))
"""
#: Filesystems a container has of its own, gone when it ends.
PRIVATE = {"tmpfs", "devtmpfs", "mqueue", "devpts", "proc", "sysfs", "cgroup", "cgroup2"}


def probe_worker(results: Path) -> dict:
    """PROBE in a running relaxation process of a run in `results`, run as that process's user."""
    needle = "/".join(results.parts[-2:]) + "/"
    wait_for(lambda: relaxations(needle), 120)
    pid = relaxations(needle)[0]
    uid = int(Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0])
    done = subprocess.run(["/usr/bin/python3", "-c", PROBE, str(pid)], user=uid, group=uid, extra_groups=[], cwd="/",
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


#: What a runtime grants beyond the rest (docs/cluster.md): ch-run keeps the bounding set (no
#: capability in effect, no new privileges) and binds copies of /etc/passwd and /etc/group it writes.
BEYOND = {"charliecloud": {"bounding": True, "writable": {"/etc/passwd", "/etc/group"}}}


def assert_least_privilege(seen: dict, runtime: str) -> None:
    """Not root, no capability, no new privileges, no network, the image and the shards and
    weights read-only, and of the host's files only the shard's three writable."""
    beyond = BEYOND.get(runtime, {})
    assert seen["uid"] == ["65534"] * 4 and seen["caps"][:2] == ["0000000000000000"] * 2
    assert (seen["caps"][2] != "0000000000000000") == beyond.get("bounding", False)
    assert seen["no_new_privs"] == "1" and seen["interfaces"] == ["lo"]  # no network but loopback
    writable = {point for point, kind, can in seen["mounts"] if can and kind not in PRIVATE}
    shard_files = {p for p in writable if p.startswith("/data/out/shard-")}
    assert writable - shard_files == beyond.get("writable", set()), seen["mounts"]
    assert {p.rsplit(".", 1)[1] for p in shard_files} == {"jsonl", "crashed", "inflight"} and len(shard_files) == 3
    assert not seen["image_writable"]
    read_only = {point: can for point, kind, can in seen["mounts"]}
    assert read_only["/data/shards"] is False and read_only["/cache/emt"] is False and read_only["/"] is False


@pytest.mark.docker
@pytest.mark.slurm
@pytest.mark.parametrize("runtime", ["docker", "podman", "charliecloud"])
def test_a_runtime_relaxes_like_docker_unprivileged_through_a_failed_node(runtime, slurm_node, slow_set, request):
    """Each runtime of the nodes, for real: the Docker backend's table, every structure once
    though the node fails under a running task (requeued, resumed), and a least-privilege probe
    inside a running worker."""
    if runtime != "docker":
        request.getfixturevalue(runtime)
    cluster, dataset, on_docker = slow_set
    results = cluster / f"through-{runtime}"
    seen = {}
    command = bench_command(*slurm_args(runtime), "--set", f"cache_dir={cluster / 'cache'}", "--dataset", str(dataset),
                            results=results)
    run_dir = run_through_a_failed_node(command, slurm_node, lambda: seen.update(probe_worker(results)), timeout_s=1200)
    assert_like_docker_once_and_restarted(run_dir, on_docker, runtime)
    assert_least_privilege(seen, runtime)


@pytest.mark.docker
@pytest.mark.slurm
def test_a_real_apptainer_relaxes_like_docker_unprivileged_and_converts_once(slurm_node, slow_set, apptainer):
    """The backend unchanged against a real Apptainer (CI: 1.4.5, .ci/apptainer): each task runs
    `apptainer exec` as an unprivileged user; a node that fails under a task requeues it and it
    resumes; the SIF is built once per image id and the next run reuses it."""
    cluster, dataset, on_docker = slow_set
    args = (*slurm_args("apptainer"), "--set", f"cache_dir={cluster / 'cache'}", "--dataset", str(dataset))
    seen = {}
    run_dir = run_through_a_failed_node(bench_command(*args, results=cluster / "first"), slurm_node,
                                        lambda: seen.update(probe_worker(cluster / "first")), timeout_s=1200)
    assert_like_docker_once_and_restarted(run_dir, on_docker, "apptainer")
    assert_least_privilege(seen, "apptainer")

    sif = list((cluster / "cache" / "images").glob("emt-*.sif"))
    assert len(sif) == 1
    built = sif[0].stat().st_mtime_ns
    again = bench(*args, results=cluster / "second")
    assert "converting" not in again.stderr and sif[0].stat().st_mtime_ns == built  # the same SIF, reused
    second = Path(last_line(again))
    on_second = pd.read_csv(second / "results.csv", keep_default_na=False)[COLUMNS].sort_values("id")
    pd.testing.assert_frame_equal(on_second.reset_index(drop=True), on_docker.reset_index(drop=True))


@pytest.mark.docker
@pytest.mark.slurm
def test_interrupted_slurm_runs_cancel_only_their_jobs_and_resume(tmp_path, slurm_node, engine):
    dataset = tmp_path / "emt-set.extxyz"
    emt_set_with_slow_crystals(dataset)
    bystander = subprocess.run(["sbatch", "--parsable", "-J", "bystander", "--output=/dev/null", "--wrap", "sleep 300"],
                               capture_output=True, text=True, check=True).stdout.strip()
    command = bench_command(*slurm_args("docker"), "--dataset", str(dataset), results=tmp_path / "r")
    try:
        # an orchestrator killed outright leaves its jobs; the next one on the folder cancels them
        killed = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        wait_for(lambda: our_tasks("RUNNING"))
        killed.kill()
        killed.wait()
        leftover = frozenset(task.split("_")[0] for task in our_tasks())
        assert leftover
        stopped = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: our_tasks("RUNNING", besides=leftover))
        stopped.send_signal(signal.SIGINT)
        _, err = stopped.communicate(timeout=120)
        assert stopped.returncode == 130, err[-2000:]
        assert not our_tasks()
        assert subprocess.run(["squeue", "-h", "-j", bystander], capture_output=True, text=True).stdout.strip()
        assert not subprocess.run(["docker", "ps", "-q", "--filter", "label=org.umlip-0123d.model=emt"],
                                  capture_output=True, text=True).stdout.strip()
    finally:
        subprocess.run(["scancel", bystander])
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = Path(last_line(done))
    assert set(raw_ids(run_dir).values()) == {1} and len(raw_ids(run_dir)) == 8


@pytest.mark.slurm
def test_doctor_probes_the_nodes(tmp_path, slurm_node):
    command = [*bench_command(results=tmp_path)[:2], "orchestrator", "doctor", "--backend", "slurm",
               "--set", "slurm.runtime=docker", "--set", "slurm.cpus_per_task=1", "--set", f"results_dir={tmp_path}"]
    wide = {**os.environ, "COLUMNS": "400"}  # one finding a line
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=200, env=wide)
    assert "docker on a node: Docker version" in done.stderr
    assert "workers: SLURM array tasks running docker on the nodes" in done.stderr
    assert f"results_dir {tmp_path} writable from a node" in done.stderr
    if shutil.which("ch-run"):  # a runtime whose command is not its name
        charliecloud = subprocess.run([*command, "--set", "slurm.runtime=charliecloud"], cwd=REPO, capture_output=True,
                                      text=True, timeout=200, env=wide)
        assert re.search(r"ok +charliecloud on a node: \d+\.\d+", charliecloud.stderr), charliecloud.stderr
    wrong = subprocess.run([*command, "--set", "slurm.partition=nowhere"], cwd=REPO, capture_output=True, text=True,
                           env=wide)
    assert wrong.returncode == 1 and "FAIL partition nowhere" in wrong.stderr
