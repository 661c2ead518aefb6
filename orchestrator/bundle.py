"""Run bundles: one archive that holds what a run needs to be rerun and judged elsewhere.

<run>.bundle.tar.gz (and <run>.bundle.tar.gz.sha256 beside it) holds one folder, <run>/:

    bundle.json        format, the checkout that made it, every file's sha256
    provenance.json    what ran, where, with which settings (and where each setting came from)
    build/             per image, its build inputs as they built the image that ran: images/base
                       (runtime Dockerfile, constraints, lock), images/<model> (Dockerfile,
                       model.yaml, requirements.lock), adapters/ (the worker code the image held)
    results/           results.csv, results.parquet, relaxed.extxyz, sharding.json, raw/<model>/
                       (the per-structure result lines and the image record), report/ (its
                       Markdown, tables and self-contained HTML; the figures are inside that;
                       not explore.html, which `make report` writes again)
    data/              the dataset's files (only with --with-data)
    images/            `docker save` archives of the model images (only with --with-images)

A bundle never holds a token, a weights file, or a path of the user's home (written as ~).
The archive is deterministic: the same run folder gives the same bytes.
"""

from __future__ import annotations

import atexit
import gzip
import json
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path

from orchestrator import provenance, runfolder
from orchestrator.fetch import sha256_of
from orchestrator.errors import BenchError
from orchestrator.runfolder import RunFolder

FORMAT = 1
SUFFIX = ".bundle.tar.gz"
#: Files whose text is searched for the user's home (and written with ~ instead).
TEXT_SUFFIXES = (".json", ".jsonl", ".md", ".html", ".csv", ".txt", ".yaml", ".extxyz", ".svg")


def make_bundle(run_dir: Path, out_dir: Path | None = None, with_data: bool = False, with_images: bool = False,
                engine=None, echo=print, label: str | None = None) -> Path:
    """Bundle a finished run folder into <label, else the run's name>.bundle.tar.gz; the archive's
    path (its sha256 written beside it)."""
    run = RunFolder(Path(run_dir).resolve())
    run_dir = run.root
    record = run.read_provenance()
    if not record:
        raise BenchError(f"{run_dir}: not a run folder (no provenance.json)")
    if record.get("status") != "complete":
        raise BenchError(f"{run_dir}: the run is incomplete; finish it (rerun its bench command) before bundling")
    if not run.build.is_dir():
        raise BenchError(f"{run_dir}: holds no build inputs (run folders from before bundles keep none); rerun "
                         "its bench command with this checkout to record them (finished structures are kept)")
    runfolder.refuse_links(run_dir)  # a planted link would pack a file from elsewhere, readable by anyone
    name = run_dir.name
    out_dir = Path(out_dir) if out_dir else run_dir.parent
    if not out_dir.is_dir():
        raise BenchError(f"{out_dir}: no such folder for the bundle (--out); create it first")
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        stage = Path(tmp) / name
        stage.mkdir()
        _write_json(stage / "provenance.json", record)
        shutil.copytree(run.build, stage / "build", ignore=shutil.ignore_patterns("__pycache__"))
        _copy_results(run, RunFolder(stage / "results"))
        if with_data:
            _copy_data(record, stage / "data")
        if with_images:
            _save_images(record, stage / "images", engine, echo)
        _scrub_home(stage)
        files = {p.relative_to(stage).as_posix(): sha256_of(p) for p in sorted(stage.rglob("*")) if p.is_file()}
        _write_json(stage / "bundle.json", {
            "format": FORMAT, "run_id": name, "tool_commit": provenance.git_commit(),  # no time: the same bytes
            "with_data": with_data, "with_images": with_images, "files": files})
        archive = out_dir / f"{label or name}{SUFFIX}"
        _deterministic_tar(stage, archive, level=1 if with_images else 6)  # gigabytes of images: fast beats small
    digest = sha256_of(archive)
    runfolder.write_text(Path(f"{archive}.sha256"), f"{digest}  {archive.name}\n")
    return archive


