"""The exceptions graceful raises for input it cannot use.

Every message is one line that names the offending value, so that a supervisor
that refuses to start says exactly what to fix.
"""

from __future__ import annotations


class GracefulError(Exception):
    """Base class of every error graceful raises on purpose."""


class ConfigError(GracefulError):
    """The service as written cannot be started: a bad listen spec, a port in use,
    an entry point that a fresh interpreter could not find, a missing guard.

    The supervisor reports it in one line and exits with status 2 before it has
    spawned anything.
    """


def one_line(exc: BaseException) -> str:
    """Describe an exception in one line: its type and the first line of its message
    (graceful's own errors are already one line and need no type)."""
    if isinstance(exc, GracefulError):
        return str(exc)
    if isinstance(exc, SyntaxError):
        where = f"{exc.filename}, line {exc.lineno}" if exc.filename else f"line {exc.lineno}"
        return f"SyntaxError: {exc.msg} ({where})"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
