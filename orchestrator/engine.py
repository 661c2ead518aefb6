"""The Docker engine connection and the console every command writes to."""

from __future__ import annotations

from rich.console import Console

from orchestrator.errors import BenchError

# stderr: stdout carries only results (the run folder, paths) for scripts. Messages are never
# broken at the console's width: a path or an id stays whole in a log, a pipe or a terminal.
console = Console(stderr=True, soft_wrap=True)


def docker_client():
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # the SDK raises several types for "no engine"
        raise BenchError(f"cannot reach the Docker engine ({exc}); start it (e.g. `dockerd &` or "
                         "`systemctl start docker`) and check that this user may use it") from None
    return client


def engine_lost(exc: BaseException) -> bool:
    """An error of the connection to the Docker engine (the SDK's requests errors are
    OSErrors too, and must not read as a full disk)."""
    import requests

    return isinstance(exc, requests.exceptions.RequestException)


def show_table(title: str, columns: list[str], rows: list[list[str]], file=None, right: tuple[str, ...] = ()) -> None:
    """A table for people: drawn by rich on a terminal; elsewhere (a pipe, a file, CI's log)
    plain aligned text with every cell whole, so `| grep NAME` finds each name. `file`:
    the stream (default the console's, stderr); columns in `right` are right-aligned."""
    import sys

    from rich.console import Console
    from rich.table import Table

    out = console if file is None else Console(file=file)
    if out.is_terminal:
        table = Table(title=title)
        for column in columns:
            table.add_column(column, justify="right" if column in right else "left", overflow="fold")
        for row in rows:
            table.add_row(*row)
        out.print(table)
        return
    widths = [max([len(column), *(len(row[k]) for row in rows)]) for k, column in enumerate(columns)]
    lines = [title, "  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(cell.rjust(w) if column in right else cell.ljust(w)
                        for cell, w, column in zip(row, widths, columns)).rstrip() for row in rows]
    (file or sys.stderr).write("\n".join(lines) + "\n")