def _copy_results(run: RunFolder, results: RunFolder) -> None:
    """results/: the run folder's layout, with only what judges and reruns the run: the tables,
    the relaxed structures, the cut, the result lines and image record of each model, and the
    report's text, tables and self-contained HTML (which holds the figures); not the page to
    explore, 5 MB of plotly.js that `make report` writes again from the results."""
    results.root.mkdir()
    for path, copy in ((run.results, results.results), (run.results_parquet, results.results_parquet),
                       (run.relaxed, results.relaxed), (run.sharding, results.sharding)):
        if path.is_file():
            shutil.copyfile(path, copy)
    shutil.copytree(run.report, results.report, ignore=shutil.ignore_patterns("*.png", "*.svg", "explore.html"))
    for model_dir in run.model_dirs():
        results.model_results(model_dir.name).mkdir(parents=True)
        for path in [*run.result_files(model_dir.name), run.image_record(model_dir.name)]:
            if path.is_file():
                shutil.copyfile(path, results.model_results(model_dir.name) / path.name)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _copy_data(record: dict, dest: Path) -> None:
    """The dataset's files as the run read them, each checked against its recorded sha256."""
    dataset = record.get("dataset", {})
    paths, sums = dataset.get("paths") or {}, dataset.get("files") or {}
    if not paths:
        raise BenchError("--with-data: the run's provenance names no dataset files (a run from before bundles); "
                         "rerun its bench command with this checkout, then bundle it")
    dest.mkdir()
    for file, where in paths.items():
        path = Path(where).expanduser()
        if not path.is_file() or sha256_of(path) != sums.get(file):
            raise BenchError(f"--with-data: {path} is no longer the file the run read (sha256 {sums.get(file)})")
        shutil.copyfile(path, dest / file)


def _save_images(record: dict, dest: Path, engine, echo) -> None:
    dest.mkdir()
    for model, entry in sorted(record.get("models", {}).items()):
        archive = dest / f"{model}.tar"
        if engine.image_id(entry["image"]) != entry["image_id"]:
            raise BenchError(f"--with-images: the engine no longer holds {entry['image']} ({entry['image_id']}) "
                             f"that {model} ran in")
        echo(f"saving {entry['image']} into the bundle")
        engine.save_image(entry["image"], archive)


def _scrub_home(stage: Path) -> None:
    """The user's home in any text of the bundle is written ~ (a path there says who ran it)."""
    home = str(Path.home())
    if home in ("/", ""):
        return
    whole = re.compile(re.escape(home) + r"(?![\w.-])")  # /root, not /rootfs
    for path in stage.rglob("*"):
        if path.is_file() and path.suffix in TEXT_SUFFIXES:
            text = path.read_text(errors="surrogateescape")
            if home in text:
                path.write_text(whole.sub("~", text), errors="surrogateescape")


def _deterministic_tar(stage: Path, archive: Path, level: int) -> None:
    """tar.gz of stage with sorted members, no times, no owners: the same files, the same bytes."""
    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        info.mode = 0o755 if info.isdir() else 0o644
        return info

    with runfolder.replacing(archive) as partial, partial.open("wb") as raw, \
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="", compresslevel=level) as zipped, \
            tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in [stage, *sorted(stage.rglob("*"))]:
            tar.add(path, arcname=path.relative_to(stage.parent).as_posix(), recursive=False, filter=clean)


def label_of(path: Path) -> str:
    """A bundle's name without its suffix (a run folder's name as it is)."""
    return Path(path).name.removesuffix(SUFFIX)


class Bundle:
    """An unpacked bundle: its folder and what it recorded."""

    def __init__(self, folder: Path, origin: Path, sha256: str | None = None):
        self.folder = folder
        self.origin = origin            # the archive (or folder) the user named
        self.meta = _read_json(folder / "bundle.json", origin, "not a run bundle (no bundle.json)")
        if self.meta.get("format") != FORMAT:
            raise BenchError(f"{origin}: bundle format {self.meta.get('format')}; this tool reads format {FORMAT}")
        self.provenance = _read_json(folder / "provenance.json", origin,
                                     "its provenance.json is missing: not a whole bundle; ask for it again")
        if not isinstance(self.meta.get("run_id"), str) or not isinstance(self.meta.get("files"), dict):
            raise BenchError(f"{origin}: its bundle.json names no run_id or files: not a bundle this tool made")
        self.run_id = self.meta["run_id"]
        self.sha256 = sha256             # the archive's, as open_bundle read it (None: a folder)

    @property
    def build(self) -> Path:
        return self.folder / "build"

    @property
    def results(self) -> RunFolder:
        """results/: a run folder's layout (with only what _copy_results packs)."""
        return RunFolder(self.folder / "results")

    @property
    def sharding(self) -> dict | None:
        """The run's shards as recorded (sharding.json), None for a bundle without it."""
        path = self.results.sharding
        return _read_json(path, self.origin, "") if path.is_file() else None

    def changed_files(self) -> list[str]:
        """What differs from what the bundle recorded when it was made: its files whose sha256
        changed or that are gone, and files it never listed ("added: <name>")."""
        listed = self.meta["files"]
        changed = [name for name, digest in listed.items()
                   if not (self.folder / name).is_file() or sha256_of(self.folder / name) != digest]
        present = (p.relative_to(self.folder).as_posix() for p in self.folder.rglob("*") if not p.is_dir())
        return changed + [f"added: {name}" for name in sorted(present) if name not in listed and name != "bundle.json"]


