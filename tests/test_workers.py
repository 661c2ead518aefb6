"""Workers on the host: slots, the worker spec and its renderings, assignments, the Docker
backend (with a fake engine, and with the real one for what only it can show)."""

import json
import os
from pathlib import Path

import pytest

from adapters.wire import GAVE_UP, NOTICE, Job, crash_counts, id_lines
from orchestrator.errors import BenchError
from orchestrator.runfolder import RunFolder
from orchestrator.workers.assignments import (Assignment, container_name, one_assignment_per_slot,
                                               prepare_worker_files, run_key, worker_failures, worker_spec)
from orchestrator.workers.slots import Slot, device_slots
from orchestrator.workers.docker import DockerBackend, sdk_options
from helpers import protocol, worker_job

PROTOCOL = protocol(max_steps=50)
JOB = worker_job(protocol=PROTOCOL)
ASSIGNMENT = Assignment(model="emt", image="img:tag", shards=(Path("/runs/r/shards/shard-0003.jsonl"),),
                        out_dir=Path("/runs/r/raw/emt"), job=JOB)


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
    assert container_name(run_key(one), ASSIGNMENT) != container_name(run_key(two), ASSIGNMENT)


def test_a_run_folder_is_locked_by_one_orchestrator(tmp_path):
    with RunFolder(tmp_path).lock():
        with pytest.raises(BenchError, match=f"another bench is running on this run folder \\(pid {os.getpid()}\\)"):
            with RunFolder(tmp_path).lock():
                pass
    with RunFolder(tmp_path).lock():  # released when the first one ended
        pass


def test_all_gpus_without_any_is_a_clear_error():
    with pytest.raises(BenchError, match="GPUS=cpu"):
        device_slots("all", 1, None, gpus=lambda: [])
    with pytest.raises(BenchError, match="GPU 2 not found .nvidia-smi reports 0, 1."):
        device_slots([0, 2], 1, None, gpus=lambda: [0, 1])
    with pytest.raises(BenchError, match="GPU 0 not found .nvidia-smi reports no GPU"):
        device_slots([0], 1, None, gpus=lambda: [])


def test_container_spec_mounts_and_bounds():
    kwargs = sdk_options(worker_spec(ASSIGNMENT, Slot("gpu3-0", "3", 6), "run1", Path("/cache"), owner="me"))
    assert kwargs["labels"]["org.umlip-0123d.run"] == "run1" and kwargs["labels"]["org.umlip-0123d.owner"] == "me"
    assert kwargs["volumes"]["/runs/r/shards"] == {"bind": "/data/shards", "mode": "ro"}
    assert kwargs["volumes"]["/cache/emt"] == {"bind": "/cache/emt", "mode": "ro"}  # its own weights, not others'
    assert "/cache" not in kwargs["volumes"]
    # only the assignment's own files are writable, not its model's folder
    assert "/runs/r/raw/emt" not in kwargs["volumes"]
    assert kwargs["volumes"]["/runs/r/raw/emt/shard-0003.jsonl"] == {"bind": "/data/out/shard-0003.jsonl", "mode": "rw"}
    assert kwargs["volumes"]["/runs/r/raw/emt/shard-0003.crashed"]["mode"] == "rw"  # the supervisor appends to it
    assert (kwargs["network_mode"], kwargs["cap_drop"], kwargs["read_only"]) == ("none", ["ALL"], True)
    assert kwargs["user"] != "0:0" and not kwargs["user"].startswith("0:")
    assert kwargs["environment"]["OMP_NUM_THREADS"] == "6"
    assert kwargs["environment"]["OMP_WAIT_POLICY"] == "PASSIVE" and kwargs["environment"]["KMP_BLOCKTIME"] == "0"
    assert kwargs["nano_cpus"] == min(6, os.cpu_count()) * 10**9
    request = kwargs["device_requests"][0]
    assert request["DeviceIDs"] == ["3"] and request["Capabilities"] == [["gpu"]]
    command = kwargs["command"]
    assert command[:3] == ["python", "-m", "adapters.supervise"]
    assert command[command.index("--shard") + 1] == "/data/shards/shard-0003.jsonl"
    assert Job.from_json(command[command.index("--job") + 1]) == worker_job(protocol=PROTOCOL,
                                                                      device="cuda")
    assert "device_requests" not in sdk_options(worker_spec(ASSIGNMENT, Slot("cpu-0", None, 2), "run1", Path("/c")))


