"""Writing into a run folder (and a results folder) without ever following a link.

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

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from orchestrator.errors import BenchError

MODE = 0o644


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
