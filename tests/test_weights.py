"""orchestrator.weights against a weights host stood in for by a thread of this test on
127.0.0.1: public and token-gated files, Range requests, a connection that breaks off."""

import hashlib
import json
import logging
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import orchestrator.fetch as fetch
from orchestrator.errors import BenchError
from orchestrator.models import Model
import orchestrator.weights as weights
from orchestrator.weights import RECORD, checkpoint_option, ensure_weights, missing_weights

TOKEN = "hf_test_secret_4f1e"  # what a user's HF_TOKEN would hold
CHECKPOINT = bytes(range(256)) * 400  # 100 kB


class Host:
    def __init__(self):
        self.files = {"/releases/model.ckpt": CHECKPOINT, "/gated/model.pt": CHECKPOINT[::-1]}
        self.gated = {"/gated/model.pt"}
        self.redirects = {}  # path -> the address it answers 302 with
        self.requests = []
        self.drop_after = None  # bytes to send before breaking off, once

    def handler(self):
        host = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                host.requests.append((self.path, dict(self.headers)))
                if self.path in host.redirects:
                    self.send_response(302)
                    self.send_header("Location", host.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    return self.end_headers()
                if self.path not in host.files:
                    return self.reply(404, b"not found")
                if self.path in host.gated and self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self.reply(401, b"unauthorized")
                data = host.files[self.path]
                start = int(self.headers["Range"][6:].split("-")[0]) if "Range" in self.headers else 0
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("ETag", '"v1"')
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if host.drop_after is not None:
                    self.wfile.write(data[start:start + host.drop_after])
                    host.drop_after = None
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(data[start:])

            def reply(self, code, body):
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


def serve(site: Host, address: str = "127.0.0.1", tls: ssl.SSLContext | None = None):
    server = ThreadingHTTPServer((address, 0), site.handler())
    if tls:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    site.url = f"{'https' if tls else 'http'}://{address}:{server.server_address[1]}"
    return server


@pytest.fixture
def host(monkeypatch):
    monkeypatch.setattr(fetch, "BACKOFF_S", 0.01)
    site = Host()
    server = serve(site)
    yield site
    server.shutdown()


@pytest.fixture
def tls(tmp_path_factory, monkeypatch):
    """A certificate for 127.0.0.1 that this process trusts (SSL_CERT_FILE), as a real
    weights host's is: the server's TLS context."""
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(folder / "key.pem"),
                    "-out", str(folder / "cert.pem")], check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(folder / "cert.pem"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return context


@pytest.fixture
def gated_host(tls, monkeypatch):
    """The weights host over https, as the gated files' hosts are."""
    monkeypatch.setattr(fetch, "BACKOFF_S", 0.01)
    site = Host()
    server = serve(site, tls=tls)
    yield site
    server.shutdown()


def model(tmp_path, weights) -> Model:
    return Model(name="mace-mpa-0", folder=tmp_path / "images" / "mace-mpa-0", description="x", calculator="mace",
                 weights=weights)


def test_download_verify_record_and_reuse(host, tmp_path):
    sha = hashlib.sha256(CHECKPOINT).hexdigest()
    m = model(tmp_path, [{"file": "model.ckpt", "url": host.url + "/releases/model.ckpt", "sha256": sha}])
    assert missing_weights(m, tmp_path / "w") == ["model.ckpt"]
    record = ensure_weights(m, tmp_path / "w", environ={})
    assert (tmp_path / "w" / "mace-mpa-0" / "model.ckpt").read_bytes() == CHECKPOINT
    assert record == {"model.ckpt": {"sha256": sha, "url": host.url + "/releases/model.ckpt", "bytes": 102400}}
    assert RECORD in {p.name for p in (tmp_path / "w" / "mace-mpa-0").iterdir()}
    assert missing_weights(m, tmp_path / "w") == []
    assert checkpoint_option(m) == {"checkpoint": "/cache/mace-mpa-0/model.ckpt"}
    assert checkpoint_option(m, tmp_path / "w") == {"checkpoint": f"{tmp_path}/w/mace-mpa-0/model.ckpt"}  # no container
    asked = len(host.requests)
    ensure_weights(m, tmp_path / "w", environ={})
    assert len(host.requests) == asked  # in the cache: never downloaded again


def test_a_broken_transfer_resumes_where_it_stopped(host, tmp_path):
    host.drop_after = 30000
    m = model(tmp_path, [{"file": "model.ckpt", "url": host.url + "/releases/model.ckpt"}])
    ensure_weights(m, tmp_path / "w", environ={})
    assert (tmp_path / "w" / "mace-mpa-0" / "model.ckpt").read_bytes() == CHECKPOINT
    assert host.requests[-1][1].get("Range") == "bytes=30000-"


def test_a_checksum_mismatch_is_an_error_and_leaves_no_file(host, tmp_path):
    m = model(tmp_path, [{"file": "model.ckpt", "url": host.url + "/releases/model.ckpt", "sha256": "0" * 64}])
    with pytest.raises(BenchError, match="has sha256 .* but model.yaml pins 0000"):
        ensure_weights(m, tmp_path / "w", environ={})
    assert not list((tmp_path / "w" / "mace-mpa-0").glob("model.ckpt*"))


def test_a_gated_file_needs_the_token_and_the_token_is_written_nowhere(gated_host, tmp_path, caplog):
    host = gated_host
    m = model(tmp_path, [{"file": "model.pt", "url": host.url + "/gated/model.pt", "access": "token"}])
    with pytest.raises(BenchError, match="is gated: accept its licence on its page, then set HF_TOKEN"):
        ensure_weights(m, tmp_path / "w", environ={})
    with pytest.raises(BenchError, match="HTTP 401.*set HF_TOKEN to a token of an account") as refused:
        ensure_weights(m, tmp_path / "w", environ={"HF_TOKEN": "hf_wrong"})
    assert "hf_wrong" not in str(refused.value)
    with caplog.at_level(logging.DEBUG):
        ensure_weights(m, tmp_path / "w", environ={"HF_TOKEN": TOKEN})
    assert (tmp_path / "w" / "mace-mpa-0" / "model.pt").read_bytes() == CHECKPOINT[::-1]
    assert host.requests[-1][1]["Authorization"] == f"Bearer {TOKEN}"
    written = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    assert not any(TOKEN.encode() in data for data in written)
    assert TOKEN not in caplog.text


def test_the_token_goes_to_its_host_only_never_across_a_redirect_or_over_http(gated_host, tmp_path):
    cdn = Host()  # a second server, on another address, as a weights host's CDN
    cdn.files["/signed/model.pt"] = CHECKPOINT[::-1]
    server = serve(cdn, "127.0.0.2")
    try:
        gated_host.redirects["/gated/model.pt"] = cdn.url + "/signed/model.pt"
        m = model(tmp_path, [{"file": "model.pt", "url": gated_host.url + "/gated/model.pt", "access": "token"}])
        ensure_weights(m, tmp_path / "w", environ={"HF_TOKEN": TOKEN})
        assert (tmp_path / "w" / "mace-mpa-0" / "model.pt").read_bytes() == CHECKPOINT[::-1]
        assert gated_host.requests[-1][1]["Authorization"] == f"Bearer {TOKEN}"  # asked with the token
        assert cdn.requests and all("Authorization" not in headers for _, headers in cdn.requests)
        # a redirect on the same host keeps it (the file is still gated there)
        gated_host.redirects["/gated/latest.pt"] = gated_host.url + "/gated/model.pt"
        moved = model(tmp_path, [{"file": "model.pt", "url": gated_host.url + "/gated/latest.pt", "access": "token"}])
        ensure_weights(moved, tmp_path / "same-host", environ={"HF_TOKEN": TOKEN})
        assert gated_host.requests[-1] == ("/gated/model.pt", gated_host.requests[-1][1])
        assert gated_host.requests[-1][1]["Authorization"] == f"Bearer {TOKEN}"
        # plain http never carries it
        plain = model(tmp_path, [{"file": "model.pt", "url": cdn.url + "/signed/model.pt", "access": "token"}])
        asked = len(cdn.requests)
        with pytest.raises(BenchError, match="refusing to send a token over plain http"):
            ensure_weights(plain, tmp_path / "plain", environ={"HF_TOKEN": TOKEN})
        assert len(cdn.requests) == asked
    finally:
        server.shutdown()


def test_a_registry_model_id_is_asked_for_its_file_address_then_downloaded(host, tmp_path, monkeypatch):
    """nequip.net:group/model:version, as nequip names its packaged models: the registry's API
    (a thread here) answers with the file's address, and the file comes from there."""
    monkeypatch.setitem(weights.REGISTRIES, "nequip.net", host.url + "/api/models/download/{id}")
    api = "/api/models/download/mir-group%2FNequIP-OAM-XL%3A0.1"
    host.files[api] = json.dumps({"modelId": "mir-group/NequIP-OAM-XL:0.1", "artifact": {
        "downloadUrl": host.url + "/releases/model.ckpt", "hostName": "a stand-in"}}).encode()
    m = model(tmp_path, [{"file": "NequIP-OAM-XL-0.1.nequip.zip", "url": "nequip.net:mir-group/NequIP-OAM-XL:0.1"}])
    record = ensure_weights(m, tmp_path / "w", environ={})
    assert (tmp_path / "w" / "mace-mpa-0" / "NequIP-OAM-XL-0.1.nequip.zip").read_bytes() == CHECKPOINT
    assert [path for path, _ in host.requests] == [api, "/releases/model.ckpt"]
    assert record["NequIP-OAM-XL-0.1.nequip.zip"]["url"] == "nequip.net:mir-group/NequIP-OAM-XL:0.1"
    assert record["NequIP-OAM-XL-0.1.nequip.zip"]["download_url"] == host.url + "/releases/model.ckpt"
    # a model the registry does not know, or an answer without a file: one line naming the model id
    unknown = model(tmp_path, [{"file": "x.nequip.zip", "url": "nequip.net:mir-group/NoSuchModel:0.1"}])
    with pytest.raises(BenchError, match=r"cannot ask nequip.net for mir-group/NoSuchModel:0.1 at .*HTTP 404"):
        ensure_weights(unknown, tmp_path / "w2", environ={})
    host.files["/api/models/download/mir-group%2FEmpty%3A0.1"] = b'{"artifact": null}'
    empty = model(tmp_path, [{"file": "x.nequip.zip", "url": "nequip.net:mir-group/Empty:0.1"}])
    with pytest.raises(BenchError, match=r"nequip.net names no file for mir-group/Empty:0.1"):
        ensure_weights(empty, tmp_path / "w3", environ={})


def test_a_manual_file_names_the_exact_place_to_put_it(tmp_path):
    m = model(tmp_path, [{"file": "2025-01-10-dpa3-openlam.pth", "access": "manual", "note": "ask its authors"}])
    with pytest.raises(BenchError, match=r"no public download \(ask its authors\); put the file at "
                                         rf"{tmp_path}/w/mace-mpa-0/2025-01-10-dpa3-openlam.pth"):
        ensure_weights(m, tmp_path / "w", environ={})
    (tmp_path / "w" / "mace-mpa-0" / "2025-01-10-dpa3-openlam.pth").write_bytes(b"weights")
    assert ensure_weights(m, tmp_path / "w", environ={})["2025-01-10-dpa3-openlam.pth"]["bytes"] == 7


def test_without_network_a_missing_file_is_an_error_within_seconds(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    m = model(tmp_path, [{"file": "model.ckpt", "url": f"http://127.0.0.1:{port}/model.ckpt"}])
    start = time.monotonic()
    with pytest.raises(BenchError, match=rf"cannot download http://127.0.0.1:{port}/model.ckpt .*connection "
                                         rf"refused.*put it at {tmp_path}/w/mace-mpa-0/model.ckpt"):
        ensure_weights(m, tmp_path / "w", environ={})
    assert time.monotonic() - start < 10