def _read_json(path: Path, origin: Path, missing: str) -> dict:
    if not path.is_file():
        raise BenchError(f"{origin}: {missing}")
    try:
        data = json.loads(path.read_bytes().decode())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BenchError(f"{origin}: its {path.name} is not valid JSON ({exc}): a damaged bundle; ask for it "
                         "again") from None
    if not isinstance(data, dict):
        raise BenchError(f"{origin}: its {path.name} holds no JSON object: a damaged bundle; ask for it again")
    return data


#: What unpacking a received bundle may write: members, bytes, and bytes per byte of archive
#: (past the first UNPACK_RATIO_FREE bytes: small bundles of text compress well).
UNPACK_MEMBERS = 200_000
UNPACK_BYTES = 256 * 1024**3
UNPACK_RATIO, UNPACK_RATIO_FREE = 100, 64 * 1024**2


def open_bundle(path: Path, unpack_dir: Path) -> Bundle:
    """A bundle given as its archive (checked against the .sha256 beside it, when there, and
    unpacked within limits into a folder of unpack_dir removed when this process ends) or as
    an unpacked folder."""
    path = Path(path).expanduser().resolve()
    if path.is_dir():  # the unpacked folder, or the folder it was unpacked into
        inner = [p for p in path.iterdir() if (p / "bundle.json").is_file()]
        return Bundle(path if (path / "bundle.json").is_file() or len(inner) != 1 else inner[0], path)
    if not path.is_file():
        raise BenchError(f"{path}: no such bundle (a {SUFFIX} file or its unpacked folder)")
    digest = sha256_of(path)
    recorded = Path(f"{path}.sha256")
    if recorded.is_file() and recorded.read_text().split()[0] != digest:
        raise BenchError(f"{path}: sha256 {digest} is not the {recorded.read_text().split()[0]} written beside it "
                         f"({recorded.name}): the archive is damaged or was replaced")
    Path(unpack_dir).mkdir(parents=True, exist_ok=True)
    _remove_leftovers(Path(unpack_dir))
    target = Path(unpack_dir) / f"{digest[:16]}.{os.getpid()}"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    atexit.register(shutil.rmtree, target, ignore_errors=True)
    try:
        _unpack(path, target)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise BenchError(f"{path}: not a readable bundle ({exc})") from None
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    folders = [p for p in target.iterdir() if p.is_dir()]
    if len(folders) != 1:
        raise BenchError(f"{path}: a bundle holds one run folder; this one holds {len(folders)}")
    return Bundle(folders[0], path, digest)


def _unpack(archive: Path, target: Path) -> None:
    """Extract member by member, each checked before it is written: no links out, no
    absolute paths, no devices (tarfile's data filter), and within the limits above and
    the free disk."""
    size, free = archive.stat().st_size, shutil.disk_usage(target).free
    members = total = 0
    with tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            members += 1
            total += max(member.size, 0)
            why = (f"more than {UNPACK_MEMBERS} members" if members > UNPACK_MEMBERS else
                   f"more than {UNPACK_BYTES / 1024**3:g} GiB unpacked" if total > UNPACK_BYTES else
                   f"more than {UNPACK_RATIO} times its own size unpacked"
                   if total > UNPACK_RATIO_FREE and total > UNPACK_RATIO * size else
                   f"more than the {free / 1e9:.1f} GB free beside the unpacked bundles" if total > free else "")
            if why:
                raise BenchError(f"{archive}: refused while unpacking: {why} "
                                 f"(at {member.name}); not a bundle this tool made")
            tar.extract(member, target, filter="data")


def _remove_leftovers(unpack_dir: Path) -> None:
    """Unpacked bundles of processes that ended without removing theirs (killed outright)."""
    for folder in unpack_dir.iterdir():
        pid = folder.suffix.lstrip(".")
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)
