"""A run folder is written without ever following a link (orchestrator.runfolder), as a
root orchestrator must: a link planted at a file or a folder is refused with one line
naming it, and what it points at is left as it was. Its outputs share one mode."""

import json
import os
import stat

import pytest
from ase import Atoms

from orchestrator import runfolder
from helpers import worker_job
from orchestrator.errors import BenchError


@pytest.fixture
def target(tmp_path):
    """A file a link may point at, and what must stay true of it."""
    path = tmp_path / "elsewhere" / "target"
    path.parent.mkdir()
    path.write_text("untouched")
    path.chmod(0o600)
    return path


def unchanged(path) -> bool:
    info = os.stat(path)
    return path.read_text() == "untouched" and stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.getuid()


def test_a_linked_file_is_refused_and_its_target_kept(tmp_path, target):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("report.md", "provenance.json"):
        (run / name).symlink_to(target)
        with pytest.raises(BenchError, match=f"{run / name}: a symbolic link in the run folder"):
            runfolder.write_text(run / name, "overwritten")
    (run / "shard-0000.log").symlink_to(target)
    with pytest.raises(BenchError, match="shard-0000.log: a symbolic link"):
        runfolder.open_append(run / "shard-0000.log")
    assert unchanged(target)


def test_a_linked_folder_is_refused_and_nothing_is_written_into_its_target(tmp_path, target):
    run = tmp_path / "run"
    (run / "raw").mkdir(parents=True)
    (run / "raw" / "emt").symlink_to(target.parent)
    with pytest.raises(BenchError, match="raw/emt: a symbolic link in the run folder"):
        runfolder.refuse_links(run)
    with pytest.raises(BenchError, match="raw/emt: a symbolic link"):
        runfolder.mkdir(run / "raw" / "emt")
    assert sorted(p.name for p in target.parent.iterdir()) == ["target"] and unchanged(target)


def test_a_results_folder_that_is_itself_a_link_is_fine(tmp_path):
    (tmp_path / "scratch").mkdir()
    (tmp_path / "results").symlink_to(tmp_path / "scratch")  # the user's choice, not a planted link
    runfolder.refuse_links(tmp_path / "results")
    runfolder.write_text(tmp_path / "results" / "leaderboard.md", "# board\n")
    assert (tmp_path / "scratch" / "leaderboard.md").read_text() == "# board\n"


def test_a_worker_file_in_a_linked_folder_is_refused(tmp_path, target):
    from orchestrator.workers.assignments import Assignment, prepare_worker_files

    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "emt").symlink_to(target.parent)
    job = worker_job(protocol={})
    assignment = Assignment("emt", "image", (tmp_path / "shards" / "shard-0000.jsonl",), tmp_path / "raw" / "emt", job)
    with pytest.raises(BenchError, match="raw/emt: a symbolic link"):
        prepare_worker_files(assignment)
    assert sorted(p.name for p in target.parent.iterdir()) == ["target"]


def test_the_outputs_of_a_run_share_one_mode(tmp_path):
    import pandas as pd

    from orchestrator.datasets import write_extxyz
    from orchestrator.merge import write_relaxed, write_table

    old = os.umask(0o022)
    try:
        atoms = Atoms("Cu", cell=[3, 3, 3], pbc=True, info={"id": "cu", "dimension": "3D"})
        write_extxyz(tmp_path / "reference.extxyz", [atoms])
        table = pd.DataFrame({"model": ["emt"], "id": ["cu"], "dimension": ["3D"], "converged": [True],
                              "failure_reason": [""], "steps": [3], "energy_ev": [-1.0]})
        write_relaxed(tmp_path / "relaxed.extxyz", table, {("emt", "cu"): atoms})
        write_table(runfolder.RunFolder(tmp_path), table)
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"reference.extxyz": 0o644, "relaxed.extxyz": 0o644, "results.csv": 0o644,
                     "results.parquet": 0o644}


def test_apptainer_is_checked_before_anything_is_converted(monkeypatch):
    import shutil

    from orchestrator.workers import slurm

    present = {"sbatch", "squeue", "sacct", "scancel", "docker"}
    monkeypatch.setattr(shutil, "which", lambda tool: f"/usr/bin/{tool}" if tool in present else None)
    monkeypatch.setattr(slurm, "SLURM_COMMANDS", ("sbatch",))
    with pytest.raises(BenchError, match="slurm.runtime apptainer: apptainer not found on this host"):
        slurm.check_commands("apptainer")
    slurm.check_commands("podman")  # nothing to convert with


def test_a_failed_conversion_leaves_nothing_behind(tmp_path, monkeypatch):
    from orchestrator.workers import slurm

    def fails(command, what):
        out = command[command.index("-o") + 1] if "-o" in command else command[-2]
        open(out, "wb").write(b"half an image")  # what a conversion writes before it breaks
        raise BenchError(f"{what} failed")

    class Engine:  # an engine that breaks halfway through whatever it writes
        def save_image(self, tag, path):
            fails(["-o", path], "saving")

        def export_files(self, tag, out):
            out.write(b"half a tar")
            raise BenchError("exporting failed")

    monkeypatch.setattr(slurm, "_run", fails)
    for runtime in ("apptainer", "podman", "charliecloud"):
        with pytest.raises(BenchError, match="failed"):
            slurm.convert_image(Engine(), "umlip-0123d/emt:abc", "sha256:" + "1" * 64, runtime, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_run_folder_records_its_format_once_and_refuses_a_newer_one(tmp_path):
    made = runfolder.RunFolder(tmp_path / "new").create()
    assert json.loads(made.format_record.read_text()) == {"format": runfolder.FORMAT}
    made.format_record.chmod(0o444)
    before = made.format_record.stat().st_mtime_ns
    runfolder.RunFolder(made.root).create()  # written once: an existing record is left as it is
    assert made.format_record.stat().st_mtime_ns == before
    older = tmp_path / "older"  # a folder from before the format was recorded: today's layout
    (older / "raw" / "emt").mkdir(parents=True)
    assert runfolder.RunFolder(older).format() == runfolder.FORMAT
    newer = runfolder.RunFolder(tmp_path / "newer")
    newer.root.mkdir()
    newer.format_record.write_text(json.dumps({"format": runfolder.FORMAT + 1}) + "\n")
    with pytest.raises(BenchError, match=rf"run-folder.json: run folder format {runfolder.FORMAT + 1}; this checkout "
                                         rf"reads format {runfolder.FORMAT} and older"):
        newer.create()
    newer.format_record.write_text("[1]\n")
    with pytest.raises(BenchError, match=r"run-folder.json: not a run folder record"):
        newer.create()


def test_the_folder_keeps_results_of_one_image_per_model(tmp_path):
    folder = runfolder.RunFolder(tmp_path)
    folder.check_image("emt", "umlip-0123d/emt:aaa", "sha256:1")
    folder.model_results("emt").joinpath("shard-0000.jsonl").write_text('{"id": "cu"}\n')
    folder.check_image("emt", "umlip-0123d/emt:aaa", "sha256:1")  # the same image resumes
    with pytest.raises(BenchError, match=r"raw/emt holds results of image umlip-0123d/emt:aaa, but the model now "
                                         r"builds umlip-0123d/emt:bbb"):
        folder.check_image("emt", "umlip-0123d/emt:bbb", "sha256:2")
    assert json.loads(folder.image_record("emt").read_text())["image"] == "umlip-0123d/emt:aaa"
