"""Registry datasets against a stand-in for Alexandria: an nginx-style directory index and
.bz2 files served from 127.0.0.1 by a thread of this test, with Range requests."""

import hashlib
import json
import logging
import shutil
import socket
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote

import pytest

import orchestrator.fetch as fetch
from helpers import P000, P000_SHA256, compress, structures, write_db, write_entries
from orchestrator.datasets import load_dataset
from orchestrator.datasets.registry import parse_index
from orchestrator.errors import BenchError

INDEX = "/data/pbe/benchmarks/dimensionality/"


class Site:
    """What the stand-in serves, and what it was asked."""

    def __init__(self):
        self.files = {}        # name -> bytes, under INDEX
        self.modified = {}     # name -> listing date
        self.requests = []     # (path, headers dict)
        self.drop = {}         # name -> bytes to send before dropping the connection (once)
        self.lock = threading.Lock()

    def put(self, name, data, modified="24-Nov-2025 10:00"):
        self.files[name], self.modified[name] = data, modified

    def etag(self, name):
        return '"' + hashlib.sha256(self.files[name]).hexdigest()[:12] + '"'

    def index(self):
        rows = ['<a href="../">../</a>', '<a href="old/">old/</a>' + " " * 40 + "01-Jan-2025 00:00       -",
                '<a href="README.txt">README.txt</a>' + " " * 40 + "01-Jan-2025 00:00     120"]
        for name in sorted(self.files):
            rows.append(f'<a href="{quote(name)}">{name}</a>{" " * (50 - len(name))} '
                        f'{self.modified[name]}   {len(self.files[name]):>10}')
        return ("<html>\r\n<head><title>Index of {0}</title></head>\r\n<body>\r\n<h1>Index of {0}</h1>"
                "<hr><pre>{1}\r\n</pre><hr></body>\r\n</html>\r\n").format(INDEX, "\r\n".join(rows))

    def file_gets(self, name=None):
        return [(p, h) for p, h in self.requests if p.startswith(INDEX) and p != INDEX
                and (name is None or p == INDEX + quote(name))]


