"""The supervisor's policy (adapters.supervise), with relaxation processes that follow a
script: each start writes some result lines, names what it is relaxing in its marker,
then ends as told (an exit code, a segfault, a hang, a flood of output)."""

import io
import json
import sys
import threading

import pytest

from adapters import supervise
from adapters.supervise import Supervisor
from adapters.wire import CANNOT_LOAD, CANNOT_WRITE, GAVE_UP, NOTICE, OVER_CAP, id_lines, notices, read_id_lines
from helpers import protocol, worker_job

PROTOCOL = protocol(max_steps=50)
CHILD = r"""
import json, os, signal, sys, time
from pathlib import Path
work, out = Path(sys.argv[1]), Path(sys.argv[2])
runs = work / "runs"
n = len(runs.read_text().splitlines()) if runs.exists() else 0
with runs.open("a") as handle:
    handle.write("run\n")
step = json.loads((work / "script.json").read_text())[n]
with out.open("a") as handle:
    handle.writelines(json.dumps({"id": f"s{n}-{k}"}) + "\n" for k in range(step["results"]))
out.with_suffix(".inflight").write_text(step["in_flight"])
print(step.get("say", "working"), flush=True)
if step["end"] == "segfault":
    os.kill(os.getpid(), signal.SIGSEGV)
elif step["end"] == "hang":
    time.sleep(600)
elif step["end"] == "flood":
    while True:
        print("y" * 5000, flush=True)
        with out.open("a") as handle:
            handle.write("x" * 2**20)
        time.sleep(0.05)
sys.exit(int(step["end"]))
"""


def supervised(tmp_path, script, **job):
    """(exit code, starts, crash list, output) of the supervisor over a scripted process."""
    (tmp_path / "script.json").write_text(json.dumps([
        {"results": results, "end": end, "in_flight": id_lines([in_flight]) if in_flight else "", **extra}
        for results, end, in_flight, *rest in script for extra in [rest[0] if rest else {}]]))
    shard, out = tmp_path / "shard-0000.jsonl", tmp_path / "out" / "shard-0000.jsonl"
    shard.write_text('{"id": "a"}\n' * 10)
    out.parent.mkdir(exist_ok=True)
    log = io.BytesIO()
    job = worker_job(protocol=PROTOCOL, **{"max_retries": 2, "stall_timeout_s": 60.0, **job})
    worker = Supervisor([sys.executable, "-c", CHILD, str(tmp_path), str(out)], [shard], [out], job, log=log)
    code = worker.run()
    crashed = out.with_suffix(".crashed")
    return (code, len((tmp_path / "runs").read_text().splitlines()),
            read_id_lines(crashed.read_text()) if crashed.exists() else [], log.getvalue().decode())


def test_a_process_that_dies_yet_moves_on_is_restarted_past_its_retries(tmp_path):
    code, starts, crashed, _ = supervised(tmp_path, [(1, "segfault", "x"), (1, "segfault", "y"), (1, "segfault", "z"),
                                                     (1, "segfault", "w"), (5, 0, "")])
    assert (code, starts) == (0, 5)
    assert crashed == ["x", "y", "z", "w"]  # each death names what it was relaxing


def test_three_deaths_in_a_row_without_a_new_result_give_up(tmp_path, capsys):
    code, starts, crashed, _ = supervised(tmp_path, [(1, "segfault", "x"), (0, "segfault", "x"), (0, 1, ""),
                                                     (0, "segfault", "x"), (9, 0, "")])
    assert (code, starts) == (GAVE_UP, 4)
    assert crashed == ["x", "x", "x"]  # a death with nothing in flight blames no one
    assert notices(capsys.readouterr().err) == [
        "the relaxation exited with code 139 3 times in a row without a new result"]


def test_a_hung_process_is_stopped_and_resumed_without_blaming_its_structure(tmp_path, capsys):
    code, starts, crashed, _ = supervised(tmp_path, [(1, "hang", "slow"), (3, 0, "")], stall_timeout_s=1.0)
    assert (code, starts, crashed) == (0, 2, [])
    assert notices(capsys.readouterr().err) == [
        "no step and no new result for 1 s: the relaxation was stopped and its shards resumed"]


def test_a_process_that_writes_without_end_is_stopped_and_not_restarted(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(supervise, "LOG_CAP_BYTES", 12000)
    code, starts, crashed, output = supervised(tmp_path, [(0, "flood", "a"), (0, 0, "")])
    assert (code, starts, crashed) == (OVER_CAP, 1, [])
    assert (tmp_path / "out" / "shard-0000.jsonl").stat().st_size < 64 * 2**20
    kept, note = output.rsplit("\n[", 1)
    assert len(kept) == 12000 and note == "the rest of this worker's output is dropped: over 12000 bytes]\n"
    assert "more than the" in notices(capsys.readouterr().err)[0]


@pytest.mark.parametrize("end, said", [
    (CANNOT_WRITE, "the worker cannot write its results (disk full or folder read-only)"),
    (CANNOT_LOAD, "the model could not be loaded: ValueError: no fidelity 'mpa-typo' in this checkpoint"),
])
def test_a_process_that_cannot_write_or_load_is_not_restarted_and_blames_no_one(tmp_path, capsys, end, said):
    script = [(0, end, "a", {"say": "Traceback ...\nValueError: no fidelity 'mpa-typo' in this checkpoint"}), (5, 0, "")]
    code, starts, crashed, _ = supervised(tmp_path, script)
    assert (code, starts, crashed) == (end, 1, [])
    assert notices(capsys.readouterr().err) == [said]


def test_a_stop_from_outside_ends_the_process_and_records_nothing(tmp_path):
    result = {}

    def run():
        result["outcome"] = supervised(tmp_path / "w", [(1, "hang", "busy"), (5, 0, "")])

    (tmp_path / "w").mkdir()
    thread = threading.Thread(target=run)
    supervisors = []
    real = Supervisor.run_once
    Supervisor.run_once = lambda self: supervisors.append(self) or real(self)
    try:
        thread.start()
        while not (tmp_path / "w" / "out" / "shard-0000.inflight").exists() or \
                not (tmp_path / "w" / "out" / "shard-0000.inflight").read_text():
            thread.join(0.05)
        supervisors[0].stop()
        thread.join(30)
    finally:
        Supervisor.run_once = real
    code, starts, crashed, _ = result["outcome"]
    assert (code, starts, crashed) == (143, 1, [])


def test_notices_are_the_lines_with_the_prefix():
    assert notices(f"a\n{NOTICE}one\n  {NOTICE}indented is no notice\n{NOTICE}two") == ["one", "two"]