def test_one_spec_renders_the_same_container_for_every_runtime():
    from orchestrator.workers.spec import apptainer_options, charliecloud_options, engine_options

    spec = worker_spec(ASSIGNMENT, Slot("cpu-0", None, 2, memory_bytes=2**30, pids=64), "run1", Path("/cache"))
    sdk, cli, apptainer = sdk_options(spec), engine_options(spec, cpus=2), apptainer_options(spec, True)
    binds = {f"{src}:{bind['bind']}:{bind['mode']}" for src, bind in sdk["volumes"].items()}
    assert binds == {o.split("=", 1)[1] for o in cli if o.startswith("--volume=")} \
        == {o.split("=", 1)[1] for o in apptainer if o.startswith("--bind=")}
    env = {f"{k}={v}" for k, v in sdk["environment"].items()}
    assert env == {o.split("=", 1)[1] for o in cli if o.startswith("--env=")}
    # Apptainer keeps a HOME of its own (an empty one under --containall) and refuses to override it
    assert env - {f"HOME={sdk['environment']['HOME']}"} == {o.split("=", 1)[1] for o in apptainer
                                                          if o.startswith("--env=")}
    assert {"--read-only", "--cap-drop=ALL", "--security-opt=no-new-privileges", f"--memory={2**30}b"} <= set(cli)
    assert cli[cli.index("--network") + 1] == "none" and cli[cli.index("--pids-limit") + 1] == "64"
    assert cli[cli.index("--user") + 1] == sdk["user"] and "--containall" in apptainer
    # ch-run binds read-write (permissions keep the rest read-only) and sets the environment after unsetting the host's
    charliecloud = charliecloud_options(spec)
    assert {b.rsplit(":", 1)[0] for b in binds} == {o.split("=", 1)[1] for o in charliecloud if o.startswith("--bind=")}
    assert env == {o.split("=", 1)[1] for o in charliecloud if o.startswith("--set-env=")}
    order = [charliecloud.index(option) for option in ("--unset-env=*", "--set-env", "--set-env=HOME=/tmp")]
    assert order == sorted(order)


def shard_assignments(model: str, numbers, out_dir: Path = Path("/runs/r/raw")) -> list[Assignment]:
    return [Assignment(model=model, image=f"{model}:tag", shards=(Path(f"/runs/r/shards/shard-{n:04d}.jsonl"),),
                       out_dir=out_dir / model, job=JOB) for n in numbers]


def test_the_batched_engine_gives_each_slot_one_run_of_consecutive_shards_per_model():
    merged = one_assignment_per_slot(shard_assignments("mace", range(5)) + shard_assignments("orb", [1, 4]), slots=2)
    assert [(a.model, [s.stem for s in a.shards]) for a in merged] == [
        ("mace", ["shard-0000", "shard-0001", "shard-0002"]), ("mace", ["shard-0003", "shard-0004"]),
        ("orb", ["shard-0001"]), ("orb", ["shard-0004"])]
    assert merged[0].name == "shard-0000 to shard-0002 (3 shards)" and merged[2].name == "shard-0001"
    assert [len(a.shards) for a in one_assignment_per_slot(shard_assignments("mace", range(5)), slots=1)] == [5]


