"""Registry datasets: download into the cache once, verify, record checksums, work offline.

Cache layout, one folder per registry name:

    <cache_dir>/<dataset>/<file name>        the files exactly as served (e.g. P000.json.bz2)
    <cache_dir>/<dataset>/<file name>.part   an interrupted download, resumed with an HTTP Range request
                                             (If-Range: the ETag or date kept in .<file name>.part.validator,
                                             so a file changed upstream meanwhile is fetched whole)
    <cache_dir>/<dataset>/SHA256SUMS.json    what was used last: per file sha256, url, bytes and the
                                             upstream listing's date/size; the dataset identity
    <cache_dir>/.decompressed/               bz2-compressed databases, decompressed once (datasets.formats)

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

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, unquote, urljoin, urlparse

from orchestrator.errors import BenchError
from orchestrator.fetch import NetworkError, download, fetch_page, locked, progress_bar, sha256_of, validator_path

log = logging.getLogger("orchestrator.datasets")

RECORD = "SHA256SUMS.json"


@dataclass
class Item:
    name: str            # file name in the cache folder
    url: str
    pinned: str | None   # sha256 the registry requires
    listed: str | None   # the index listing's date and size, to notice upstream changes


#: Files of a dataset folder that are not data.
NOT_DATA = ("SHA256SUMS.json",)


def identity_of(sums: dict[str, str]) -> str:
    """16 hex digits of sha256 over the sorted file checksums (names do not count)."""
    return hashlib.sha256("\n".join(sorted(sums.values())).encode()).hexdigest()[:16]


def is_data_name(name: str) -> bool:
    """Whether a file in a dataset folder is data (not hidden, partial or the checksum record)."""
    return not name.startswith(".") and not name.endswith(".part") and name not in NOT_DATA


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
    html, base = fetch_page(url)
    return parse_index(html, base if base.endswith("/") else base + "/")


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
        validator_path(part).unlink(missing_ok=True)
        raise BenchError(f"{item.name} downloaded from {item.url} has sha256 {sha}, but the registry pins "
                         f"{item.pinned}; the file was removed (has it changed upstream? then update the pin)")
    os.replace(part, path)
    log.info("dataset %s: downloaded %s (%d bytes, sha256 %s)", dataset, item.name, path.stat().st_size, sha)
    return sha


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
