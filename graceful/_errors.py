"""The exceptions graceful raises for input it cannot use.

Every message is one line that names the offending value, so that a supervisor
that refuses to start says exactly what to fix.
"""

from __future__ import annotations

import contextlib
import os


class GracefulError(Exception):
    """Base class of every error graceful raises on purpose."""


class ConfigError(GracefulError):
    """The service as written cannot be started: a bad listen spec, a port in use,
    an entry point that a fresh interpreter could not find, a missing guard.

    The supervisor reports it in one line and exits with status 2 before it has
    spawned anything.
    """


def one_line(exc: BaseException, *, where: bool = False) -> str:
    """Describe an exception in one line: its type and the first line of its message
    (graceful's own errors are already one line and need no type). With ``where``,
    add the file and line it was raised at, as ``(app.py, line 3)``: the innermost
    frame of its traceback, its path relative to the working directory when it lies
    below it."""
    if isinstance(exc, GracefulError):
        return str(exc)
    if isinstance(exc, SyntaxError):
        place = f"line {exc.lineno}"
        if exc.filename:
            place = f"{shown_path(exc.filename)}, {place}"
        return f"SyntaxError: {exc.msg} ({place})"
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    if where:
        location = raised_at(exc)
        if location is not None:
            line += f" ({location})"
    return line


def raised_at(exc: BaseException) -> str | None:
    """``file, line N`` of the innermost frame of ``exc``'s traceback, or None."""
    tb = exc.__traceback__
    if tb is None:
        return None
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f"{shown_path(tb.tb_frame.f_code.co_filename)}, line {tb.tb_lineno}"


def shown_path(path: str) -> str:
    """``path`` relative to the working directory when it lies below it."""
    with contextlib.suppress(ValueError, OSError):
        relative = os.path.relpath(path)
        if not relative.startswith(os.pardir):
            return relative
    return path
