"""Model weights: fetched once on the host, verified, then mounted read-only into workers.

Each model's model.yaml lists its files (`weights:` entries with file, url, sha256,
licence, access). They live in

    <cache_dir>/weights/<model>/<file>          the file as served
    <cache_dir>/weights/<model>/WEIGHTS.json    sha256, url and size of each file used

and a worker sees that folder as /cache/<model>/ (read-only) and gets the first file's
path as its factory's `checkpoint` option: no model package downloads anything at run
time, and a worker has no network. Downloads reuse the dataset downloader (progress,
resume, atomic rename). Access:

- public: downloaded as is;
- token: a gated file; the request carries `Authorization: Bearer $HF_TOKEN` from the
  user's environment, which never enters an image, a log, provenance or an error message;
- manual: no public copy; the user puts the file in place.

A url may also name a model in a registry (`nequip.net:mir-group/NequIP-OAM-XL:0.1`, as the
model's own package names it): the host asks the registry's API for the file's address, as
that package does, and downloads it from there (WEIGHTS.json keeps both).

Air-gapped machines pre-seed the folder; a present file is never downloaded again, and
a pinned one is verified against its pin.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from urllib.parse import quote

from adapters.wire import CACHE_MOUNT
from orchestrator.fetch import NetworkError, download, fetch_json, locked, progress_bar, sha256_of
from orchestrator.errors import BenchError
from orchestrator.models import Model

log = logging.getLogger("orchestrator.weights")

RECORD = "WEIGHTS.json"
TOKEN_VARIABLE = "HF_TOKEN"
#: Registries a weights url may name (`<registry>:<model id>`): the API that answers with the
#: file's address (JSON, artifact.downloadUrl), as nequip 0.19's NequIPNetAPIClient asks it.
REGISTRIES = {"nequip.net": "https://www.nequip.net/api/models/download/{id}"}


def weights_folder(weights_dir: Path, model: Model) -> Path:
    return Path(weights_dir) / model.name


def checkpoint_path(model: Model, root: str | Path = CACHE_MOUNT) -> str:
    """The model's checkpoint (its first weights file) in the weights folder at `root`: where a
    worker sees it, or the host's folder for a run without a container."""
    return f"{root}/{model.name}/{model.weights[0]['file']}"


def checkpoint_option(model: Model, root: str | Path = CACHE_MOUNT) -> dict:
    """The factory option naming the model's checkpoint (inside the container), if it has one."""
    return {"checkpoint": checkpoint_path(model, root)} if model.weights else {}


def missing_weights(model: Model, weights_dir: Path) -> list[str]:
    """The model's declared files not yet in its weights folder."""
    folder = weights_folder(weights_dir, model)
    return [entry["file"] for entry in model.weights if not (folder / entry["file"]).is_file()]


def ensure_weights(model: Model, weights_dir: Path, *, environ=os.environ, show_progress: bool = True
                   ) -> dict[str, dict]:
    """Every declared file of `model`, present and verified: {file: {sha256, url, bytes}}.
    Missing ones are downloaded; a file that cannot be had is an error naming its URL and
    the exact path to put it at."""
    folder = weights_folder(weights_dir, model)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BenchError(f"cannot create the weights folder {folder}: {err}") from None
    record = {}
    with locked(folder), progress_bar(show_progress) as progress:
        for entry in model.weights:
            path = folder / entry["file"]
            download_url = None
            if not path.is_file():
                download_url = _fetch(model, entry, path, environ, progress)
            sha = sha256_of(path)
            if entry.get("sha256") and sha != entry["sha256"]:
                raise BenchError(f"{path}: sha256 {sha}, but {model.folder / 'model.yaml'} pins {entry['sha256']}; "
                                 "delete the file to download it again, or correct the pin")
            record[entry["file"]] = {"sha256": sha, "url": entry.get("url"), "bytes": path.stat().st_size}
            if download_url and download_url != entry.get("url"):
                record[entry["file"]]["download_url"] = download_url
        if record:
            try:
                (folder / RECORD).write_text(json.dumps(record, indent=1) + "\n")
            except OSError:  # a read-only, pre-seeded cache: the files are what counts
                pass
    return record


def registry_url(model: Model, url: str) -> str:
    """The address of the file a registry's model id names (an ordinary address as it is)."""
    registry, _, model_id = url.partition(":")
    if registry not in REGISTRIES:
        return url
    api = REGISTRIES[registry].format(id=quote(model_id, safe=""))
    try:
        answer = fetch_json(api)
    except NetworkError as err:
        raise BenchError(f"{model.name}: cannot ask {registry} for {model_id} at {api} ({err}). Without network "
                         "access, download the file elsewhere and put it in the weights folder") from None
    address = (answer.get("artifact") or {}).get("downloadUrl") if isinstance(answer, dict) else None
    if not address:
        raise BenchError(f"{model.name}: {registry} names no file for {model_id} ({api})")
    return address


def _fetch(model: Model, entry: dict, path: Path, environ, progress) -> str:
    """Download the entry's file to `path`; the address it came from."""
    access, url = entry.get("access", "public"), entry.get("url")
    if access == "manual":
        note = f" ({entry['note']})" if entry.get("note") else ""
        raise BenchError(f"{model.name}: {entry['file']} has no public download{note}; put the file at {path}")
    headers = {}
    if access == "token":
        token = environ.get(TOKEN_VARIABLE)
        if not token:
            raise BenchError(f"{model.name}: {url} is gated: accept its licence on its page, then set "
                             f"{TOKEN_VARIABLE} in your environment (or put the file at {path})")
        headers["Authorization"] = f"Bearer {token}"
    url = registry_url(model, url)
    part = path.with_name(path.name + ".part")
    try:
        download(url, part, progress, headers=headers)
    except NetworkError as err:
        refused = str(err).startswith(("HTTP 401", "HTTP 403"))
        hint = (f"; the file is gated: set {TOKEN_VARIABLE} to a token of an account that accepted its licence"
                if refused else "")
        raise BenchError(f"{model.name}: cannot download {url} ({err}){hint}. Without network access, download it "
                         f"elsewhere and put it at {path}") from None
    sha = sha256_of(part)
    if entry.get("sha256") and sha != entry["sha256"]:
        part.unlink()
        raise BenchError(f"{model.name}: {entry['file']} from {url} has sha256 {sha}, but model.yaml pins "
                         f"{entry['sha256']}; the file was removed")
    os.replace(part, path)
    log.info("%s: downloaded %s (%d bytes, sha256 %s)", model.name, entry["file"], path.stat().st_size, sha)
    return url
