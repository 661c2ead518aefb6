"""The console every command writes to, and its tables."""

from __future__ import annotations

from rich.console import Console

# stderr: stdout carries only results (the run folder, paths) for scripts. Messages are never
# broken at the console's width: a path or an id stays whole in a log, a pipe or a terminal.
console = Console(stderr=True, soft_wrap=True)


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
