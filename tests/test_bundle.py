"""Bundles without a container: what is scrubbed, and the one-line errors of a bad one."""

import tarfile

import pytest

from orchestrator.bundle import _scrub_home, open_bundle
from orchestrator.errors import BenchError


def test_the_home_is_written_as_a_tilde_and_nothing_that_only_starts_like_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", "/home/ada")
    (tmp_path / "provenance.json").write_text('{"cache": "/home/ada/.cache", "other": "/home/adam/x"}')
    (tmp_path / "results.parquet").write_bytes(b"/home/ada/binary")  # not text: left as it is
    _scrub_home(tmp_path)
    assert (tmp_path / "provenance.json").read_text() == '{"cache": "~/.cache", "other": "/home/adam/x"}'
    assert (tmp_path / "results.parquet").read_bytes() == b"/home/ada/binary"


def test_a_bad_bundle_is_one_clear_error(tmp_path):
    with pytest.raises(BenchError, match="no such bundle"):
        open_bundle(tmp_path / "absent.bundle.tar.gz", tmp_path / "unpack")
    (tmp_path / "junk.bundle.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(BenchError, match="not a readable bundle"):
        open_bundle(tmp_path / "junk.bundle.tar.gz", tmp_path / "unpack")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("hello")
    with tarfile.open(tmp_path / "plain.bundle.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "run", arcname="run")
    (tmp_path / "plain.bundle.tar.gz.sha256").write_text("0" * 64 + "  plain.bundle.tar.gz\n")
    with pytest.raises(BenchError, match="damaged or was replaced"):
        open_bundle(tmp_path / "plain.bundle.tar.gz", tmp_path / "unpack")
    (tmp_path / "plain.bundle.tar.gz.sha256").unlink()
    with pytest.raises(BenchError, match="not a run bundle"):
        open_bundle(tmp_path / "plain.bundle.tar.gz", tmp_path / "unpack")


def fake_run(folder):
    """A finished run folder as `make bundle` reads it, without a container: provenance,
    build inputs, results, a report, a model's results."""
    import json

    (folder / "build" / "images" / "emt").mkdir(parents=True)
    (folder / "build" / "images" / "emt" / "Dockerfile").write_text("FROM runtime\n")
    (folder / "report").mkdir()
    (folder / "report" / "report.md").write_text("# report\n")
    (folder / "raw" / "emt").mkdir(parents=True)
    (folder / "raw" / "emt" / "shard-0000.jsonl").write_text('{"id": "a"}\n')
    (folder / "results.csv").write_text("model,id\nemt,a\n")
    (folder / "provenance.json").write_text(json.dumps({"status": "complete", "models": {}}))
    return folder


def test_make_bundle_never_packs_a_link(tmp_path):
    from orchestrator.bundle import make_bundle

    secret = tmp_path / "secret"
    secret.write_text("root only")
    secret.chmod(0o600)
    for planted in ("build/images/emt/notes.txt", "report/summary.csv", "raw/emt/shard-0001.jsonl"):
        run = fake_run(tmp_path / f"run-{planted.split('/')[0]}")
        (run / planted).symlink_to(secret)
        with pytest.raises(BenchError, match=f"{run / planted}: a symbolic link in the run folder"):
            make_bundle(run, tmp_path)
        assert not list(tmp_path.glob("*.bundle.tar.gz"))
    linked = fake_run(tmp_path / "run-dir")
    (linked / "report").rename(tmp_path / "elsewhere")
    (linked / "report").symlink_to(tmp_path / "elsewhere")  # a linked folder, not only a linked file
    with pytest.raises(BenchError, match="report: a symbolic link in the run folder"):
        make_bundle(linked, tmp_path)


def test_a_bundle_written_to_an_absent_folder_is_one_clear_error(tmp_path):
    from orchestrator.bundle import make_bundle

    with pytest.raises(BenchError, match=f"{tmp_path / 'absent'}: no such folder for the bundle"):
        make_bundle(fake_run(tmp_path / "run"), tmp_path / "absent")


def bundle_folder(tmp_path, **files):
    """An unpacked bundle folder with these files (name -> bytes, None: absent), its
    bundle.json listing provenance.json as it is and a results.csv that is not there."""
    import hashlib
    import json

    folder = tmp_path / "b" / "run"
    folder.mkdir(parents=True)
    files = {"provenance.json": b'{"models": {}}', **files}
    listed = {"results/results.csv": "0" * 64}
    for name, data in files.items():
        if data is not None:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
            listed[name] = hashlib.sha256(data).hexdigest()
    if "bundle.json" not in files:
        (folder / "bundle.json").write_text(json.dumps({"format": 1, "run_id": "run", "files": listed}))
    return folder


def test_a_damaged_bundle_folder_is_one_line_naming_the_file(tmp_path):
    from orchestrator.bundle import Bundle

    with pytest.raises(BenchError, match="its bundle.json is not valid JSON"):
        Bundle(bundle_folder(tmp_path / "1", **{"bundle.json": b"{not json"}), tmp_path)
    with pytest.raises(BenchError, match="its provenance.json is not valid JSON"):
        Bundle(bundle_folder(tmp_path / "2", **{"provenance.json": b'{"a": "\xff\xfe"}'}), tmp_path)
    with pytest.raises(BenchError, match="its provenance.json is missing: not a whole bundle"):
        Bundle(bundle_folder(tmp_path / "3", **{"provenance.json": None}), tmp_path)


def test_a_bundle_knows_files_added_changed_or_removed_since_it_was_made(tmp_path):
    from orchestrator.bundle import Bundle

    folder = bundle_folder(tmp_path)
    (folder / "results").mkdir()
    (folder / "results" / "extra.txt").write_text("unlisted")
    assert Bundle(folder, tmp_path).changed_files() == ["results/results.csv", "added: results/extra.txt"]


def zeros_bundle(path, size):
    """A gzip tar whose one member is `size` zero bytes: small on disk, huge unpacked."""
    import io

    class Zeros(io.RawIOBase):
        left = size

        def readable(self):
            return True

        def readinto(self, buffer):
            n = min(len(buffer), self.left)
            buffer[:n] = bytes(n)
            self.left -= n
            return n

    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("run/zeros.bin")
        info.size = size
        tar.addfile(info, io.BufferedReader(Zeros()))


def test_unpacking_has_limits_and_leaves_nothing(tmp_path, monkeypatch):
    import orchestrator.bundle as bundles

    zeros_bundle(tmp_path / "bomb.bundle.tar.gz", 300 * 1024**2)  # 300 MiB of zeros, about 0.3 MB packed
    with pytest.raises(BenchError, match=r"refused while unpacking: more than 100 times its own size unpacked "
                                         r"\(at run/zeros.bin\)"):
        open_bundle(tmp_path / "bomb.bundle.tar.gz", tmp_path / "unpack")
    assert list((tmp_path / "unpack").iterdir()) == []
    monkeypatch.setattr(bundles, "UNPACK_MEMBERS", 1)
    (tmp_path / "run").mkdir()
    for name in ("a", "b"):
        (tmp_path / "run" / name).write_text(name)
    with tarfile.open(tmp_path / "many.bundle.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "run", arcname="run")
    with pytest.raises(BenchError, match="more than 1 members"):
        open_bundle(tmp_path / "many.bundle.tar.gz", tmp_path / "unpack")
    assert list((tmp_path / "unpack").iterdir()) == []


def test_an_unpacked_bundle_is_removed_when_the_command_ends(tmp_path):
    import os
    import subprocess
    import sys

    from helpers import REPO

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "bundle.json").write_text('{"format": 1, "run_id": "run", "files": {}}')
    (tmp_path / "run" / "provenance.json").write_text("{}")
    with tarfile.open(tmp_path / "run.bundle.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "run", arcname="run")
    unpack = tmp_path / "unpack"
    (unpack / "0123456789abcdef.999999999").mkdir(parents=True)  # left by a process killed outright
    code = ("import sys; from pathlib import Path; from orchestrator.bundle import open_bundle; "
            "b = open_bundle(Path(sys.argv[1]), Path(sys.argv[2])); print(b.folder)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run.bundle.tar.gz"), str(unpack)],
                          cwd=REPO, capture_output=True, text=True, env=os.environ.copy())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(f".{done.stdout.strip().split('.')[-1].split('/')[0]}/run")
    assert list(unpack.iterdir()) == []  # its own folder at exit, and the dead process's
