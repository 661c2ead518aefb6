"""Progress of a run's relaxations, read from the result lines as the workers write them."""

from __future__ import annotations

import json

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from adapters.wire import without_torn_line
from orchestrator.console import console
from orchestrator.runfolder import RunFolder
from orchestrator.shards import complete_lines


class ResultsProgress:
    """Counts finished and failed structures per model by tailing the result files."""

    def __init__(self, folder: RunFolder, totals: dict[str, int]):
        self.folder = folder
        self.offsets: dict = {}
        self.done = {m: 0 for m in totals}
        self.failed = {m: 0 for m in totals}
        self.progress = Progress(TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("failed {task.fields[failed]}"), TextColumn("{task.fields[rate]}"),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=console)
        self.tasks = {m: self.progress.add_task(m, total=t, failed=0, rate="") for m, t in totals.items()}

    def update(self) -> None:
        for model, task in self.tasks.items():
            for path in self.folder.result_files(model):
                with path.open("rb") as handle:
                    handle.seek(self.offsets.get(path, 0))
                    chunk = handle.read()
                self.offsets[path] = self.offsets.get(path, 0) + len(without_torn_line(chunk))
                for line in complete_lines(chunk):
                    self.done[model] += 1
                    self.failed[model] += bool(json.loads(line).get("failure_reason"))
            speed = self.progress.tasks[task].speed
            self.progress.update(task, completed=self.done[model], failed=self.failed[model],
                                 rate=f"{speed:.2f}/s" if speed else "")
