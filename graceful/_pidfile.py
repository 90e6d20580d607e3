"""The PID file: where ``graceful reload`` and ``graceful stop`` find the supervisor.

Written atomically (a temporary file in the same directory, then a rename) once
the first generation is ready, so that a reader never sees a partial file and a
PID file always names a supervisor that was serving. Removed at exit, but only
while it still holds this process's PID.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

from ._errors import ConfigError, GracefulError


def check_pid_file_location(path: str | os.PathLike[str]) -> None:
    """Refuse, before anything starts, a PID file that could never be written.

    Raises:
        ConfigError: if the directory is missing or not writable, or ``path`` is a
            directory.
    """
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ConfigError(f"--pid-file {os.fspath(path)!r} is a directory")
    if not os.path.isdir(directory):
        raise ConfigError(f"--pid-file {os.fspath(path)!r}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise ConfigError(f"--pid-file {os.fspath(path)!r}: directory {directory} is not writable")


def write_pid_file(path: str | os.PathLike[str]) -> None:
    """Write this process's PID to ``path`` atomically."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, staged = tempfile.mkstemp(prefix=".graceful-pid-", dir=directory)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(f"{os.getpid()}\n")
        os.chmod(staged, 0o644)
        os.replace(staged, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(staged)
        raise


def remove_pid_file(path: str | os.PathLike[str]) -> None:
    """Remove ``path`` if it still names this process."""
    with contextlib.suppress(OSError, ValueError):
        if read_pid(path) == os.getpid():
            os.unlink(path)


def read_pid(path: str | os.PathLike[str]) -> int:
    """The PID in ``path``.

    Raises:
        GracefulError: if the file is missing or does not hold a PID (one line).
    """
    try:
        with open(path) as file:
            text = file.read().strip()
    except FileNotFoundError:
        raise GracefulError(
            f"no PID file at {os.fspath(path)!r}: is the service running?"
        ) from None
    except OSError as exc:
        raise GracefulError(f"cannot read PID file {os.fspath(path)!r}: {exc.strerror}") from None
    if not text.isascii() or not text.isdigit() or int(text) <= 0:
        raise GracefulError(f"PID file {os.fspath(path)!r} does not hold a PID: {text[:40]!r}")
    return int(text)
