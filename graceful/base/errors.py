"""The exceptions graceful raises for input it cannot use.

Every message is one line that names the offending value, so that a supervisor
that refuses to start says exactly what to fix.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sysconfig
import traceback
from collections.abc import Sequence


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
    """``file, line N`` where ``exc`` was raised, as its author would look for it: the
    innermost frame of its traceback in the application's own code (not the
    standard library's, an installed package's, or graceful's), else the innermost
    one outside Python's import machinery; None if there is none."""
    frames = traceback.extract_tb(exc.__traceback__)
    known = [frame for frame in frames if not frame.filename.startswith("<")]
    own = [frame for frame in known if not _is_library(frame.filename)]
    others = [frame for frame in known if not _is_graceful(frame.filename)]
    chosen = (own or others)[-1:]
    if not chosen:
        return None
    return f"{shown_path(chosen[0].filename)}, line {chosen[0].lineno}"


def _is_library(path: str) -> bool:
    """True for a file of the standard library, an installed package, or graceful."""
    return _is_graceful(path) or any(
        path.startswith(directory + os.sep) for directory in _library_directories()
    )


def _is_graceful(path: str) -> bool:
    return path.startswith(os.path.dirname(os.path.abspath(__file__)) + os.sep)


@functools.cache
def _library_directories() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return tuple(
        {os.path.abspath(paths[name]) for name in ("stdlib", "platstdlib", "purelib", "platlib")}
    )


def shown_path(path: str) -> str:
    """``path`` relative to the working directory when it lies below it."""
    with contextlib.suppress(ValueError, OSError):
        relative = os.path.relpath(path)
        if not relative.startswith(os.pardir):
            return relative
    return path


def name_some(items: Sequence[object], most: int = 3, *, longest: int = 200) -> str:
    """``items`` for one log line: the first ``most``, each cut to ``longest``
    characters, then "and N more"."""
    named = [_cut(str(item), longest) for item in items[:most]]
    text = ", ".join(named)
    if len(items) > most:
        text += f" and {len(items) - most} more"
    return text


def _cut(text: str, longest: int) -> str:
    return text if len(text) <= longest else text[: longest - 3] + "..."
