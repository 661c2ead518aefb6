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
