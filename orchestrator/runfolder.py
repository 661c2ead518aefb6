"""A run folder: its layout, its format, its lock and its records; and writing into it
(and into a results folder) without ever following a link.

`RunFolder` is the one place that spells the folder's names: every module that reads or
writes a run folder (bench's stages, merge, report, compare, bundle, reproduce, zoo, the
SLURM backend) takes its paths from it. A bundle's results/ folder has the same layout.

    run-folder.json     {"format": FORMAT}, written once when the folder is made (absent: a
                        folder made before the format was recorded, the same layout)
    .lock               held by the one orchestrator working on the folder
    reference.extxyz    the PBE structures of the run
    sharding.json       the cut of the structures into shards, kept for resumed runs
    shards/             shard-NNNN.jsonl: the structures each worker reads
    raw/<model>/        image.json (the image that relaxed them) and each shard's result lines
                        (shard-NNNN.jsonl), log, in-flight and crash markers, SLURM attempts
    slurm/              SLURM's own output per array task
    build/              the inputs that built each image, and the host's lock (for bundles)
    results.csv, results.parquet, relaxed.extxyz     the merged, scored results
    provenance.json     what ran, where, with which settings
    scored.key          the inputs the scores and report were last written from
    report/             report.md, report.html, explore.html and the figures
    reproduction/       compare.md, compare.html of a reproduced bundle

The orchestrator often runs as root (CI, a cluster's submit host), and a run folder is
shared, bundled and received: a symbolic link planted in it must never make the
orchestrator write somewhere else, or pack a file from somewhere else. So:

- `refuse_links(folder)` before a command writes into or packs a folder: any link
  below it (a file or a folder) is refused with one line naming it (exit 2), whatever it
  points at; the folder itself may be a link (a results folder on a scratch disk);
- every file is written by `replacing` (a new file beside it, renamed over it: a rename
  never writes through a link) or appended by `open_append` (O_NOFOLLOW), each refusing
  a link in its place, and a folder the orchestrator makes by `mkdir`, refusing a link;
- files are written 0644, whoever writes them, so a run's outputs share one mode.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from orchestrator.errors import BenchError

MODE = 0o644
#: The layout's version. A folder without run-folder.json has this layout too (format 1 is
#: the layout every folder had when the version began to be written).
FORMAT = 1


class LinkRefused(BenchError):
    def __init__(self, path: Path):
        super().__init__(f"{path}: a symbolic link in the run folder; remove it (the orchestrator never writes "
                         "through, nor packs, a link)")


def refuse_links(folder: Path) -> None:
    """Refuse `folder` if anything below it is a symbolic link (it may be one itself: the
    user's results folder on a scratch disk, say)."""
    folder = Path(folder)
    for parent, folders, files in os.walk(folder):  # never descends into a linked folder
        for name in [*folders, *files]:
            if os.path.islink(os.path.join(parent, name)):
                raise LinkRefused(Path(parent) / name)


def mkdir(folder: Path) -> Path:
    """`folder` and its missing parents; refused where it is a link."""
    folder = Path(folder)
    if folder.is_symlink():
        raise LinkRefused(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def replacing(path: Path):
    """A new temporary file beside `path` to write (same suffix, so writers that go by it
    still can), renamed over `path` when the block ends, or removed if it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        raise LinkRefused(path)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.fchmod(handle, MODE)
    os.close(handle)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: Path, data: bytes) -> None:
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def open_append(path: Path, mode: str = "ab"):
    """`path` opened to append (created 0644), never through a link."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        access = os.O_RDWR if "+" in mode else os.O_WRONLY
        handle = os.open(path, access | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, MODE)
    except OSError:
        if path.is_symlink():
            raise LinkRefused(path) from None
        raise
    return os.fdopen(handle, mode)


class RunFolder:
    """A run folder's paths and bookkeeping (see the module's docstring for the layout)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.name = self.root.name
        self.format_record = self.root / "run-folder.json"
        self.reference = self.root / "reference.extxyz"
        self.sharding = self.root / "sharding.json"
        self.shards = self.root / "shards"
        self.raw = self.root / "raw"
        self.slurm_logs = self.root / "slurm"
        self.build = self.root / "build"
        self.results = self.root / "results.csv"
        self.results_parquet = self.root / "results.parquet"
        self.relaxed = self.root / "relaxed.extxyz"
        self.provenance = self.root / "provenance.json"
        self.scored_key = self.root / "scored.key"
        self.report = self.root / "report"
        self.reproduction = self.root / "reproduction"

    def __repr__(self) -> str:
        return f"RunFolder({self.root})"

    def model_results(self, model: str) -> Path:
        """raw/<model>/: where the workers of `model` write."""
        return self.raw / model

    def image_record(self, model: str) -> Path:
        return self.model_results(model) / "image.json"

    def shard_files(self) -> list[Path]:
        return sorted(self.shards.glob("shard-*.jsonl"))

    def result_files(self, model: str = "*") -> list[Path]:
        """The result lines of `model` (of every model: "*"), shard by shard."""
        return sorted(self.raw.glob(f"{model}/shard-*.jsonl"))

    def model_dirs(self) -> list[Path]:
        return sorted(d for d in self.raw.iterdir() if d.is_dir()) if self.raw.is_dir() else []

    def is_scored(self) -> bool:
        """It holds a scored table and its provenance (a finished or incomplete run)."""
        return self.results.is_file() and self.provenance.is_file()

    def create(self) -> "RunFolder":
        """Make the folder (or check an existing one): no link below it, a format this code reads,
        the format recorded once."""
        mkdir(self.root)
        refuse_links(self.root)  # nothing is written through a link planted in the run folder
        found = self.format()
        if found > FORMAT:
            raise BenchError(f"{self.format_record}: run folder format {found}; this checkout reads format "
                             f"{FORMAT} and older: update it, or give this run another results_dir")
        if not self.format_record.exists():
            write_text(self.format_record, json.dumps({"format": FORMAT}) + "\n")
        return self

    def format(self) -> int:
        if not self.format_record.is_file():
            return FORMAT
        try:
            return int(json.loads(self.format_record.read_text())["format"])
        except (ValueError, KeyError, TypeError):
            raise BenchError(f"{self.format_record}: not a run folder record ({{\"format\": N}})") from None

    def check_image(self, model: str, image: str, image_id: str) -> None:
        """Never mix results of two different images in one run folder; record the image."""
        record = self.image_record(model)
        if record.exists():
            previous = json.loads(record.read_text())
            if previous["image"] != image and self.result_files(model):
                raise BenchError(f"{record.parent} holds results of image {previous['image']}, but the model now "
                                 f"builds {image} (its Dockerfile, model.yaml or the code it runs changed). Remove "
                                 f"{record.parent} to relax again with the new image, or restore the old inputs.")
        write_text(record, json.dumps({"image": image, "image_id": image_id}) + "\n")

    def read_sharding(self) -> dict | None:
        return json.loads(self.sharding.read_text()) if self.sharding.exists() else None

    def write_sharding(self, record: dict) -> None:
        write_text(self.sharding, json.dumps(record) + "\n")

    def scored_with(self, key: str) -> bool:
        """Its table, provenance and report were written from exactly these inputs."""
        return (self.scored_key.is_file() and self.scored_key.read_text() == key and self.is_scored()
                and (self.report / "report.md").is_file())

    def read_provenance(self) -> dict:
        """provenance.json ({} where there is none; one that is not a JSON object: a one-line error)."""
        return read_provenance(self.provenance)

    def write_provenance(self, record: dict) -> None:
        write_text(self.provenance, json.dumps(record, indent=2, default=str) + "\n")

    def lock(self) -> "RunLock":
        return RunLock(self.root / ".lock")


def read_provenance(path: Path) -> dict:
    """A provenance.json (a run folder's or a bundle's) as a dict: {} when absent, a non-object
    kept under "value", a file that is not JSON a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_bytes().decode())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BenchError(f"{path}: not valid JSON ({exc})") from exc
    return data if isinstance(data, dict) else {"value": data}


def scored_folders(results_dir: Path) -> list[RunFolder]:
    """The run folders of a results folder that hold a scored table, by name."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        return []
    return [RunFolder(d) for d in sorted(results_dir.iterdir()) if d.is_dir() and RunFolder(d).results.is_file()]


class RunLock:
    """An exclusive lock on a run folder for one orchestrator; the kernel releases it when
    the process dies, however it dies."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __enter__(self) -> "RunLock":
        self.handle = open_append(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "another process"
            self.handle.close()
            raise BenchError(f"{self.path.parent}: another bench is running on this run folder ({holder}); "
                             "wait for it to finish, or give this one another results_dir") from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"pid {os.getpid()}\n")
        self.handle.flush()
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()
