"""Fetching files over HTTP(S) for the host: resumable downloads (Range, If-Range), retries
with backoff for connection and transfer failures, secrets (an Authorization header) that never
cross to another host, one process at a time per folder, and a progress bar. The datasets'
registry (orchestrator.datasets.registry) and the weights (orchestrator.weights) use it."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import http.client
import json
import logging
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger("orchestrator.fetch")

#: Seconds to wait for a connection, and for each read once connected.
TIMEOUT_S = 10.0


#: Attempts when no connection can be made (refused, unknown host, unreachable, timeout).
CONNECT_ATTEMPTS = 2


#: Attempts when a transfer breaks off without progress; each retry resumes where it stopped.
TRANSFER_ATTEMPTS = 5


#: First wait between attempts, doubled after each.
BACKOFF_S = 1.0


CHUNK = 1 << 16


USER_AGENT = "umlip-0123d-bench (dataset download; python urllib)"


class _Retry(Exception):
    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind  # "connect" or "transfer"


class NetworkError(Exception):
    """No answer from the server after the retries: the caller says what to do instead."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_page(url: str) -> tuple[str, str]:
    """The text at `url` and the address it came from (after redirects), with the downloads'
    retries."""
    response = _with_retries(url, lambda: _open_classified(url, {}, None))
    with response:
        try:
            return response.read().decode(response.headers.get_content_charset() or "utf-8", "replace"), \
                response.geturl()
        except (OSError, http.client.HTTPException) as err:
            raise NetworkError(str(err)) from None


def fetch_json(url: str):
    """The JSON document at `url` (a registry's answer), with the downloads' retries."""
    text, _ = fetch_page(url)
    try:
        return json.loads(text)
    except ValueError:
        raise NetworkError(f"{url} did not answer with JSON") from None


def download(url: str, part: Path, progress=None, headers: dict | None = None) -> None:
    """Fetch `url` into `part`, resuming what `part` already holds; retries with backoff.
    `headers` (e.g. an Authorization) go with every request and are never logged."""
    task = {}  # the progress bar's task, made when the first response arrives
    failures = {"connect": 0, "transfer": 0}
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            _transfer(url, part, progress, task, headers or {})
            validator_path(part).unlink(missing_ok=True)
            return
        except _Retry as err:
            if (part.stat().st_size if part.exists() else 0) > before:
                failures["transfer"] = 0  # it got further: keep going
            failures[err.kind] += 1
            limit = CONNECT_ATTEMPTS if err.kind == "connect" else TRANSFER_ATTEMPTS
            if failures[err.kind] >= limit:
                raise NetworkError(f"{err} (after {failures[err.kind]} attempts)") from None
            wait = BACKOFF_S * 2 ** (failures[err.kind] - 1)
            log.info("%s: %s; retrying in %.1f s", url, err, wait)
            time.sleep(wait)


def validator_path(part: Path) -> Path:
    return part.with_name(f".{part.name}.validator")


def _transfer(url: str, part: Path, progress, task: dict, extra_headers: dict) -> None:
    """One request: the rest of `part` (Range, If-Range with the validator of the response
    that started it, so a file changed upstream meanwhile comes whole) or all of it."""
    have = part.stat().st_size if part.exists() else 0
    stamp = validator_path(part)
    headers = dict(extra_headers)
    if have and not stamp.exists():
        log.info("%s: partial file of unknown origin; downloading from the start", part)
        have = 0
    elif have:
        headers["Range"] = f"bytes={have}-"
        validator = stamp.read_text().strip()
        if validator:
            headers["If-Range"] = validator
    response = _open_classified(url, headers, part if have else None)
    with response:
        resumed = bool(have) and response.status == 206 and \
            response.headers.get("Content-Range", "").startswith(f"bytes {have}-")
        if not resumed:
            have = 0
            etag = response.headers.get("ETag") or ""
            stamp.write_text(etag if etag and not etag.startswith("W/")
                             else response.headers.get("Last-Modified") or "")
        length = response.headers.get("Content-Length")
        expected = have + int(length) if length and length.isdigit() else None
        if progress:
            if not task:
                task["id"] = progress.add_task(part.name.removesuffix(".part"))
            progress.update(task["id"], total=expected, completed=have)
        with open(part, "ab" if resumed else "wb") as out:
            try:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    have += len(chunk)
                    if progress:
                        progress.update(task["id"], completed=have)
            except (OSError, http.client.HTTPException) as err:
                raise _Retry("transfer", f"connection lost after {have} bytes ({err})") from None
    if expected is not None and have < expected:
        raise _Retry("transfer", f"connection lost after {have} of {expected} bytes")


