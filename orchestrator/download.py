"""Registry datasets: download into the cache once, verify, record checksums, work offline.

Cache layout, one folder per registry name:

    <cache_dir>/<dataset>/<file name>        the files exactly as served (e.g. P000.json.bz2)
    <cache_dir>/<dataset>/<file name>.part   an interrupted download, resumed with an HTTP Range request
                                             (If-Range: the ETag or date kept in .<file name>.part.validator,
                                             so a file changed upstream meanwhile is fetched whole)
    <cache_dir>/<dataset>/SHA256SUMS.json    what was used last: per file sha256, url, bytes and the
                                             upstream listing's date/size; the dataset identity
    <cache_dir>/.decompressed/               bz2-compressed databases, decompressed once (datasets.py)

A registry entry is `{url, sha256?}` for one file or `{url ending in "/", files?}` for a
directory index (an nginx autoindex page) whose .bz2 files make up the dataset; `files`
pins `{file name: sha256}` and then exactly those files are the dataset.

Pre-seeding (air-gapped machines, CI): copy the files into `<cache_dir>/<dataset>/`
under their upstream names. A present file is never downloaded again; a pinned one is
verified against its pin. For an index without pins the listing is fetched to learn the
file set; when it cannot be fetched, the files already there are used with a warning.

Changes are reported, never mixed silently: a file whose upstream listing entry (date,
size) differs from the recorded one is downloaded again, and whenever the set of files or
any checksum differs from the record, a warning gives the old and new dataset identity
(the run identity includes it, so results of the two versions never share a run folder).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import http.client
import json
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, unquote, urljoin, urlparse, urlsplit

from orchestrator.errors import BenchError

log = logging.getLogger("orchestrator.datasets")

RECORD = "SHA256SUMS.json"
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


@dataclass
class Item:
    name: str            # file name in the cache folder
    url: str
    pinned: str | None   # sha256 the registry requires
    listed: str | None   # the index listing's date and size, to notice upstream changes


class _Retry(Exception):
    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind  # "connect" or "transfer"


class NetworkError(Exception):
    """No answer from the server after the retries: the caller says what to do instead."""


#: Files of a dataset folder that are not data.
NOT_DATA = ("SHA256SUMS.json",)


def identity_of(sums: dict[str, str]) -> str:
    """16 hex digits of sha256 over the sorted file checksums (names do not count)."""
    return hashlib.sha256("\n".join(sorted(sums.values())).encode()).hexdigest()[:16]


def is_data_name(name: str) -> bool:
    """Whether a file in a dataset folder is data (not hidden, partial or the checksum record)."""
    return not name.startswith(".") and not name.endswith(".part") and name not in NOT_DATA


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_dataset(name: str, entry: dict, cache_dir: Path, *, show_progress: bool = True
                  ) -> tuple[list[Path], dict[str, str]]:
    """The local, verified files of registry dataset `name` and their sha256s, downloading
    what the cache lacks."""
    url = entry.get("url")
    if not isinstance(url, str) or not url:
        raise BenchError(f"datasets.{name}: needs a url")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise BenchError(f"datasets.{name}: a dataset name is a folder name: letters, digits, '.', '_', '-'")
    folder = Path(cache_dir).expanduser() / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BenchError(f"cannot create the dataset cache folder {folder}: {err}") from None
    with locked(folder):
        record = _read_record(folder)
        items = _index_items(name, entry, folder, record) if url.endswith("/") else [_file_item(name, entry)]
        sums, files = {}, []
        with progress_bar(show_progress) as progress:
            for item in items:
                sums[item.name] = _obtain(name, item, folder, record, progress)
                files.append(folder / item.name)
        _report_change(name, record, sums)
        _write_record(folder, {"identity": identity_of(sums), "files": {
            item.name: {"sha256": sums[item.name], "url": item.url, "bytes": (folder / item.name).stat().st_size,
                        "listed": item.listed or record["files"].get(item.name, {}).get("listed")}
            for item in items}})
    return files, sums


# --------------------------------------------------------------------------- what to fetch

def _file_item(name: str, entry: dict) -> Item:
    url = entry["url"]
    filename = unquote(urlparse(url).path.rsplit("/", 1)[-1])
    if not filename or not is_data_name(filename):
        raise BenchError(f"datasets.{name}: url {url} does not end in a file name")
    if entry.get("files"):
        raise BenchError(f"datasets.{name}: files pins belong to a directory url (ending in /), not to {url}")
    return Item(filename, url, _pin(name, entry.get("sha256")), None)


def _pin(where: str, value) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise BenchError(f"datasets.{where}: sha256 pin {value!r} is not 64 hexadecimal digits")
    return value.lower()


def _index_items(name: str, entry: dict, folder: Path, record: dict) -> list[Item]:
    url = entry["url"]
    if entry.get("sha256"):
        raise BenchError(f"datasets.{name}: {url} is a directory index; pin its files with "
                         f"files: {{file name: sha256}}, not with sha256")
    pins = entry.get("files") or {}
    if pins:  # the pins are the file set: no listing needed, so a seeded cache works offline
        for filename in pins:
            if not is_data_name(filename) or "/" in filename:
                raise BenchError(f"datasets.{name}.files: {filename!r} is not a file name")
        return [Item(f, urljoin(url, quote(f)), _pin(f"{name}.files.{f}", sha), None)
                for f, sha in sorted(pins.items())]
    try:
        listing = list_index(url)
    except NetworkError as err:
        present = [f for f in record["files"] if (folder / f).is_file()] or \
            sorted(p.name for p in folder.iterdir() if p.is_file() and is_data_name(p.name))
        if not present:
            raise BenchError(f"dataset {name}: cannot list {url}: {err}. Without network access, download "
                             f"every .bz2 file listed there elsewhere and copy them into {folder}/") from None
        log.warning("cannot list dataset %s at %s (%s); using the %d file(s) already in %s: %s",
                    name, url, err, len(present), folder, ", ".join(present))
        return [Item(f, urljoin(url, quote(f)), None, None) for f in present]
    if not listing:
        raise BenchError(f"dataset {name}: the index {url} lists no .bz2 file")
    listed = {n for n, _, _ in listing}
    stray = sorted(p.name for p in folder.iterdir() if p.is_file() and is_data_name(p.name) and p.name not in listed)
    if stray:
        log.warning("dataset %s: %s in %s not listed at %s any more; not used (delete to silence this)",
                    name, ", ".join(stray), folder, url)
    return [Item(n, u, None, meta) for n, u, meta in listing]


class _IndexPage(HTMLParser):
    """Links of an autoindex page and the text after each (nginx: date and size)."""

    def __init__(self):
        super().__init__()
        self.links: list[list[str]] = []
        self._href: str | None = None
        self._in_link = False

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._href, self._in_link = dict(attrs).get("href"), True

    def handle_endtag(self, tag):
        if tag == "a" and self._in_link:
            self._in_link = False
            if self._href:
                self.links.append([self._href, ""])

    def handle_data(self, data):
        if not self._in_link and self.links and "\n" not in self.links[-1][1]:
            self.links[-1][1] += data


def parse_index(html: str, base_url: str) -> list[tuple[str, str, str]]:
    """(file name, url, listing text) of each .bz2 file directly in the directory `base_url`."""
    page = _IndexPage()
    page.feed(html)
    out, seen = [], set()
    for href, after in page.links:
        url = urljoin(base_url, href)
        if not url.startswith(base_url) or "?" in url or "#" in url:
            continue
        filename = unquote(url[len(base_url):])
        if "/" in filename or not filename.endswith(".bz2") or not is_data_name(filename) or filename in seen:
            continue
        seen.add(filename)
        out.append((filename, url, " ".join(after.split("\n", 1)[0].split()) or None))
    return sorted(out)


def list_index(url: str) -> list[tuple[str, str, str]]:
    """The .bz2 files of a directory index page."""
    response = _with_retries(url, lambda: _open_classified(url, {}, None))
    with response:
        base = response.geturl()
        try:
            html = response.read().decode(response.headers.get_content_charset() or "utf-8", "replace")
        except (OSError, http.client.HTTPException) as err:
            raise NetworkError(str(err)) from None
    return parse_index(html, base if base.endswith("/") else base + "/")


def fetch_json(url: str):
    """The JSON document at `url` (a registry's answer), with the downloads' retries."""
    response = _with_retries(url, lambda: _open_classified(url, {}, None))
    with response:
        try:
            return json.loads(response.read())
        except (OSError, http.client.HTTPException) as err:
            raise NetworkError(str(err)) from None
        except ValueError:
            raise NetworkError(f"{url} did not answer with JSON") from None


# --------------------------------------------------------------------------- one file

def _obtain(dataset: str, item: Item, folder: Path, record: dict, progress) -> str:
    """sha256 of the verified file `item` in `folder`, downloaded if missing or changed upstream."""
    path = folder / item.name
    previous = record["files"].get(item.name)
    changed_upstream = bool(path.is_file() and previous and item.listed and previous.get("listed")
                            and previous["listed"] != item.listed)
    if path.is_file() and not changed_upstream:
        sha = sha256_of(path)
        if item.pinned and sha != item.pinned:
            raise BenchError(f"{path}: sha256 {sha}, but the registry pins {item.pinned} for {item.url}; "
                             f"delete the file to download it again, or correct the pin")
        if previous and previous["sha256"] != sha:
            log.warning("dataset %s: %s differs from the copy recorded in %s (sha256 %s, now %s)",
                        dataset, path, RECORD, previous["sha256"], sha)
        elif not previous:
            log.info("dataset %s: using %s found in the cache (sha256 %s)", dataset, path, sha)
        return sha
    if changed_upstream:
        log.warning("dataset %s: %s changed upstream (listed %r, cached copy listed %r); downloading it again",
                    dataset, item.url, item.listed, previous["listed"])
    part = path.with_name(path.name + ".part")
    try:
        download(item.url, part, progress)
    except NetworkError as err:
        raise BenchError(f"dataset {dataset}: cannot download {item.url}: {err}. Without network access, "
                         f"download it elsewhere and copy it to {path}") from None
    sha = sha256_of(part)
    if item.pinned and sha != item.pinned:
        part.unlink()
        _validator_path(part).unlink(missing_ok=True)
        raise BenchError(f"{item.name} downloaded from {item.url} has sha256 {sha}, but the registry pins "
                         f"{item.pinned}; the file was removed (has it changed upstream? then update the pin)")
    os.replace(part, path)
    log.info("dataset %s: downloaded %s (%d bytes, sha256 %s)", dataset, item.name, path.stat().st_size, sha)
    return sha


def download(url: str, part: Path, progress=None, headers: dict | None = None) -> None:
    """Fetch `url` into `part`, resuming what `part` already holds; retries with backoff.
    `headers` (e.g. an Authorization) go with every request and are never logged."""
    task = {}  # the progress bar's task, made when the first response arrives
    failures = {"connect": 0, "transfer": 0}
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            _transfer(url, part, progress, task, headers or {})
            _validator_path(part).unlink(missing_ok=True)
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


def _validator_path(part: Path) -> Path:
    return part.with_name(f".{part.name}.validator")


def _transfer(url: str, part: Path, progress, task: dict, extra_headers: dict) -> None:
    """One request: the rest of `part` (Range, If-Range with the validator of the response
    that started it, so a file changed upstream meanwhile comes whole) or all of it."""
    have = part.stat().st_size if part.exists() else 0
    validator_path = _validator_path(part)
    headers = dict(extra_headers)
    if have and not validator_path.exists():
        log.info("%s: partial file of unknown origin; downloading from the start", part)
        have = 0
    elif have:
        headers["Range"] = f"bytes={have}-"
        validator = validator_path.read_text().strip()
        if validator:
            headers["If-Range"] = validator
    response = _open_classified(url, headers, part if have else None)
    with response:
        resumed = bool(have) and response.status == 206 and \
            response.headers.get("Content-Range", "").startswith(f"bytes {have}-")
        if not resumed:
            have = 0
            etag = response.headers.get("ETag") or ""
            validator_path.write_text(etag if etag and not etag.startswith("W/")
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


# --------------------------------------------------------------------------- record, lock, progress

def _read_record(folder: Path) -> dict:
    path = folder / RECORD
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return {"identity": None, "files": {}}
    except (OSError, ValueError) as err:
        log.warning("%s cannot be read (%s); checksums are recomputed", path, err)
        return {"identity": None, "files": {}}
    record.setdefault("files", {})
    record.setdefault("identity", None)
    return record


def _write_record(folder: Path, record: dict) -> None:
    tmp = folder / f".{RECORD}.tmp"
    try:
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, folder / RECORD)
    except OSError as err:  # a read-only, pre-seeded cache still works
        log.warning("cannot record checksums in %s (%s)", folder / RECORD, err)


def _report_change(name: str, record: dict, sums: dict[str, str]) -> None:
    old = {f: r["sha256"] for f, r in record["files"].items()}
    if not old or old == sums:
        return
    changed = sorted(f for f in sums if f in old and old[f] != sums[f])
    added = sorted(set(sums) - set(old))
    removed = sorted(set(old) - set(sums))
    what = "; ".join(f"{label}: {', '.join(files)}" for label, files in
                     (("changed", changed), ("new", added), ("gone", removed)) if files)
    log.warning("dataset %s differs from its last use (%s): identity %s -> %s; runs on it go to a new run folder",
                name, what, record.get("identity") or identity_of(old), identity_of(sums))


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