def test_an_assignment_of_several_shards_mounts_and_names_each_shards_files_only():
    (assignment,) = one_assignment_per_slot(shard_assignments("emt", [2, 3]), slots=1)
    kwargs = sdk_options(worker_spec(assignment, Slot("cpu-0", None, 2), "run1", Path("/cache")))
    command = kwargs["command"]
    pairs = [(command[k + 1], command[k + 3]) for k, arg in enumerate(command) if arg == "--shard"]
    assert pairs == [("/data/shards/shard-0002.jsonl", "/data/out/shard-0002.jsonl"),
                     ("/data/shards/shard-0003.jsonl", "/data/out/shard-0003.jsonl")]
    writable = sorted(Path(k).name for k, v in kwargs["volumes"].items() if v["mode"] == "rw")
    assert writable == ["shard-0002.crashed", "shard-0002.inflight", "shard-0002.jsonl",
                        "shard-0003.crashed", "shard-0003.inflight", "shard-0003.jsonl"]
    assert kwargs["name"].endswith("-emt-shard-0002") and assignment.log == Path("/runs/r/raw/emt/shard-0002.log")


def test_worker_files_are_never_followed_through_a_link_and_stale_markers_blame_no_one(tmp_path):
    from adapters.supervise import record_crash

    (assignment,) = shard_assignments("emt", [0], out_dir=tmp_path)
    (tmp_path / "emt").mkdir()
    (tmp_path / "emt" / "shard-0000.inflight").write_text(id_lines(["healthy"]))  # left by an interrupted run
    prepare_worker_files(assignment)
    assert (tmp_path / "emt" / "shard-0000.inflight").read_text() == ""  # a worker dying at start blames no one
    record_crash(assignment.outs)
    assert crash_counts(tmp_path / "emt" / "shard-0000.jsonl") == {}
    victim = tmp_path / "host-file"
    victim.write_text("precious")
    before = victim.stat()
    (tmp_path / "emt" / "shard-0000.inflight").unlink()
    (tmp_path / "emt" / "shard-0000.inflight").symlink_to(victim)  # planted in the run folder
    with pytest.raises(BenchError, match="shard-0000.inflight: a symbolic link in the run folder"):
        prepare_worker_files(assignment)
    assert victim.read_text() == "precious" and (victim.stat().st_uid, victim.stat().st_gid) == (before.st_uid,
                                                                                             before.st_gid)


class FakeContainer:
    def __init__(self, engine, spec, code, output, results):
        self.engine, self.spec, self.code, self.output, self.results = engine, spec, code, output, results

    def logs(self, stream, follow):
        out = Path(self.spec.mount(f"/data/out/{Path(self.spec.command[-1]).name}").source)
        with out.open("a") as handle:
            handle.writelines(f'{{"id": "s{len(self.engine.started)}-{k}"}}\n' for k in range(self.results))
        yield self.output.encode()

    def wait(self):
        return {"StatusCode": self.code}

    def remove(self, force):
        self.engine.removed += 1


class FakeEngine:
    """The Docker engine's interface (workers.docker.DockerEngine) with workers that follow a
    script: each start writes `results` result lines, prints `output` and exits with `code`."""

    def __init__(self, script):
        self.script, self.started, self.removed = list(script), [], 0

    def start(self, spec):
        self.started.append(spec)
        code, output, results = self.script[len(self.started) - 1]
        return FakeContainer(self, spec, code, output, results)

    def remove_containers(self, label, value):
        pass


@pytest.mark.parametrize("script, starts, failures", [
    ([(0, "", 3)], 1, []),
    # killed from outside (docker kill, a lost container): started again, it resumes
    ([(137, "", 1), (137, "", 0), (0, "", 2)], 3, []),
    ([(137, "", 0), (137, "", 0), (137, "", 0)], 3, ["the worker exited with code 137"]),
    # the supervisor gave up: said once, in its own words, never started again
    ([(GAVE_UP, f"{NOTICE}the relaxation exited with code 139 3 times in a row without a new result\n", 0)], 1,
     ["the relaxation exited with code 139 3 times in a row without a new result"]),
    # a hung relaxation the supervisor stopped and resumed: a notice, and the worker finished
    ([(0, f"{NOTICE}no step and no new result for 4 s: the relaxation was stopped and its shards resumed\n", 2)], 1,
     ["no step and no new result for 4 s"]),
])
def test_the_docker_backend_restarts_only_lost_containers_and_reports_what_the_supervisor_said(
        tmp_path, script, starts, failures):
    (assignment,) = shard_assignments("emt", [0], out_dir=tmp_path)
    engine = FakeEngine(script)
    backend = DockerBackend(engine, [Slot("cpu-0", None, 1)], tmp_path / "run", tmp_path / "weights", max_retries=2)
    backend.run([assignment], tick_s=0.01)
    assert len(engine.started) == starts and engine.removed == starts
    assert len(backend.failures) == len(failures)
    for line, expected in zip(backend.failures, failures):
        assert line.startswith("emt shard-0000: ") and expected in line and line.endswith(f"see {assignment.log}")