#: Request headers that identify the user (a token): sent to the host they are meant for
#: only, never across a redirect to another host or to plain http.
SECRET_HEADERS = ("Authorization",)


class _SecretsStayHome(urllib.request.HTTPRedirectHandler):
    """Follows redirects as urllib does, carrying a secret header on only when the new
    address is the same host and port over https (a weights host sends a gated file to a
    CDN with a signed URL that needs no token: the token never goes there)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        old, nxt = urlsplit(req.full_url), urlsplit(newurl)
        if new is not None and nxt.scheme == "https" and (nxt.hostname, nxt.port) == (old.hostname, old.port):
            for name, value in req.unredirected_hdrs.items():
                new.add_unredirected_header(name, value)
        return new


_OPENER = urllib.request.build_opener(_SecretsStayHome)


def _open(url: str, headers: dict | None = None):
    """urllib honours http_proxy, https_proxy and no_proxy from the environment. Secret
    headers are never sent over plain http, nor after a redirect to another host."""
    headers = dict(headers or {})
    secrets = {name: headers.pop(name) for name in SECRET_HEADERS if name in headers}
    if secrets and urlsplit(url).scheme != "https":
        raise NetworkError(f"refusing to send a token over plain http ({urlsplit(url).hostname}): "
                           "gated files are fetched over https only")
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **headers})
    for name, value in secrets.items():
        request.add_unredirected_header(name, value)
    return _OPENER.open(request, timeout=TIMEOUT_S)


def _open_classified(url: str, headers: dict, part: Path | None):
    try:
        return _open(url, headers)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and part is not None:  # the partial file is not a prefix of this file
            part.unlink(missing_ok=True)
            raise _Retry("transfer", "HTTP 416 for the resumed range; starting over") from None
        if err.code in (408, 429) or err.code >= 500:
            raise _Retry("transfer", f"HTTP {err.code} {err.reason}") from None
        raise NetworkError(f"HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        raise _Retry("connect", _reason(err.reason)) from None
    except (OSError, http.client.HTTPException) as err:  # timeouts, resets while connecting
        raise _Retry("connect", _reason(err)) from None


def _with_retries(url: str, action):
    """action() until it does not raise _Retry, within the attempt limits."""
    failures = {"connect": 0, "transfer": 0}
    while True:
        try:
            return action()
        except _Retry as err:
            failures[err.kind] += 1
            if failures[err.kind] >= (CONNECT_ATTEMPTS if err.kind == "connect" else TRANSFER_ATTEMPTS):
                raise NetworkError(f"{err} (after {failures[err.kind]} attempts)") from None
            wait = BACKOFF_S * 2 ** (failures[err.kind] - 1)
            log.info("%s: %s; retrying in %.1f s", url, err, wait)
            time.sleep(wait)


def _reason(err) -> str:
    if isinstance(err, socket.gaierror):
        return f"host name not resolved ({err.strerror})"
    if isinstance(err, ConnectionRefusedError) or getattr(err, "errno", None) == errno.ECONNREFUSED:
        return "connection refused"
    if isinstance(err, (TimeoutError, socket.timeout)):
        return f"no answer within {TIMEOUT_S:.0f} s"
    return str(err) or type(err).__name__


@contextlib.contextmanager
def locked(folder: Path):
    """One process at a time fills a dataset folder; others wait, then find the files."""
    try:
        handle = open(folder / ".lock", "w")
    except OSError:  # read-only cache: nothing will be written into it either
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process downloading into %s", folder)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _LazyProgress:
    """A rich progress bar (bytes) that appears with the first download, not before."""

    def __init__(self):
        self.progress = None

    def add_task(self, description: str, total=None):
        if self.progress is None:
            from rich.console import Console
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                       TransferSpeedColumn)

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                     TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True))
            self.progress.start()
        return self.progress.add_task(description, total=total)

    def update(self, task, **fields):
        self.progress.update(task, **fields)


@contextlib.contextmanager
def progress_bar(show: bool):
    bar = _LazyProgress() if show else None
    try:
        yield bar
    finally:
        if bar is not None and bar.progress is not None:
            bar.progress.stop()
