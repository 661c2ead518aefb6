"""The whole pipeline through the CLI, with real images and a real Docker engine."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ase.io import read

from helpers import NO_REPORT, REPO, SAMPLE, bench, emt_dataset, last_line, slow_emt_dataset
from perf.pipeline_overhead import run_plain_loop

pytestmark = pytest.mark.docker


def test_emt_bench_end_to_end_and_reuse(tmp_path):
    dataset = tmp_path / "emt-set.extxyz"
    emt_dataset(dataset)
    first = bench("--models", "emt", "--dataset", str(dataset), "--set", "shard_size=2", results=tmp_path / "r")
    run_dir = Path(last_line(first))
    table = pd.read_csv(run_dir / "results.csv", keep_default_na=False)
    assert sorted(table["id"]) == ["al-2d", "co-0d", "cu-1d", "cu-3d", "si-3d"]
    by_id = table.set_index("id")
    assert by_id.loc["si-3d", "failure_reason"] == "model_error"  # one bad structure, the run goes on
    assert all(by_id.loc[i, "failure_reason"] == "" for i in ("cu-3d", "al-2d", "cu-1d", "co-0d"))
    assert dict(by_id["dimension"]) == {"cu-3d": "3D", "al-2d": "2D", "cu-1d": "1D", "co-0d": "0D", "si-3d": "3D"}
    energy = float(by_id.loc["cu-3d", "energy_ev"])
    assert float(by_id.loc["cu-3d", "energy_error_mev_per_atom"]) == pytest.approx((energy + 4.0) / 4 * 1000)
    assert pd.read_parquet(run_dir / "results.parquet").shape[0] == 5

    frames = read(run_dir / "relaxed.extxyz", index=":")
    assert sorted(f.info["id"] for f in frames) == ["al-2d", "co-0d", "cu-1d", "cu-3d"]
    reference = {a.info["id"]: a for a in read(run_dir / "reference.extxyz", index=":")}
    slab = next(f for f in frames if f.info["id"] == "al-2d")
    assert np.allclose(slab.cell[2], reference["al-2d"].cell[2])  # 2D: the vacuum vector stays
    assert not np.allclose(slab.cell[0], reference["al-2d"].cell[0], atol=1e-4)  # in-plane relaxes
    provenance = json.loads((run_dir / "provenance.json").read_text())
    image = provenance["models"]["emt"]
    import docker

    assert docker.from_env().images.get(image["image"]).id == image["image_id"]
    pinned = (REPO / "images" / "base" / "constraints.txt").read_text().split("ase==")[1].split()[0]
    assert image["packages"]["ase"] == pinned
    assert provenance["dataset"]["structures"] == 5 and provenance["protocol"]["fmax_ev_per_a"] == 0.04
    assert (run_dir / "report" / "report.html").exists() and (run_dir / "report" / "explore.html").exists()
    (card,) = pd.read_csv(run_dir / "report" / "speed.csv").to_dict("records")  # the devices' busy time
    worker_s = pd.to_numeric(table["wall_s"]).sum()
    assert card["structures"] == 5 and 0 < card["busy_s"] <= worker_s + 1e-6  # two workers overlap
    assert card["us_per_atom_step"] > 0 and card["projected_from"] == "0D,1D,2D,3D"
    assert "## Speed card" in (run_dir / "report" / "report.md").read_text()
    assert dict(by_id["symmetry_kind"]) == {"cu-3d": "space group", "al-2d": "layer group", "cu-1d": "",
                                            "co-0d": "", "si-3d": "space group"}
    # the rattled PBE copper is read as a low group; EMT relaxes it back towards fcc
    assert by_id.loc["cu-3d", "symmetry"] == "increase"
    assert int(by_id.loc["cu-3d", "symmetry_ops"]) > int(by_id.loc["cu-3d", "symmetry_ops_ref"])
    assert by_id.loc["co-0d", "symmetry"] == "" and by_id.loc["si-3d", "symmetry"] == ""  # no relaxed silicon
    assert provenance["symmetry"]["library"] == "moyopy" and provenance["symmetry"]["symprec_a"] == [1e-2, 1e-5]

    raw = {p: p.stat().st_mtime_ns for p in (run_dir / "raw" / "emt").glob("*.jsonl")}
    written = {p: p.stat().st_mtime_ns for p in (run_dir / "results.csv", run_dir / "report" / "report.md")}
    second = bench("--models", "emt", "--dataset", str(dataset), "--set", "shard_size=2", results=tmp_path / "r")
    assert Path(last_line(second)) == run_dir
    assert "already relaxed" in second.stderr and "scores unchanged; report: " in second.stderr
    assert {p: p.stat().st_mtime_ns for p in raw} == raw  # nothing relaxed again
    assert {p: p.stat().st_mtime_ns for p in written} == written  # nor scored or reported again
    assert "ΔE MAE" in second.stderr  # the summary is still shown
    (run_dir / "raw" / "emt" / "shard-0000.jsonl").touch()  # a result file changed: scored again
    bench("--models", "emt", "--dataset", str(dataset), "--set", "shard_size=2", results=tmp_path / "r")
    assert (run_dir / "results.csv").stat().st_mtime_ns > written[run_dir / "results.csv"]


def test_emt_bench_with_the_authors_protocol(tmp_path):
    dataset = tmp_path / "emt-set.extxyz"
    emt_dataset(dataset)
    paper = bench("--models", "emt", "--dataset", str(dataset), "--limit", "1", results=tmp_path / "r")
    authors = bench("--models", "emt", "--dataset", str(dataset), "--limit", "1", "--protocol", "authors",
                    results=tmp_path / "r")
    paper_dir, run_dir = (Path(last_line(done)) for done in (paper, authors))
    assert run_dir != paper_dir  # the variant is part of the run's identity
    assert json.loads((run_dir / "provenance.json").read_text())["protocol"]["variant"] == "authors"
    table = pd.read_csv(run_dir / "results.csv", keep_default_na=False).set_index("id")
    ok = [i for i in table.index if i != "si-3d"]
    assert (table.loc[ok, "failure_reason"] == "").all() and table.loc[ok, "converged"].all()
    assert (table.loc[ok, "position_mae_a"].astype(float) < 0.1).all()  # re-centring is no position error
    raw = [json.loads(line) for path in (run_dir / "raw" / "emt").glob("*.jsonl") for line in path.open()]
    assert all(1 <= r["cycles"] <= 15 for r in raw if r["id"] != "si-3d")
    slab = next(f for f in read(run_dir / "relaxed.extxyz", index=":") if f.info["id"] == "al-2d")
    reference = next(f for f in read(run_dir / "reference.extxyz", index=":") if f.info["id"] == "al-2d")
    assert np.allclose(slab.cell[2], reference.cell[2])  # reported in the PBE vacuum, not their reset box
    assert np.abs(slab.positions[:, 2] - reference.positions[:, 2]).max() < 0.3  # followed, not re-centred


def test_a_time_limit_only_when_set_shown_in_the_tables_and_redone_when_changed(tmp_path):
    dataset = tmp_path / "emt-set.extxyz"
    emt_dataset(dataset)
    limited = bench("--models", "emt", "--dataset", str(dataset), "--set", "structure_timeout_s=0.000001",
                    results=tmp_path / "r")
    run_dir = Path(last_line(limited))
    table = pd.read_csv(run_dir / "results.csv", keep_default_na=False).set_index("id")
    assert set(table["failure_reason"]) <= {"timeout", "model_error"} and "timeout" in set(table["failure_reason"])
    failures = pd.read_csv(run_dir / "report" / "failures.csv")
    assert failures["timeout"].sum() == (table["failure_reason"] == "timeout").sum()
    assert (failures["finished"] + failures["timeout"] == failures["structures"]).all()
    assert "stopped by the limit of 1e-06 s" in (run_dir / "report" / "report.md").read_text()
    # the default has no limit: the same command without it relaxes those structures to the end
    again = bench("--models", "emt", "--dataset", str(dataset), results=tmp_path / "r")
    assert Path(last_line(again)) == run_dir  # the limit is no part of the run's identity
    assert "timed out under a limit of 1e-06 s" in again.stderr
    table = pd.read_csv(run_dir / "results.csv", keep_default_na=False).set_index("id")
    assert "timeout" not in set(table["failure_reason"]) and len(table) == 5
    assert "stopped by the limit of" not in (run_dir / "report" / "report.md").read_text()
    assert json.loads((run_dir / "provenance.json").read_text())["structure_timeout_s"] is None


def test_a_damaged_result_file_is_mended_and_nothing_is_counted_twice(tmp_path):
    dataset = tmp_path / "emt-set.extxyz"
    emt_dataset(dataset)
    first = bench("--models", "emt", "--dataset", str(dataset), *NO_REPORT, results=tmp_path / "r")
    run_dir = Path(last_line(first))
    before = pd.read_csv(run_dir / "results.csv", keep_default_na=False).set_index("id")
    raw = run_dir / "raw" / "emt" / "shard-0000.jsonl"
    lines = raw.read_bytes().splitlines(keepends=True)
    foreign = json.dumps({"id": "not-in-this-shard", "converged": True, "failure_reason": None, "steps": 7777,
                          "energy_ev": 12345.0}).encode() + b"\n"
    twice = json.dumps({**json.loads(lines[0]), "energy_ev": 12345.0}).encode() + b"\n"
    raw.write_bytes(lines[0] + b"\x00" * 40 + b"\n" + lines[1][:30] + b"\n" + foreign + twice + b"".join(lines[2:]))
    again = bench("--models", "emt", "--dataset", str(dataset), *NO_REPORT, results=tmp_path / "r")
    assert again.returncode == 0 and "Traceback" not in again.stderr
    assert f"{raw} line 2: not a JSON line" in again.stderr and "line 5: a second line for structure" in again.stderr
    after = pd.read_csv(run_dir / "results.csv", keep_default_na=False).set_index("id")
    assert sorted(after.index) == sorted(before.index)  # each once; the damaged one relaxed again
    assert 12345.0 not in set(after["energy_ev"]) and 7777 not in set(after["steps"])
    assert (after["failure_reason"] == before["failure_reason"]).all()
    assert raw.with_suffix(".rejected").read_bytes().count(b"\n") == 4  # kept, verbatim


def test_a_results_folder_that_cannot_be_written_is_one_line(tmp_path):
    dataset = tmp_path / "emt-set.extxyz"
    emt_dataset(dataset)
    blocked = tmp_path / "results-is-a-file"
    blocked.write_text("not a folder")
    done = bench("--models", "emt", "--dataset", str(dataset), results=blocked, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "results-is-a-file" in done.stderr and "permissions" in done.stderr
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(read_only)]).returncode:
        pytest.skip("cannot mount a read-only folder here")
    try:
        done = bench("--models", "emt", "--dataset", str(dataset), results=read_only, check=False)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert "Read-only file system" in done.stderr and "read-only" in done.stderr
    finally:
        subprocess.run(["umount", "-l", str(read_only)])


def test_unknown_model_and_missing_dataset_are_named(tmp_path):
    done = bench("--models", "mace-typo", results=tmp_path, check=False)
    assert done.returncode == 2 and "mace-typo" in done.stderr and "chgnet" in done.stderr
    done = bench("--models", "emt", "--dataset", str(tmp_path / "nowhere.extxyz"), results=tmp_path, check=False)
    assert done.returncode == 2 and "nowhere.extxyz" in done.stderr


def test_chgnet_and_sevennet_relax_twenty_sample_crystals_like_plain_ase(tmp_path, engine):
    # 20 of the sample's 200 crystals: the whole sample took 4 to 8 minutes of CI, and the reference
    # bundles (make selftest) relax 50 of them with each model again
    done = bench("--models", "chgnet", "sevennet-0", "--dataset", str(SAMPLE), "--limit", "20", results=tmp_path / "r")
    run_dir = Path(last_line(done))
    table = pd.read_csv(run_dir / "results.csv", keep_default_na=False)
    assert len(table) == 40 and table.groupby("model")["id"].nunique().to_dict() == {"chgnet": 20, "sevennet-0": 20}
    assert not table.duplicated(["model", "id"]).any()
    assert (table["failure_reason"] != "model_error").all()
    assert np.isfinite(table["energy_error_mev_per_atom"]).all()
    assert "0123D summary" in done.stderr
    # the report shows the dataset's figures and the per-element errors of both models
    report = run_dir / "report"
    page = (report / "report.html").read_text()
    for caption in ("Dataset: elements per dimensionality", "Energy error per element: chgnet",
                    "Energy error per element: sevennet-0", "Energy error per element (meV/atom)"):
        assert caption in page, caption
    by_element = pd.read_csv(report / "energy_by_element.csv", keep_default_na=False)
    relaxed = table[(table["model"] == "chgnet") & (table["failure_reason"] == "")]
    elements = set(relaxed["elements"].str.split().explode())
    assert set(by_element["model"]) == {"chgnet", "sevennet-0"} and len(elements) > 20
    assert set(by_element[by_element["model"] == "chgnet"]["element"]) == elements  # every element, once
    common = relaxed["elements"].str.split().explode().value_counts().index[0]  # the most frequent element
    holding = relaxed[relaxed["elements"].str.split().map(lambda elements: common in elements)]
    row = by_element[(by_element["model"] == "chgnet") & (by_element["element"] == common)].iloc[0]
    assert row["n"] == len(holding) and row["mae"] == pytest.approx(holding["energy_error_mev_per_atom"].abs().mean())
    assert len(pd.read_csv(report / "dataset.csv")) == 20

    provenance = json.loads((run_dir / "provenance.json").read_text())
    ase_versions = {m: r["packages"]["ase"] for m, r in provenance["models"].items()}
    assert len(set(ase_versions.values())) == 1, ase_versions  # one optimizer for every model
    shard = run_dir / "shards" / "shard-0000.jsonl"
    some = tmp_path / "shards" / "five.jsonl"
    some.parent.mkdir()
    some.write_text("".join(shard.read_text().splitlines(keepends=True)[:5]))
    for model in ("chgnet", "sevennet-0"):
        record = provenance["models"][model]
        plain = run_plain_loop(engine, record["image"], record["calculator"], record["options"], some, 2)
        rows = table[table["model"] == model].set_index("id")
        assert len(plain) == 5
        for result in plain:
            row = rows.loc[result["id"]]
            assert int(row["steps"]) == result["steps"]
            assert float(row["energy_ev"]) == pytest.approx(result["energy_ev"], abs=1e-6 * int(row["natoms"]))


def test_killed_run_finishes_every_structure_exactly_once(tmp_path):
    results = tmp_path / "r"
    args = [sys.executable, "-m", "orchestrator", "bench", "--gpus", "cpu", "--models", "chgnet",
            "--dataset", str(SAMPLE), "--limit", "24", "--set", f"results_dir={results}", "--set", "shard_size=6",
            *NO_REPORT]
    victim = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline:
        lines = sum(len(p.read_text().splitlines()) for p in results.glob("*/raw/chgnet/shard-*.jsonl"))
        if lines >= 4:
            break
        time.sleep(0.2)
    os.killpg(victim.pid, signal.SIGKILL)  # no cleanup at all: its container is still running
    victim.wait()
    assert 4 <= lines < 24

    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = Path(last_line(done))
    written = Counter(json.loads(line)["id"] for p in (run_dir / "raw" / "chgnet").glob("shard-*.jsonl")
                      for line in p.read_text().splitlines())
    assert len(written) == 24 and set(written.values()) == {1}
    table = pd.read_csv(run_dir / "results.csv")
    assert len(table) == 24 and table["id"].is_unique


# ---- faults: a run that cannot be trusted never looks finished ---------------------------

def test_a_slot_whose_containers_cannot_start_leaves_an_incomplete_run(tmp_path):
    dataset = tmp_path / "emt-set.extxyz"
    emt_dataset(dataset)
    # a memory limit the engine refuses (it wants at least 6 MB): every container of the slot fails to start
    done = bench("--models", "emt", "--dataset", str(dataset), "--set", "worker_memory_gb=0.001",
                 results=tmp_path / "r", check=False)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "incomplete run" in done.stderr and "5 structure(s) have no result" in done.stderr
    run_dir = next((tmp_path / "r").iterdir())
    table = pd.read_csv(run_dir / "results.csv", keep_default_na=False)
    assert set(table["failure_reason"]) == {"missing"}  # never a model failure
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["status"] == "incomplete" and provenance["missing"] == {"emt": 5}
    assert "INCOMPLETE RUN" in (run_dir / "report" / "report.html").read_text()
    # with a limit that works, the same run finishes: nothing was turned into a failure
    done = bench("--models", "emt", "--dataset", str(dataset), results=tmp_path / "r")
    table = pd.read_csv(run_dir / "results.csv", keep_default_na=False).set_index("id")
    assert (table.drop(index="si-3d")["failure_reason"] == "").all()
    assert json.loads((run_dir / "provenance.json").read_text())["status"] == "complete"


def test_two_runs_at_once(tmp_path):
    from orchestrator.runfolder import RunFolder

    dataset = tmp_path / "emt-set.extxyz"
    emt_dataset(dataset)
    args = [sys.executable, "-m", "orchestrator", "bench", "--gpus", "cpu", "--models", "emt", "--dataset",
            str(dataset), "--set", "shard_size=1", *NO_REPORT]
    # the same data in two results folders: same run folder name, and neither touches the other's containers
    runs = [subprocess.Popen([*args, "--set", f"results_dir={tmp_path / name}"], cwd=REPO, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for name in ("one", "two")]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-2000:] for _, err in outputs]
    folders = [Path(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert folders[0].name == folders[1].name
    for folder in folders:
        table = pd.read_csv(folder / "results.csv", keep_default_na=False)
        assert (table["failure_reason"] != "missing").all() and (table["failure_reason"] == "").sum() == 4
    # a second bench on a run folder in use is refused, naming the holder
    with RunFolder(folders[0]).lock():
        done = bench("--models", "emt", "--dataset", str(dataset), "--set", "shard_size=1",
                     results=tmp_path / "one", check=False)
    assert done.returncode == 2 and "another bench is running on this run folder" in done.stderr


def start_bench(dataset: Path, results: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "orchestrator", "bench", "--gpus", "cpu", "--models", "emt",
                             "--dataset", str(dataset), "--set", f"results_dir={results}", "--set", "shard_size=4",
                             *NO_REPORT],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for_lines(results: Path, count: int, process: subprocess.Popen) -> int:
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        lines = sum(len(p.read_text().splitlines()) for p in results.glob("*/raw/emt/shard-*.jsonl"))
        if lines >= count:
            return lines
        time.sleep(0.1)
    raise AssertionError(f"no {count} result lines before the run ended: {process.communicate()[1][-2000:]}")


def assert_every_structure_once_and_none_failed(results: Path, count: int = 8) -> None:
    run_dir = next(results.iterdir())
    written = Counter(json.loads(line)["id"] for p in (run_dir / "raw" / "emt").glob("shard-*.jsonl")
                      for line in p.read_text().splitlines())
    assert len(written) == count and set(written.values()) == {1}, written
    table = pd.read_csv(run_dir / "results.csv", keep_default_na=False)
    assert len(table) == count and (table["failure_reason"] == "").all(), table["failure_reason"].tolist()
    assert json.loads((run_dir / "provenance.json").read_text())["status"] == "complete"


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm", "sigkill"])
def test_an_interrupted_orchestrator_loses_nothing_and_fails_nothing(tmp_path, engine, how):
    from orchestrator.images import LABEL

    dataset = tmp_path / "slow.extxyz"
    slow_emt_dataset(dataset)
    results = tmp_path / "r"
    victim = start_bench(dataset, results)
    wait_for_lines(results, 2, victim)
    if how == "sigkill":
        os.killpg(victim.pid, signal.SIGKILL)  # no cleanup at all: its container goes on
    else:
        victim.send_signal(signal.SIGINT if how == "ctrl-c" else signal.SIGTERM)
    _, err = victim.communicate(timeout=120)
    if how != "sigkill":
        assert victim.returncode == 130 and "run the same command again" in err
        run_dir = next(results.iterdir())
        leftovers = [c for c in engine.client.containers.list(all=True, filters={"label": f"{LABEL}.model=emt"})
                     if str(run_dir) in json.dumps(c.attrs["HostConfig"]["Binds"])]
        assert not leftovers  # its containers are stopped with it
    again = start_bench(dataset, results)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-2000:]
    assert_every_structure_once_and_none_failed(results)


def test_a_worker_killed_from_outside_is_rerun_not_failed(tmp_path, engine):
    from orchestrator.images import LABEL

    dataset = tmp_path / "slow.extxyz"
    slow_emt_dataset(dataset)
    results = tmp_path / "r"
    run = start_bench(dataset, results)
    wait_for_lines(results, 2, run)
    for container in engine.client.containers.list(filters={"label": f"{LABEL}.model=emt"}):
        if str(results) in json.dumps(container.attrs["HostConfig"]["Binds"]):
            container.kill()  # as `docker kill` by a user would
    _, err = run.communicate(timeout=600)
    assert run.returncode == 0, err[-2000:]
    assert_every_structure_once_and_none_failed(results)
    crashed = [p.read_text() for p in results.glob("*/raw/emt/*.crashed")]
    assert all(text == "" for text in crashed)  # a kill from outside is no crash


def test_a_full_disk_stops_the_run_honestly_and_the_rerun_finishes(tmp_path):
    results = tmp_path / "r"
    results.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(results)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        dataset = tmp_path / "slow.extxyz"
        slow_emt_dataset(dataset)
        run = start_bench(dataset, results)
        wait_for_lines(results, 2, run)
        filler = results / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)  # until it is full
        _, err = run.communicate(timeout=600)
        assert run.returncode in (2, 3) and "Traceback" not in err, err[-3000:]
        filler.unlink()
        again = start_bench(dataset, results)
        _, err = again.communicate(timeout=600)
        assert again.returncode == 0, err[-2000:]
        assert_every_structure_once_and_none_failed(results)
    finally:
        subprocess.run(["umount", "-l", str(results)], capture_output=True)