def test_worker_failures_quote_each_notice_and_an_unexplained_exit_code():
    (assignment,) = shard_assignments("emt", [0])
    log = f"progress\n{NOTICE}first\nmore\n{NOTICE}second\n"
    assert [line.split(": ", 1)[1] for line in worker_failures(assignment, 1, log)] == [
        f"first; see {assignment.log}", f"second; see {assignment.log}",
        f"the worker exited with code 1; see {assignment.log}"]
    assert worker_failures(assignment, 0, "quiet\n") == []


@pytest.mark.docker
def test_engine_records_the_gpu_request_of_each_worker(engine, model_image, tmp_path):
    """Create (never start: no GPU here) the container a GPU slot would run, and inspect it."""
    (tmp_path / "shards").mkdir()
    assignment = Assignment(model="emt", image=model_image("emt"), shards=(tmp_path / "shards" / "shard-0000.jsonl",),
                            out_dir=tmp_path / "raw", job=JOB)
    container = engine.client.containers.create(**sdk_options(
        worker_spec(assignment, Slot("gpu1-0", "1", 1), "inspect-test", tmp_path / "cache")))
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
    "new_file_in_out": attempt(lambda: pathlib.Path("/data/out/other.jsonl").write_text("x")),
    "write_scratch": attempt(lambda: pathlib.Path("/tmp/x").write_text("x")),
    "shm": next((line.split()[3] for line in open("/proc/mounts") if line.split()[1] == "/dev/shm"), ""),
    "docker_socket": os.path.exists("/var/run/docker.sock"),
}))
"""


@pytest.mark.docker
def test_a_running_worker_has_least_privilege(engine, model_image, tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "shard-0000.jsonl").write_text("{}\n")
    (tmp_path / "cache").mkdir()
    assignment = Assignment(model="emt", image=model_image("emt"), shards=(tmp_path / "shards" / "shard-0000.jsonl",),
                            out_dir=tmp_path / "raw", job=JOB)
    prepare_worker_files(assignment)
    spec = worker_spec(assignment, device_slots("cpu", 1, 1, memory_gb=2, pids=256)[0], "privilege-test",
                       tmp_path / "cache")
    spec.command = ["python", "-c", PROBE]
    seen = json.loads(engine.output(spec).strip().splitlines()[-1])
    assert seen["uid"] != 0 and seen["cap_eff"] == "0000000000000000" and seen["no_new_privs"] == "1"
    assert seen["interfaces"] == ["lo"] and seen["connect"] != "ok"
    for target in ("write_root", "write_cache", "write_shard", "new_file_in_out"):
        assert seen[target] != "ok", target
    assert seen["write_out"] == "ok" and seen["write_scratch"] == "ok" and not seen["docker_socket"]
    assert {"nosuid", "nodev", "noexec", "size=65536k"} <= set(seen["shm"].split(","))
    container = engine.client.containers.create(**sdk_options(spec))
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


def test_package_versions_are_read_with_the_workers_least_privilege():
    from orchestrator.provenance import image_versions

    seen = {}

    class Engine:
        @staticmethod
        def output(spec):
            seen.update(sdk_options(spec))
            return '{"ase": "3.25.0"}\n'

    assert image_versions(Engine(), "img:tag", ["ase"]) == {"ase": "3.25.0"}
    assert (seen["network_mode"], seen["cap_drop"], seen["read_only"]) == ("none", ["ALL"], True)
    assert seen["security_opt"] == ["no-new-privileges"] and not seen["user"].startswith("0:")
