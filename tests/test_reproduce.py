"""Bundle, reproduce, compare, as a user runs them. An EMT run (float64) is bundled in a
home of its own, reproduced from the bundle alone into a fresh results folder with its
image removed, and compared: identical. The bundle with one structure's result edited:
differs, naming it. A bundle made by an older checkout rebuilds the older image."""

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest

from helpers import REPO, bench_command, emt_dataset, last_line, make, project_copy
from orchestrator.fetch import sha256_of

pytestmark = pytest.mark.docker
SECRET = "hf_never_in_a_bundle_0123"


def cli(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=cwd, capture_output=True, text=True,
                          env=env or os.environ.copy(), timeout=1800)


@pytest.fixture(scope="module")
def emt_run(tmp_path_factory):
    """An EMT run made in a home of its own (HF_TOKEN set), and its bundle with the data."""
    home = tmp_path_factory.mktemp("home")
    (home / "data").mkdir()
    emt_dataset(home / "data" / "emt.extxyz")
    env = {**os.environ, "HOME": str(home), "HF_TOKEN": SECRET}
    done = subprocess.run(bench_command("--models", "emt", "--dataset", str(home / "data" / "emt.extxyz"),
                                        "--set", "shard_size=2", results=home / "results"),
                          cwd=REPO, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = Path(last_line(done))
    made = cli("bundle", str(run_dir), "--with-data", env=env)
    assert made.returncode == 0, made.stderr[-3000:]
    return run_dir, Path(last_line(made)), env


def test_a_bundle_holds_what_reruns_and_judges_a_run_and_nothing_private(emt_run, tmp_path):
    run_dir, archive, env = emt_run
    assert archive.name == f"{run_dir.name}.bundle.tar.gz"
    digest = Path(f"{archive}.sha256").read_text().split()
    assert digest[1] == archive.name and len(digest[0]) == 64
    again = cli("bundle", str(run_dir), "--with-data", "--out", str(tmp_path), env=env)
    assert sha256_of(tmp_path / archive.name) == digest[0]  # deterministic: the same run, the same bytes
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        texts = [tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()]
        record = json.loads(tar.extractfile(f"{run_dir.name}/provenance.json").read())
    inside = {name.split("/", 1)[1] for name in names if "/" in name}
    assert {"bundle.json", "provenance.json", "build/images/emt/Dockerfile", "build/images/emt/requirements.lock",
            "build/images/base/requirements-3.11.lock", "build/adapters/relax.py", "build/adapters/calculators/emt.py",
            "results/results.csv", "results/relaxed.extxyz", "results/raw/emt/shard-0000.jsonl",
            "results/report/report.md", "data/emt.extxyz"} <= inside
    assert not any(name.startswith("build/adapters/calculators/mace") for name in inside)  # only its own family
    assert (run_dir / "report" / "explore.html").is_file() and "results/report/explore.html" not in inside
    assert not any(env["HOME"].encode() in text or SECRET.encode() in text for text in texts)
    assert record["dataset"]["paths"]["emt.extxyz"] == "~/data/emt.extxyz"
    assert record["models"]["emt"]["base_image_id"] and "wheelhouse" in record["models"]["emt"]
    assert record["host"]["cpu_model"]
    # beyond the paper, on an EMT run of every dimensionality: errors against coordination, hard cases
    by_coordination = pd.read_csv(run_dir / "report" / "coordination.csv", keep_default_na=False)
    bins = dict(zip(by_coordination["coordination_bin"].astype(str), by_coordination["dimensions"]))
    # CO 1, the Cu chain 2, silicon 4, bulk Cu 12 and the three-layer Al(111) slab 10
    assert bins == {"1": "0D", "2": "1D", "4": "3D", "≥10": "2D,3D"}, bins
    assert "## Errors against coordination (beyond the paper)" in (run_dir / "report" / "report.md").read_text()
    assert "## Hard cases (beyond the paper)" in (run_dir / "report" / "report.md").read_text()
    # the host's scoring stack: recorded, and its lock carried
    assert record["scoring"]["packages"]["numpy"] and len(record["scoring"]["lock_sha256"]) == 64
    assert "build/host/requirements.lock" in inside
    assert again.returncode == 0


def test_reproduce_from_the_bundle_alone_then_an_edited_result_is_named(emt_run, engine, tmp_path):
    run_dir, archive, _ = emt_run
    recorded = json.loads((run_dir / "provenance.json").read_text())["models"]["emt"]
    engine.remove_image(recorded["image"])  # rebuilt from the bundle's own inputs
    fresh = {**os.environ, "UMLIP_RESULTS_DIR": str(tmp_path / "fresh")}
    done = make("reproduce", f"BUNDLE={archive}", "GPUS=cpu", env=fresh)
    assert done.returncode == 0, done.stderr[-3000:]
    assert last_line(done).startswith("REPRODUCED: 5 structure(s), identical")
    assert engine.image_id(recorded["image"])  # the same tag: the same inputs built it
    (again,) = (tmp_path / "fresh").iterdir()
    record = json.loads((again / "provenance.json").read_text())
    assert record["reproduction"]["of"] == run_dir.name and record["reproduction"]["code"] == 0
    sources = record["settings_sources"]
    assert sources["protocol.max_steps"] == sources["dataset"] == f"bundle {archive.name}"
    assert sources["devices"] == "command line"
    assert "identical" in (again / "reproduction" / "compare.md").read_text()
    assert f"**reproduces**: {run_dir.name} from bundle {archive.name}: REPRODUCED" in \
        (again / "report" / "report.md").read_text()

    edited = tmp_path / "edited"
    with tarfile.open(archive) as tar:
        tar.extractall(edited, filter="data")
    table = edited / run_dir.name / "results" / "results.csv"
    frame = pd.read_csv(table)
    frame.loc[frame["id"] == "cu-1d", "energy_ev"] += 0.004  # 1 meV/atom on 4 atoms
    frame.to_csv(table, index=False)
    done = cli("reproduce", str(edited), "--gpus", "cpu", env=fresh)  # make turns every failure into 2
    assert done.returncode == 1, done.stderr[-3000:]
    assert last_line(done).startswith("NOT VERIFIED: edited changed since it was made (results/results.csv). "
                                      "The structures alone: DIFFERS: emt outside the tolerance (1 structure(s) "
                                      "disagree)")
    assert "emt cu-1d: |ΔE| 1 meV/atom" in done.stderr
    judged = tmp_path / "fresh" / "edited-reproduced-ase-cpu" / "reproduction" / "compare.md"
    assert "results/results.csv" in judged.read_text()  # named: changed since the bundle was made
    done = cli("compare", str(run_dir), str(edited), env=fresh)
    assert done.returncode == 1 and "emt cu-1d" in done.stderr
    assert cli("compare", str(run_dir), str(archive), env=fresh).returncode == 0

    shutil.copytree(run_dir, tmp_path / "fresh" / run_dir.name)
    assert cli("report", "--set", f"results_dir={tmp_path / 'fresh'}").returncode == 0
    board = (tmp_path / "fresh" / "leaderboard.md").read_text()
    assert "reproduced by" in board and f"{again.name} ({archive.name}: REPRODUCED)" in board
    assert "edited-reproduced-ase-cpu (edited: NOT VERIFIED)" in board


def test_a_bundle_of_an_older_checkout_rebuilds_its_own_image(engine, builder, tmp_path):
    older = project_copy(tmp_path)
    with (older / "images" / "emt" / "Dockerfile").open("a") as dockerfile:
        dockerfile.write("ENV UMLIP_OLDER_CHECKOUT=1\n")  # a change made since: this checkout's image differs
    emt_dataset(tmp_path / "emt.extxyz")
    done = subprocess.run(bench_command("--models", "emt", "--dataset", str(tmp_path / "emt.extxyz"),
                                        results=tmp_path / "old"), cwd=older, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    made = cli("bundle", last_line(done), "--with-data", cwd=older)
    old_image = json.loads((Path(last_line(done)) / "provenance.json").read_text())["models"]["emt"]["image"]
    from orchestrator.models import discover_models

    assert builder.model(discover_models()["emt"]) != old_image
    again = cli("reproduce", last_line(made), "--gpus", "cpu", "--set", f"results_dir={tmp_path / 'new'}")
    assert again.returncode == 0, again.stderr[-3000:]
    (run_dir,) = (tmp_path / "new").iterdir()
    assert json.loads((run_dir / "provenance.json").read_text())["models"]["emt"]["image"] == old_image
    config = engine.client.images.get(old_image).attrs["Config"]["Env"]
    assert "UMLIP_OLDER_CHECKOUT=1" in config


@pytest.fixture(scope="module")
def selftest(tmp_path_factory):
    """`make selftest`, once: the reference bundles rerun here. One of them, CHGNet on the shipped
    sample with the sequential engine, is also one side of the engines' comparison below."""
    results = tmp_path_factory.mktemp("selftest")
    return make("selftest", env={**os.environ, "UMLIP_RESULTS_DIR": str(results)}), results


def test_compare_the_sequential_and_the_batched_engine_on_chgnet(selftest, tmp_path):
    _, reproduced = selftest
    runs = {"ase": reproduced / "chgnet-sample-reproduced-ase-cpu"}  # bench --models chgnet --dataset sample
    done = subprocess.run(bench_command("--models", "chgnet", "--dataset", "sample", "--engine", "batched",
                                        results=tmp_path / "r"), cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    runs["batched"] = Path(last_line(done))
    done = make("compare", f"A={runs['ase']}", f"B={runs['batched']}",
                env={**os.environ, "UMLIP_RESULTS_DIR": str(tmp_path / "r")})
    tables = {k: pd.read_csv(v / "results.csv", keep_default_na=False).set_index("id") for k, v in runs.items()}
    a, b = tables["ase"], tables["batched"].loc[tables["ase"].index]
    same_flag = int((a["converged"] == b["converged"]).sum())
    assert len(a) == 50 and f"| converged flag identical | {same_flag}/50 | {same_flag / 50:.1%} |" in done.stderr
    assert "| abs(Δsteps) ≤ max(2, 2 %) |" in done.stderr and "| abs(ΔE) ≤ 1 meV/atom |" in done.stderr
    assert done.returncode == 0 if last_line(done).startswith("REPRODUCED") else done.returncode == 2  # make's
    assert "float32" in last_line(done)


def test_make_selftest_reproduces_the_reference_bundles(selftest):
    done, results = selftest
    assert done.returncode == 0, done.stderr[-3000:]
    assert last_line(done) == "selftest: every reference bundle reproduced"
    reproduced = sorted(path.name for path in results.iterdir() if path.name != "comparisons")
    assert len(reproduced) == 3 and all("-reproduced-ase-cpu" in name for name in reproduced)
    for run_dir in results.iterdir():
        if run_dir.name != "comparisons":
            assert json.loads((run_dir / "provenance.json").read_text())["reproduction"]["code"] == 0


def test_a_bundle_with_its_image_reruns_without_building(engine, tmp_path):
    emt_dataset(tmp_path / "emt.extxyz")
    done = subprocess.run(bench_command("--models", "emt", "--dataset", str(tmp_path / "emt.extxyz"),
                                        results=tmp_path / "ran"), cwd=REPO, capture_output=True, text=True)
    run_dir = Path(last_line(done))  # with the image as it is now (an earlier test may have rebuilt it)
    made = cli("bundle", str(run_dir), "--with-data", "--with-images", "--out", str(tmp_path))
    assert made.returncode == 0, made.stderr[-3000:]
    recorded = json.loads((run_dir / "provenance.json").read_text())["models"]["emt"]
    with tarfile.open(last_line(made)) as tar:
        listed = json.loads(tar.extractfile(f"{run_dir.name}/bundle.json").read())["files"]
    assert "images/emt.tar" in listed and len(listed["images/emt.tar"]) == 64
    engine.remove_image(recorded["image"])
    done = cli("reproduce", last_line(made), "--gpus", "cpu", "--set", f"results_dir={tmp_path / 'r'}",
               "--set", f"cache_dir={tmp_path / 'cache'}",  # where the archive unpacks: gone with the test
               "--set", "base_images={\"3.11\": \"no-such/base:image\"}")  # nothing may be built
    assert done.returncode == 0, done.stderr[-3000:]
    assert "loading emt.tar from the bundle" in done.stderr and "building" not in done.stderr
    assert engine.image_id(recorded["image"]) == recorded["image_id"]  # the very image that ran


def test_a_bundle_rebuilt_otherwise_than_recorded_is_not_verified(emt_run, tmp_path):
    """A Dockerfile edited after the bundle was made, with the bundle's list of sha256 updated
    to match: the rerun builds another image, and the verdict says so, not REPRODUCED."""
    run_dir, archive, _ = emt_run
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "forged", filter="data")
    folder = tmp_path / "forged" / run_dir.name
    dockerfile = folder / "build" / "images" / "emt" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "ENV UMLIP_FORGED=1\n")
    meta = json.loads((folder / "bundle.json").read_text())
    meta["files"]["build/images/emt/Dockerfile"] = sha256_of(dockerfile)
    (folder / "bundle.json").write_text(json.dumps(meta))
    done = cli("reproduce", str(folder), "--gpus", "cpu", "--set", f"results_dir={tmp_path / 'r'}")
    assert done.returncode == 1, done.stderr[-3000:]
    recorded = json.loads((run_dir / "provenance.json").read_text())["models"]["emt"]["image"]
    assert last_line(done).startswith("NOT VERIFIED: emt ran in umlip-0123d/emt:")
    assert (f"not the recorded {recorded} (the same base image and wheelhouse: other build inputs). The structures "
            "alone: REPRODUCED") in last_line(done)
    (rerun,) = (tmp_path / "r").iterdir()
    assert "NOT VERIFIED" in (rerun / "reproduction" / "compare.md").read_text()
    assert "NOT VERIFIED" in (rerun / "report" / "report.md").read_text()


LINKED = {  # path in a run folder -> the command that writes or packs it: raw, logs, markers, reports,
    # the leaderboard (in the results folder), bundle inputs
    "raw/emt": "bench", "raw/emt/shard-0000.log": "bench", "raw/emt/shard-0001.inflight": "bench",
    "raw/emt/shard-0000.jsonl": "bench", "report/report.md": "report", "leaderboard.md": "report",
    "build/images/emt/Dockerfile": "bundle",
}


def test_links_planted_in_a_run_folder_are_never_written_through(emt_run, tmp_path):
    """A root orchestrator over a run folder seeded with a link at each path it writes or
    packs: exit 2 naming the link, and what the link points at unchanged (content, owner,
    mode, and no new file beside it)."""
    run_dir, _, env = emt_run
    dataset = Path(env["HOME"]) / "data" / "emt.extxyz"
    for number, (planted, command) in enumerate(LINKED.items()):
        target = tmp_path / f"target-{number}" / "file"
        target.parent.mkdir()
        target.write_text("untouched")
        target.chmod(0o600)
        results = tmp_path / f"results-{number}"
        copy = results / run_dir.name
        shutil.copytree(run_dir, copy, symlinks=True)
        where = results / planted if planted == "leaderboard.md" else copy / planted
        if where.is_dir():
            shutil.rmtree(where)
        else:
            where.unlink(missing_ok=True)
        where.symlink_to(target.parent if planted == "raw/emt" else target)
        args = {"bench": ["bench", "--models", "emt", "--dataset", str(dataset), "--set", "shard_size=2",
                          "--set", f"results_dir={results}"],
                "report": ["report", "--set", f"results_dir={results}"],
                "bundle": ["bundle", str(copy), "--out", str(tmp_path)]}[command]
        done = cli(*args, env=env)
        assert done.returncode == 2, (planted, done.stderr[-2000:])
        assert f"{where}: a symbolic link in the run folder" in done.stderr, (planted, done.stderr[-2000:])
        info = target.stat()
        assert (target.read_text(), oct(info.st_mode & 0o777), info.st_uid) == ("untouched", "0o600", os.getuid())
        assert [p.name for p in target.parent.iterdir()] == ["file"], planted
