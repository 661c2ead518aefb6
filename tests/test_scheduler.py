import json
import os
import threading
from pathlib import Path

import pytest

from adapters.relax import crash_counts, id_lines, read_id_lines
from orchestrator.errors import BenchError
from orchestrator.scheduler import (Job, RunLock, Scheduler, Slot, container_kwargs, container_name, device_slots,
                                   one_job_per_slot, prepare_worker_files, record_crash, run_key)

JOB = Job(model="emt", image="img:tag", shards=(Path("/runs/r/shards/shard-0003.jsonl"),),
          out_dir=Path("/runs/r/raw/emt"), job={"calculator": "emt", "options": {}, "protocol": {}})


def test_by_default_a_cpu_runs_one_single_threaded_worker_per_core_and_a_gpu_one_worker():
    assert [(s.name, s.threads) for s in device_slots("cpu", None, None, cpu_count=3)] == \
        [("cpu-0", 1), ("cpu-1", 1), ("cpu-2", 1)]
    assert [(s.name, s.threads) for s in device_slots([0, 1], None, None, cpu_count=16, gpus=lambda: [0, 1])] == \
        [("gpu0-0", 8), ("gpu1-0", 8)]
    # the batched engine: one worker with every core on the CPU, still one per GPU
    assert [(s.name, s.threads) for s in device_slots("cpu", None, None, cpu_count=3, batched=True)] == [("cpu-0", 3)]
    assert len(device_slots([0, 1], None, None, cpu_count=16, gpus=lambda: [0, 1], batched=True)) == 2


def test_cpu_slots_share_the_cores():
    slots = device_slots("cpu", 2, None, cpu_count=16)
    assert [(s.name, s.gpu, s.threads, s.device) for s in slots] == [("cpu-0", None, 8, "cpu"), ("cpu-1", None, 8, "cpu")]


def test_gpu_slots_one_per_gpu_and_worker():
    slots = device_slots([0, 3], 2, 4, gpus=lambda: [0, 1, 3])
    assert [(s.name, s.gpu, s.device, s.threads) for s in slots] == [
        ("gpu0-0", "0", "cuda", 4), ("gpu0-1", "0", "cuda", 4), ("gpu3-0", "3", "cuda", 4), ("gpu3-1", "3", "cuda", 4)]
    assert [s.gpu for s in device_slots("all", 1, None, cpu_count=8, gpus=lambda: [0, 1])] == ["0", "1"]


def test_run_folders_with_the_same_name_get_different_keys(tmp_path):
    one, two = tmp_path / "a" / "run-x", tmp_path / "b" / "run-x"
    assert run_key(one) != run_key(two) and run_key(one) == run_key(tmp_path / "a" / "." / "run-x")
    assert container_name(run_key(one), JOB) != container_name(run_key(two), JOB)


