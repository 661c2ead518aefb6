"""The backend contract, the same test for each backend (Docker on this machine, a real
SLURM with each runtime its node has: docker, podman, charliecloud): the same shards in give
the same result lines out; a run resumes from the lines already written; a worker whose
relaxation process dies has its structure on the crash list and goes on; a relaxation that
hangs is stopped and resumed, and the run says so."""

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from adapters.wire import read_id_lines
from helpers import NO_REPORT, REPO, bench, bench_command, last_line, relaxations, slow_emt_dataset

pytestmark = pytest.mark.docker
SLURM = ("--backend", "slurm", "--set", "slurm.cpus_per_task=1", "--set", "slurm.poll_s=0.5")
#: Each backend (and each runtime of the nodes) by its options, and the fixture of what it runs with.
BACKENDS = {
    "docker": ((), None),
    "slurm": ((*SLURM, "--set", "slurm.runtime=docker"), None),
    "slurm-podman": ((*SLURM, "--set", "slurm.runtime=podman"), "podman"),
    "slurm-charliecloud": ((*SLURM, "--set", "slurm.runtime=charliecloud"), "charliecloud"),
}
#: Two shards of four structures: two workers at once on either backend (two cores here).
COMMON = ("--models", "emt", "--set", "shard_size=4", "--set", "stall_timeout_s=5", *NO_REPORT)
COLUMNS = ["id", "steps", "energy_ev", "failure_reason", "converged"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The data, and a run of it on the Docker backend with nothing going wrong."""
    work = tmp_path_factory.mktemp("reference")
    slow_emt_dataset(work / "cu.extxyz")  # 108-atom copper crystals: time to hit a worker
    done = bench(*COMMON, "--dataset", str(work / "cu.extxyz"), results=work / "results")
    return work / "cu.extxyz", Path(last_line(done))


def hit(results: Path, shard: str, signum: int, deadline: float) -> str:
    """Send `signum` to the relaxation of `shard` while it names a structure in flight; that structure."""
    marker = next(iter(results.glob(f"*/raw/emt/{shard}.inflight")), None)
    while time.monotonic() < deadline:
        marker = marker or next(iter(results.glob(f"*/raw/emt/{shard}.inflight")), None)
        named = read_id_lines(marker.read_text()) if marker and marker.exists() else []
        pids = relaxations("/".join(results.parts[-2:]) + "/", f"/{shard}.jsonl") if named else []
        if pids:
            os.kill(pids[0], signum)
            return named[0]
        time.sleep(0.05)
    raise AssertionError(f"no relaxation of {shard} to hit")


@pytest.mark.parametrize("backend", ["docker", *(pytest.param(backend, marks=pytest.mark.slurm)
                                                  for backend in BACKENDS if backend != "docker")])
def test_a_backend_resumes_survives_a_dying_and_a_hung_worker_and_gives_the_same_lines(
        backend, reference, engine, tmp_path, request):
    options, runtime = BACKENDS[backend]
    if backend != "docker":
        request.getfixturevalue("slurm_node")
    if runtime:  # its tasks run as an unprivileged user, or load the image on the node: the cluster's folder
        cluster = request.getfixturevalue("cluster_folder")
        request.getfixturevalue(runtime)
        options = (*options, "--set", f"cache_dir={cluster / 'cache'}")
        tmp_path = cluster / tmp_path.name
    dataset, reference_run = reference
    results = tmp_path / "results"
    # a run that stopped after each shard's first structure: those lines are kept, not relaxed again
    run_dir = results / reference_run.name
    (run_dir / "raw" / "emt").mkdir(parents=True)
    (run_dir / "sharding.json").write_bytes((reference_run / "sharding.json").read_bytes())
    (run_dir / "raw" / "emt" / "image.json").write_bytes((reference_run / "raw" / "emt" / "image.json").read_bytes())
    seeded = {}
    for shard in ("shard-0000", "shard-0001"):
        first = json.loads((reference_run / "raw" / "emt" / f"{shard}.jsonl").read_text().splitlines()[0])
        seeded[first["id"]] = {**first, "resumed_from": "an earlier run"}
        (run_dir / "raw" / "emt" / f"{shard}.jsonl").write_text(json.dumps(seeded[first["id"]]) + "\n")

    run = subprocess.Popen(bench_command(*COMMON, *options, "--dataset", str(dataset), results=results),
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    hits = {}

    def strike():
        deadline = time.monotonic() + 240
        hits["killed"] = hit(results, "shard-0000", signal.SIGKILL, deadline)  # as the OOM killer would
        hits["stopped"] = hit(results, "shard-0001", signal.SIGSTOP, deadline)  # a hung relaxation

    striker = threading.Thread(target=strike)
    striker.start()
    out, err = run.communicate(timeout=600)
    striker.join()
    assert run.returncode == 0, err[-3000:]
    assert Path(out.strip().splitlines()[-1]) == run_dir
    assert not (run_dir / "report").exists() and "report: none (report: false); `make report` writes" in err

    raw = [json.loads(line) for path in sorted((run_dir / "raw" / "emt").glob("shard-*.jsonl"))
           for line in path.read_text().splitlines()]
    assert set(Counter(r["id"] for r in raw).values()) == {1} and len(raw) == 8  # each exactly once
    assert all(r["resumed_from"] == "an earlier run" for r in raw if r["id"] in seeded)  # resumed, not redone
    crashed = read_id_lines((run_dir / "raw" / "emt" / "shard-0000.crashed").read_text())
    assert crashed == [hits["killed"]]  # one death, one structure named; once is no model error
    assert read_id_lines((run_dir / "raw" / "emt" / "shard-0001.crashed").read_text()) == []  # a hang blames no one
    failures = json.loads((run_dir / "provenance.json").read_text())["worker_failures"]
    assert any(line.startswith("emt shard-0001") and "no step and no new result for 5 s" in line for line in failures)

    got = pd.read_csv(run_dir / "results.csv", keep_default_na=False)[COLUMNS].sort_values("id")
    want = pd.read_csv(reference_run / "results.csv", keep_default_na=False)[COLUMNS].sort_values("id")
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True))
