"""N busy processes beside a measurement (`--load N` of make perf and make perf-engine): a
loaded machine, as a shared CI runner or a workstation doing something else is."""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager


@contextmanager
def busy(processes: int):
    """Run `processes` Python loops that never sleep for the duration of the block."""
    spinning = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield
    finally:
        for process in spinning:
            process.kill()
            process.wait()


def quiet_and_loaded(measure, processes: int) -> tuple:
    """measure() on a quiet machine, then with `processes` busy ones beside it (None
    when processes is 0): (quiet result, loaded result)."""
    quiet = measure()
    if not processes:
        return quiet, None
    with busy(processes):
        return quiet, measure()
