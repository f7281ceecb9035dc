"""membt-host: read membt dumps, symbolize them, tell growing leaks from caches."""

__version__ = "0.1.0"
