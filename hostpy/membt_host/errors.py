"""The one exception type membt-host raises on purpose; the CLI prints it as one line."""


class MembtError(Exception):
    """A user-facing failure: bad input path, unreachable source, unwritable report."""
