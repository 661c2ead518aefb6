"""The one error type of the host side, caught once in the CLI."""


class BenchError(Exception):
    """A problem the user can fix; the message says what and where (file, key, structure)."""


class IncompleteRun(BenchError):
    """The run's results, report and provenance are written, but some structures have no
    result: the run must not look finished (its own exit code)."""