def make_handler(site):
    class Handler(BaseHTTPRequestHandler):
        timeout = 5
        server_version = "nginx"

        def log_message(self, *args):
            pass

        def do_GET(self):
            with site.lock:
                site.requests.append((self.path, dict(self.headers)))
            if self.path == INDEX:
                return self.send(200, self.site_index().encode(), "text/html")
            if not self.path.startswith(INDEX) or unquote(self.path[len(INDEX):]) not in site.files:
                return self.send(404, b"<html>404 Not Found</html>", "text/html")
            name = unquote(self.path[len(INDEX):])
            data, etag = site.files[name], site.etag(name)
            start, status, extra = 0, 200, {}
            ranged = self.headers.get("Range", "")
            if ranged.startswith("bytes=") and self.headers.get("If-Range", etag) == etag:
                start = int(ranged[6:].split("-")[0])
                if start >= len(data):
                    return self.send(416, b"", "text/html", {"Content-Range": f"bytes */{len(data)}"})
                status, extra = 206, {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
            body = data[start:]
            drop = site.drop.pop(name, None)
            self.send(status, body, "application/octet-stream", {"ETag": etag, **extra}, drop=drop)

        def site_index(self):
            return site.index()

        def send(self, status, body, ctype, extra=None, drop=None):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Last-Modified", formatdate(usegmt=True))
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if drop is not None:  # the connection breaks off midway
                self.wfile.write(body[:drop])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture
def site(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(fetch, "BACKOFF_S", 0.05)
    state = Site()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}{INDEX}"
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def closed_port():
    """A localhost port nothing listens on: every connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return port


@pytest.fixture
def served(site, tmp_path):
    """The stand-in serves an ASE database like 0123D_pbe.db (labelled rows) and an entries
    JSON (no labels: dimensionality from geometry), each with every dimensionality."""
    db = write_db(tmp_path / "0123D_pbe.db", structures("db"))
    site.put("0123D_pbe.db.bz2", compress(db, tmp_path / "db.bz2").read_bytes())
    site.put("alexandria entries.json.bz2", write_entries(tmp_path / "e.json.bz2", structures("js")).read_bytes())
    return site


def sha(data):
    return hashlib.sha256(data).hexdigest()


def test_index_dataset_downloads_verifies_caches_and_loads(served, tmp_path):
    registry = {"0123d": {"url": served.url}}
    cache = tmp_path / "cache"
    dataset = load_dataset("0123d", registry, cache, show_progress=True)
    assert dataset.counts() == {"0D": 4, "1D": 4, "2D": 4, "3D": 4}
    assert {a.info["source"] for a in dataset.structures} == set(served.files)
    assert dataset.files == [cache / "0123d" / n for n in sorted(served.files)]
    assert dataset.sha256 == {n: sha(d) for n, d in served.files.items()}
    for name, data in served.files.items():
        assert (cache / "0123d" / name).read_bytes() == data
        assert len(served.file_gets(name)) == 1
    assert not any("README" in p or "old" in p for p, _ in served.requests)  # only the .bz2 files
    record = json.loads((cache / "0123d" / "SHA256SUMS.json").read_text())
    assert {n: r["sha256"] for n, r in record["files"].items()} == dataset.sha256
    assert record["identity"] == dataset.identity
    assert record["files"]["0123D_pbe.db.bz2"]["url"] == served.url + "0123D_pbe.db.bz2"
    assert not list((cache / "0123d").glob("*.part"))

    before = len(served.requests)
    again = load_dataset("0123d", registry, cache, show_progress=False)
    assert [p for p, _ in served.requests[before:]] == [INDEX]  # the listing only, no file
    assert again.identity == dataset.identity
    assert [a.info["id"] for a in again.structures] == [a.info["id"] for a in dataset.structures]


def test_a_download_broken_off_midway_is_resumed(served, tmp_path):
    name = "0123D_pbe.db.bz2"
    size = len(served.files[name])
    served.drop[name] = size // 2
    dataset = load_dataset("0123d", {"0123d": {"url": served.url}}, tmp_path, show_progress=False)
    assert dataset.sha256[name] == sha(served.files[name])
    gets = served.file_gets(name)
    assert len(gets) == 2 and "Range" not in gets[0][1]
    assert gets[1][1]["Range"] == f"bytes={size // 2}-" and gets[1][1]["If-Range"] == served.etag(name)
    assert len(dataset.structures) == 16


def test_a_partial_file_left_behind_is_resumed_or_redone(served, tmp_path):
    name = "alexandria entries.json.bz2"
    data = served.files[name]
    folder = tmp_path / "0123d"
    folder.mkdir()
    # left by an earlier run that was stopped: resumed with the validator it recorded
    (folder / f"{name}.part").write_bytes(data[:1000])
    (folder / f".{name}.part.validator").write_text(served.etag(name))
    load_dataset("0123d", {"0123d": {"url": served.url}}, tmp_path, show_progress=False)
    (_, headers), = served.file_gets(name)
    assert headers["Range"] == "bytes=1000-"
    assert (folder / name).read_bytes() == data
    assert not (folder / f"{name}.part").exists() and not (folder / f".{name}.part.validator").exists()


def test_a_partial_file_of_an_older_upstream_version_is_redone(served, tmp_path):
    name = "alexandria entries.json.bz2"
    folder = tmp_path / "0123d"
    folder.mkdir()
    (folder / f"{name}.part").write_bytes(b"BZh9 an older version of the file")
    (folder / f".{name}.part.validator").write_text('"older-etag"')
    load_dataset("0123d", {"0123d": {"url": served.url}}, tmp_path, show_progress=False)
    (_, headers), = served.file_gets(name)
    assert headers["If-Range"] == '"older-etag"'  # the server answered with the whole file
    assert (folder / name).read_bytes() == served.files[name]
    # and one of unknown origin is not trusted at all
    (folder / name).unlink()
    (folder / f"{name}.part").write_bytes(b"garbage")
    load_dataset("0123d", {"0123d": {"url": served.url}}, tmp_path, show_progress=False)
    assert "Range" not in served.file_gets(name)[-1][1]
    assert (folder / name).read_bytes() == served.files[name]


def test_pinned_checksum_mismatch_is_an_error(served, tmp_path):
    name = "0123D_pbe.db.bz2"
    wrong = "0" * 64
    registry = {"0123d": {"url": served.url, "files": {name: wrong}}}
    with pytest.raises(BenchError) as err:
        load_dataset("0123d", registry, tmp_path, show_progress=False)
    message = str(err.value)
    assert name in message and served.url + name in message
    assert wrong in message and sha(served.files[name]) in message
    assert not (tmp_path / "0123d" / name).exists() and not (tmp_path / "0123d" / f"{name}.part").exists()
    # the right pins: exactly the pinned files, fetched without the listing
    good = {"0123d": {"url": served.url, "files": {name: sha(served.files[name])}}}
    dataset = load_dataset("0123d", good, tmp_path, show_progress=False)
    assert list(dataset.sha256) == [name] and len(dataset.structures) == 8
    assert INDEX not in [p for p, _ in served.requests]


def test_single_file_dataset_downloads_once_and_checks_its_pin(site, tmp_path):
    data = write_entries(tmp_path / "x.json.bz2", structures()).read_bytes()
    site.put("P000.json.bz2", data)
    registry = {"p": {"url": site.url + "P000.json.bz2", "sha256": sha(data)}}
    first = load_dataset("p", registry, tmp_path / "cache", show_progress=False)
    second = load_dataset("p", registry, tmp_path / "cache", show_progress=False)
    assert len(site.requests) == 1 and first.identity == second.identity
    assert first.files == [tmp_path / "cache" / "p" / "P000.json.bz2"]
    (tmp_path / "cache" / "p" / "P000.json.bz2").write_bytes(data[:-1] + b"x")
    with pytest.raises(BenchError, match=f"sha256 .* but the registry pins {sha(data)}"):
        load_dataset("p", registry, tmp_path / "cache", show_progress=False)


def test_changed_upstream_file_is_downloaded_again_and_reported(served, tmp_path, caplog):
    registry = {"0123d": {"url": served.url}}
    first = load_dataset("0123d", registry, tmp_path, show_progress=False)
    name = "alexandria entries.json.bz2"
    served.put(name, write_entries(tmp_path / "new.json.bz2", structures("js")[:5]).read_bytes(),
               modified="01-Dec-2025 09:30")
    with caplog.at_level(logging.WARNING, logger="orchestrator.datasets"):
        second = load_dataset("0123d", registry, tmp_path, show_progress=False)
    assert len(served.file_gets(name)) == 2 and len(served.file_gets("0123D_pbe.db.bz2")) == 1
    assert second.identity != first.identity and len(second.structures) == 8 + 5
    assert "changed upstream" in caplog.text
    assert f"identity {first.identity} -> {second.identity}" in caplog.text and f"changed: {name}" in caplog.text
    record = json.loads((tmp_path / "0123d" / "SHA256SUMS.json").read_text())
    assert record["files"][name]["sha256"] == sha(served.files[name])
    assert record["files"][name]["listed"].startswith("01-Dec-2025 09:30")


def test_a_cached_file_replaced_by_hand_is_reported(served, tmp_path, caplog):
    registry = {"0123d": {"url": served.url}}
    first = load_dataset("0123d", registry, tmp_path, show_progress=False)
    name = "alexandria entries.json.bz2"
    write_entries(tmp_path / "0123d" / name, structures("js")[:3])
    with caplog.at_level(logging.WARNING, logger="orchestrator.datasets"):
        second = load_dataset("0123d", registry, tmp_path, show_progress=False)
    assert len(served.file_gets(name)) == 1  # not overwritten: it is the user's file
    assert second.identity != first.identity and "differs from the copy recorded" in caplog.text


@pytest.mark.slow
def test_preseeded_p000_loads_without_network(tmp_path, closed_port):
    folder = tmp_path / "cache" / "alexandria-3d-p000"
    folder.mkdir(parents=True)
    shutil.copy(P000, folder / "P000.json.bz2")
    url = f"http://127.0.0.1:{closed_port}/data/pbe/benchmarks/pressure/P000.json.bz2"
    registry = {"alexandria-3d-p000": {"url": url, "sha256": P000_SHA256}}
    start = time.perf_counter()
    dataset = load_dataset("alexandria-3d-p000", registry, tmp_path / "cache", show_progress=False)
    seconds = time.perf_counter() - start
    assert len(dataset.structures) == 9155
    assert {a.info["dimension"] for a in dataset.structures} == {"3D"}
    assert {a.info["periodic_axes"] for a in dataset.structures} == {"abc"}
    assert dataset.sha256 == {"P000.json.bz2": P000_SHA256}
    assert seconds < 30
    print(f"P000 from a seeded cache: {seconds:.2f} s")
    # a seeded file that is not the pinned one is refused
    registry["alexandria-3d-p000"]["sha256"] = "f" * 64
    with pytest.raises(BenchError, match="P000.json.bz2.*" + P000_SHA256 + ".*" + "f" * 64):
        load_dataset("alexandria-3d-p000", registry, tmp_path / "cache", show_progress=False)


@pytest.mark.slow
def test_no_network_and_no_cache_fails_fast_naming_url_and_path(tmp_path, closed_port):
    url = f"http://127.0.0.1:{closed_port}/data/pbe/benchmarks/pressure/P000.json.bz2"
    start = time.perf_counter()
    with pytest.raises(BenchError) as err:
        load_dataset("p000", {"p000": {"url": url}}, tmp_path, show_progress=False)
    assert time.perf_counter() - start < 10
    message = str(err.value)
    assert url in message and str(tmp_path / "p000" / "P000.json.bz2") in message
    assert "connection refused" in message
    index = f"http://127.0.0.1:{closed_port}{INDEX}"
    start = time.perf_counter()
    with pytest.raises(BenchError) as err:
        load_dataset("0123d", {"0123d": {"url": index}}, tmp_path, show_progress=False)
    assert time.perf_counter() - start < 10
    assert index in str(err.value) and str(tmp_path / "0123d") in str(err.value)


def test_unreachable_index_uses_the_files_already_there(tmp_path, closed_port, caplog):
    folder = tmp_path / "0123d"
    folder.mkdir()
    compress(write_db(tmp_path / "x.db", structures()), folder / "0123D_pbe.db.bz2")
    registry = {"0123d": {"url": f"http://127.0.0.1:{closed_port}{INDEX}"}}
    with caplog.at_level(logging.WARNING, logger="orchestrator.datasets"):
        dataset = load_dataset("0123d", registry, tmp_path, show_progress=False)
    assert len(dataset.structures) == 8 and dataset.files == [folder / "0123D_pbe.db.bz2"]
    assert "cannot list dataset 0123d" in caplog.text and "0123D_pbe.db.bz2" in caplog.text


def test_missing_file_is_a_clear_error(site, tmp_path):
    start = time.perf_counter()
    with pytest.raises(BenchError, match="HTTP 404"):
        load_dataset("x", {"x": {"url": site.url + "nope.json.bz2"}}, tmp_path, show_progress=False)
    assert time.perf_counter() - start < 5 and len(site.requests) == 1  # not retried


def test_parse_index_keeps_bz2_files_of_that_folder():
    base = "https://example.org/data/dim/"
    html = """<html><body><h1>Index of /data/dim/</h1><hr><pre><a href="../">../</a>
<a href="sub/">sub/</a>                 01-Aug-2025 10:00       -
<a href="0123D_pbe.db.bz2">0123D_pbe.db.bz2</a>     01-Aug-2025 10:00    123456789
<a href="alexandria%200D.json.bz2">alexandria 0D.json.bz2</a>  02-Aug-2025 11:00   42
<a href="/elsewhere/x.bz2">x.bz2</a>   02-Aug-2025 11:00   42
<a href="notes.txt">notes.txt</a>     02-Aug-2025 11:00   7
<a href="https://example.org/data/dim/abs.json.bz2">abs.json.bz2</a>
</pre><hr></body></html>"""
    got = parse_index(html, base)
    assert got == [("0123D_pbe.db.bz2", base + "0123D_pbe.db.bz2", "01-Aug-2025 10:00 123456789"),
                   ("abs.json.bz2", base + "abs.json.bz2", None),
                   ("alexandria 0D.json.bz2", base + "alexandria%200D.json.bz2", "02-Aug-2025 11:00 42")]


def test_registry_entries_are_checked_before_any_request(site, tmp_path):
    with pytest.raises(BenchError, match="64 hexadecimal"):
        load_dataset("p", {"p": {"url": site.url + "a.json.bz2", "sha256": "abc"}}, tmp_path)
    with pytest.raises(BenchError, match="folder name"):
        load_dataset("../up", {"../up": {"url": site.url + "a.json.bz2"}}, tmp_path)
    with pytest.raises(BenchError, match="files: "):
        load_dataset("d", {"d": {"url": site.url, "sha256": "0" * 64}}, tmp_path)
    assert site.requests == [] and not (tmp_path.parent / "up").exists()
