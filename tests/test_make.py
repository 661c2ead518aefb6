"""The Makefile, run as a user runs it: `make lock` for a model and for a runtime's Python
(in a copy of the project, whose locks it rewrites), and what `make lock` alone locks."""

import pytest

from helpers import REPO, last_line, make, project_copy


def test_make_lock_alone_locks_every_runtime_first_then_every_image(manifest):
    from orchestrator.cli import lock_plan
    from orchestrator.models import discover_models

    runtimes, models = lock_plan(manifest, [], [])
    every = discover_models().values()
    assert runtimes == sorted({m.python for m in every})
    assert {m.name for m in models} == {m.name for m in every if m.image_of is None}  # one lock per image
    runtimes, models = lock_plan(manifest, ["orb-v3-direct-inf-mpa"], [])
    assert (runtimes, [m.name for m in models]) == ([], ["orb-v2"])  # it runs in ORB-v2's image
    runtimes, models = lock_plan(manifest, [], ["3.13"])
    assert (runtimes, models) == (["3.13"], [])
    dry = make("-n", "lock")
    assert dry.returncode == 0
    assert last_line(dry).endswith("-m orchestrator lock")  # neither --models nor --python


@pytest.mark.docker
def test_make_lock_rewrites_a_models_lock_and_a_runtimes_lock(engine, tmp_path):
    copy = project_copy(tmp_path)
    for args, lock, command in ((["MODEL=emt"], copy / "images" / "emt" / "requirements.lock", "make lock MODEL=emt"),
                                (["PYTHON=3.13"], copy / "images" / "base" / "requirements-3.13.lock",
                                 "make lock PYTHON=3.13")):
        lock.write_text("# stale\n")
        done = make("lock", *args, cwd=copy)
        assert done.returncode == 0, done.stderr[-3000:]
        assert last_line(done) == str(lock)
        text = lock.read_text()
        assert f"written by `{command}`" in text
        pins = [line for line in text.splitlines() if not line.startswith("#")]
        assert any(line.startswith("ase==") for line in pins) and all("==" in line for line in pins)
    assert (REPO / "images" / "emt" / "requirements.lock").read_text() != "# stale\n"  # this checkout untouched


@pytest.mark.slow
def test_make_lock_host_re_resolves_the_hosts_lock(tmp_path):
    """`make lock HOST=1` asks for the host's lock (no engine needed), and the lock it writes,
    resolved by uv from the package index, pins every requirement with hashes."""
    import subprocess
    import sys

    dry = make("-n", "lock", "HOST=1")
    assert " ".join(dry.stdout.split()).endswith("-m orchestrator lock --host")
    copy = project_copy(tmp_path)
    (copy / "requirements.lock").write_text("# stale\n")
    done = subprocess.run([sys.executable, "-m", "orchestrator", "lock", "--host"], cwd=copy, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    text = (copy / "requirements.lock").read_text()
    assert "make lock HOST=1" in text and "numpy==" in text and "--hash=sha256:" in text