def test_a_run_folder_is_locked_by_one_orchestrator(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(BenchError, match=f"another bench is running on this run folder \\(pid {os.getpid()}\\)"):
            with RunLock(tmp_path):
                pass
    with RunLock(tmp_path):  # released when the first one ended
        pass


def test_all_gpus_without_any_is_a_clear_error():
    with pytest.raises(BenchError, match="GPUS=cpu"):
        device_slots("all", 1, None, gpus=lambda: [])
    with pytest.raises(BenchError, match="GPU 2 not found .nvidia-smi reports 0, 1."):
        device_slots([0, 2], 1, None, gpus=lambda: [0, 1])
    with pytest.raises(BenchError, match="GPU 0 not found .nvidia-smi reports no GPU"):
        device_slots([0], 1, None, gpus=lambda: [])


def test_container_spec_mounts_and_bounds():
    kwargs = container_kwargs(JOB, Slot("gpu3-0", "3", 6), "run1", Path("/cache"), owner="me")
    assert kwargs["labels"]["org.umlip-0123d.run"] == "run1" and kwargs["labels"]["org.umlip-0123d.owner"] == "me"
    assert kwargs["volumes"]["/runs/r/shards"] == {"bind": "/data/shards", "mode": "ro"}
    assert kwargs["volumes"]["/cache/emt"] == {"bind": "/cache/emt", "mode": "ro"}  # its own weights, not others'
    assert "/cache" not in kwargs["volumes"]
    # only the job's own files are writable, not its model's folder
    assert "/runs/r/raw/emt" not in kwargs["volumes"]
    assert kwargs["volumes"]["/runs/r/raw/emt/shard-0003.jsonl"] == {"bind": "/data/out/shard-0003.jsonl", "mode": "rw"}
    assert kwargs["volumes"]["/runs/r/raw/emt/shard-0003.crashed"]["mode"] == "ro"
    assert (kwargs["network_mode"], kwargs["cap_drop"], kwargs["read_only"]) == ("none", ["ALL"], True)
    assert kwargs["user"] != "0:0" and not kwargs["user"].startswith("0:")
    assert kwargs["environment"]["OMP_NUM_THREADS"] == "6"
    assert kwargs["environment"]["OMP_WAIT_POLICY"] == "PASSIVE" and kwargs["environment"]["KMP_BLOCKTIME"] == "0"
    assert kwargs["nano_cpus"] == min(6, os.cpu_count()) * 10**9
    request = kwargs["device_requests"][0]
    assert request["DeviceIDs"] == ["3"] and request["Capabilities"] == [["gpu"]]
    command = kwargs["command"]
    assert command[command.index("--shard") + 1] == "/data/shards/shard-0003.jsonl"
    assert json.loads(command[command.index("--job") + 1])["device"] == "cuda"
    assert "device_requests" not in container_kwargs(JOB, Slot("cpu-0", None, 2), "run1", Path("/cache"))



def shard_jobs(model: str, numbers, out_dir: Path = Path("/runs/r/raw")) -> list[Job]:
    return [Job(model=model, image=f"{model}:tag", shards=(Path(f"/runs/r/shards/shard-{n:04d}.jsonl"),),
                out_dir=out_dir / model, job={"calculator": model}) for n in numbers]


def test_the_batched_engine_gives_each_slot_one_run_of_consecutive_shards_per_model():
    merged = one_job_per_slot(shard_jobs("mace", range(5)) + shard_jobs("orb", [1, 4]), slots=2)
    assert [(job.model, [s.stem for s in job.shards]) for job in merged] == [
        ("mace", ["shard-0000", "shard-0001", "shard-0002"]), ("mace", ["shard-0003", "shard-0004"]),
        ("orb", ["shard-0001"]), ("orb", ["shard-0004"])]
    assert merged[0].name == "shard-0000 to shard-0002 (3 shards)" and merged[2].name == "shard-0001"
    assert [len(job.shards) for job in one_job_per_slot(shard_jobs("mace", range(5)), slots=1)] == [5]


def test_a_job_of_several_shards_mounts_and_names_each_shards_files_only():
    (job,) = one_job_per_slot(shard_jobs("emt", [2, 3]), slots=1)
    kwargs = container_kwargs(job, Slot("cpu-0", None, 2), "run1", Path("/cache"))
    command = kwargs["command"]
    pairs = [(command[k + 1], command[k + 3]) for k, arg in enumerate(command) if arg == "--shard"]
    assert pairs == [("/data/shards/shard-0002.jsonl", "/data/out/shard-0002.jsonl"),
                     ("/data/shards/shard-0003.jsonl", "/data/out/shard-0003.jsonl")]
    writable = sorted(Path(k).name for k, v in kwargs["volumes"].items() if v["mode"] == "rw")
    assert writable == ["shard-0002.inflight", "shard-0002.jsonl", "shard-0003.inflight", "shard-0003.jsonl"]
    assert kwargs["name"].endswith("-emt-shard-0002") and job.log == Path("/runs/r/raw/emt/shard-0002.log")


def test_a_dead_worker_of_several_shards_lists_each_structure_in_flight_in_its_own_shards_crash_list(tmp_path):
    (job,) = one_job_per_slot(shard_jobs("emt", [0, 1, 2], out_dir=tmp_path), slots=1)
    (tmp_path / "emt").mkdir()
    (tmp_path / "emt" / "shard-0000.inflight").write_text(id_lines(["a", "b with space"]))
    (tmp_path / "emt" / "shard-0001.inflight").write_text("")
    (tmp_path / "emt" / "shard-0002.inflight").write_text(id_lines(["new\nline\tand tab"]))
    record_crash(job)
    record_crash(job)
    assert crash_counts(tmp_path / "emt" / "shard-0000.jsonl") == {"a": 2, "b with space": 2}
    assert not (tmp_path / "emt" / "shard-0001.crashed").exists()
    assert crash_counts(tmp_path / "emt" / "shard-0002.jsonl") == {"new\nline\tand tab": 2}


def test_worker_files_are_never_followed_through_a_link_and_stale_markers_blame_no_one(tmp_path):
    (job,) = shard_jobs("emt", [0], out_dir=tmp_path)
    (tmp_path / "emt").mkdir()
    (tmp_path / "emt" / "shard-0000.inflight").write_text(id_lines(["healthy"]))  # left by an interrupted run
    prepare_worker_files(job)
    assert (tmp_path / "emt" / "shard-0000.inflight").read_text() == ""  # a worker dying at start blames no one
    record_crash(job)
    assert crash_counts(tmp_path / "emt" / "shard-0000.jsonl") == {}
    victim = tmp_path / "host-file"
    victim.write_text("precious")
    before = victim.stat()
    (tmp_path / "emt" / "shard-0000.inflight").unlink()
    (tmp_path / "emt" / "shard-0000.inflight").symlink_to(victim)  # planted in the run folder
    with pytest.raises(BenchError, match="shard-0000.inflight: a symbolic link in the run folder"):
        prepare_worker_files(job)
    assert victim.read_text() == "precious" and (victim.stat().st_uid, victim.stat().st_gid) == (before.st_uid,
                                                                                             before.st_gid)


class ScriptedWorkers(Scheduler):
    """The scheduler's retry policy with workers that follow a script: each run writes
    `results` lines (and names `in_flight` in its marker) and exits with `code`."""

    def __init__(self, tmp_path, script, max_retries=2):
        super().__init__(client=None, slots=[], run_dir=tmp_path, cache_dir=tmp_path / "cache", max_retries=max_retries)
        self.script, self.runs = list(script), 0

    def _run_container(self, job, slot):
        results, code, in_flight = self.script[self.runs]
        self.runs += 1
        out = job.outs[-1]
        with out.open("a") as handle:
            handle.writelines(f'{{"id": "s{self.runs}-{k}"}}\n' for k in range(results))
        out.with_suffix(".inflight").write_text(in_flight)
        return code, False, False


@pytest.mark.parametrize("script, runs, given_up", [
    ([(1, 139, "x"), (1, 139, "y"), (1, 139, "z"), (1, 139, "w"), (5, 0, "")], 5, False),  # dies, yet moves on
    ([(1, 139, "x"), (0, 139, "x"), (0, 137, ""), (0, 139, "x")], 4, True),  # three deaths in a row with nothing new
])
def test_a_job_is_given_up_only_after_its_retries_in_a_row_without_a_new_result(tmp_path, script, runs, given_up):
    (job,) = one_job_per_slot(shard_jobs("emt", [0, 1], out_dir=tmp_path), slots=1)
    job.shards = tuple(tmp_path / "shards" / shard.name for shard in job.shards)
    (tmp_path / "shards").mkdir()
    for shard in job.shards:
        shard.write_text('{"id": "x"}\n' * 10)
    (tmp_path / "emt").mkdir()
    workers = ScriptedWorkers(tmp_path, script)
    workers._run_job(job, Slot("cpu-0", None, 1), stop=threading.Event())
    assert workers.runs == runs
    assert bool(workers.failures) == given_up
    if given_up:
        assert workers.failures == [f"emt shard-0000 to shard-0001 (2 shards): container exited with code 139 "
                                    f"3 times in a row without a new result; see {job.log}"]
    # a death from outside (137) names no crash; the others name what was in flight
    crashed = read_id_lines((tmp_path / "emt" / "shard-0001.crashed").read_text())
    assert crashed == [name for _, code, name in script[:runs] if code not in (0, 137) and name]

@pytest.mark.docker
def test_engine_records_the_gpu_request_of_each_worker(docker_client, model_image, tmp_path):
    """Create (never start: no GPU here) the container a GPU slot would run, and inspect it."""
    (tmp_path / "shards").mkdir()
    job = Job(model="emt", image=model_image("emt"), shards=(tmp_path / "shards" / "shard-0000.jsonl",),
              out_dir=tmp_path / "raw", job={"calculator": "emt", "options": {}, "protocol": {}})
    kwargs = container_kwargs(job, Slot("gpu1-0", "1", 1), "inspect-test", tmp_path / "cache")
    container = docker_client.containers.create(**kwargs)
    try:
        host = container.attrs["HostConfig"]
        assert host["DeviceRequests"][0]["DeviceIDs"] == ["1"]
        assert host["DeviceRequests"][0]["Capabilities"] == [["gpu"]]
        assert host["NanoCpus"] == 10**9
        assert f"{tmp_path / 'shards'}:/data/shards:ro" in host["Binds"]
        assert "OMP_NUM_THREADS=1" in container.attrs["Config"]["Env"]
    finally:
        container.remove(force=True)


PROBE = r"""
import json, os, socket, pathlib
def attempt(action):
    try:
        action()
        return "ok"
    except OSError as exc:
        return type(exc).__name__
status = dict(line.split(":	", 1) for line in open("/proc/self/status").read().splitlines() if ":	" in line)
def connect():  # no interface but loopback, so nothing can leave: the kernel refuses at once
    socket.create_connection(("192.0.2.1", 443), timeout=2)
print(json.dumps({
    "uid": os.getuid(), "cap_eff": status["CapEff"].strip(), "no_new_privs": status["NoNewPrivs"].strip(),
    "interfaces": sorted(line.split(":")[0].strip() for line in open("/proc/net/dev").read().splitlines()[2:]),
    "connect": attempt(connect),
    "write_root": attempt(lambda: pathlib.Path("/opt/x").write_text("x")),
    "write_cache": attempt(lambda: pathlib.Path("/cache/x").write_text("x")),
    "write_shard": attempt(lambda: open("/data/shards/shard-0000.jsonl", "a").write("x")),
    "write_out": attempt(lambda: open("/data/out/shard-0000.jsonl", "a").write("")),
    "write_crashed": attempt(lambda: open("/data/out/shard-0000.crashed", "a").write("x")),
    "new_file_in_out": attempt(lambda: pathlib.Path("/data/out/other.jsonl").write_text("x")),
    "write_scratch": attempt(lambda: pathlib.Path("/tmp/x").write_text("x")),
    "shm": next((line.split()[3] for line in open("/proc/mounts") if line.split()[1] == "/dev/shm"), ""),
    "docker_socket": os.path.exists("/var/run/docker.sock"),
}))
"""


@pytest.mark.docker
def test_a_running_worker_has_least_privilege(docker_client, model_image, tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "shard-0000.jsonl").write_text("{}\n")
    (tmp_path / "cache").mkdir()
    job = Job(model="emt", image=model_image("emt"), shards=(tmp_path / "shards" / "shard-0000.jsonl",),
              out_dir=tmp_path / "raw", job={"calculator": "emt", "options": {}, "protocol": {}})
    prepare_worker_files(job)
    kwargs = container_kwargs(job, device_slots("cpu", 1, 1, memory_gb=2, pids=256)[0], "privilege-test",
                              tmp_path / "cache")
    kwargs["command"] = ["python", "-c", PROBE]
    output = docker_client.containers.run(remove=True, stdout=True, stderr=True, **kwargs)
    seen = json.loads(output.decode().strip().splitlines()[-1])
    assert seen["uid"] != 0 and seen["cap_eff"] == "0000000000000000" and seen["no_new_privs"] == "1"
    assert seen["interfaces"] == ["lo"] and seen["connect"] != "ok"
    for target in ("write_root", "write_cache", "write_shard", "write_crashed", "new_file_in_out"):
        assert seen[target] != "ok", target
    assert seen["write_out"] == "ok" and seen["write_scratch"] == "ok" and not seen["docker_socket"]
    assert {"nosuid", "nodev", "noexec", "size=65536k"} <= set(seen["shm"].split(","))
    container = docker_client.containers.create(**kwargs)
    try:
        host = container.attrs["HostConfig"]
        assert host["Memory"] == 2 * 1024**3 and host["PidsLimit"] == 256 and host["ShmSize"] == 64 * 1024**2
    finally:
        container.remove(force=True)


def test_losing_the_docker_engine_names_the_engine_not_the_disk(monkeypatch, capsys):
    import requests

    import orchestrator.cli as cli

    def lost(args):
        raise requests.exceptions.ConnectionError("('Connection aborted.', FileNotFoundError(2, 'No such file'))")

    monkeypatch.setattr(cli, "cmd_models", lost)
    assert cli.main(["models"]) == 2
    err = capsys.readouterr().err
    assert "lost the connection to the Docker engine" in err and "free space" not in err


@pytest.mark.docker
def test_a_worker_that_writes_without_end_is_stopped_and_not_rerun(docker_client, model_image, tmp_path, monkeypatch):
    import orchestrator.scheduler as scheduler

    (tmp_path / "shards").mkdir()
    shard = tmp_path / "shards" / "shard-0000.jsonl"
    shard.write_text('{"id": "a"}\n')
    job = Job(model="emt", image=model_image("emt"), shards=(shard,), out_dir=tmp_path / "raw",
              job={"calculator": "emt", "options": {}, "protocol": {}})
    flood = ("import time\nwith open('/data/out/shard-0000.jsonl', 'a') as out:\n"
             "    while True:\n        out.write('x' * 2**20)\n        out.flush()\n"
             "        print('y' * 5000, flush=True)\n        time.sleep(0.2)\n")
    monkeypatch.setattr(scheduler, "LOG_CAP_BYTES", 12000)
    real = scheduler.container_kwargs
    monkeypatch.setattr(scheduler, "container_kwargs",
                        lambda *args, **kw: {**real(*args, **kw), "command": ["python", "-c", flood]})
    runs = []
    run = Scheduler._run_container
    monkeypatch.setattr(Scheduler, "_run_container", lambda self, *a: runs.append(1) or run(self, *a))
    workers = Scheduler(docker_client, device_slots("cpu", 1, 1, memory_gb=1), tmp_path / "run", tmp_path / "cache",
                        max_retries=2, stall_timeout_s=600)
    workers._run_job(job, workers.slots[0], threading.Event())
    assert len(runs) == 1
    [failure] = workers.failures
    assert "more than the" in failure and "it was stopped and not rerun" in failure
    assert (tmp_path / "raw" / "shard-0000.jsonl").stat().st_size < 64 * 2**20
    log, note = job.log.read_bytes().rsplit(b"\n[", 1)
    assert len(log) == 12000 and note == b"the rest of this run's output is dropped: over 12000 bytes]\n"


def test_package_versions_are_read_with_the_workers_least_privilege():
    from orchestrator.provenance import image_versions

    seen = {}

    class Engine:
        class containers:
            @staticmethod
            def run(image, command, **options):
                seen.update(options, image=image, command=command)
                return b'{"ase": "3.25.0"}\n'

    assert image_versions(Engine(), "img:tag", ["ase"]) == {"ase": "3.25.0"}
    assert (seen["network_mode"], seen["cap_drop"], seen["read_only"]) == ("none", ["ALL"], True)
    assert seen["security_opt"] == ["no-new-privileges"] and not seen["user"].startswith("0:")
