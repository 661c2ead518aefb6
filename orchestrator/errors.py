"""The one error type of the host side, caught once in the CLI."""


class BenchError(Exception):
    """A problem the user can fix; the message says what and where (file, key, structure)."""
