"""The PID file: where ``graceful reload`` and ``graceful stop`` find the supervisor.

The file holds the supervisor's PID and a newline, nothing else, so that
``kill -HUP "$(cat app.pid)"`` keeps working. What makes it trustworthy is a lock:
the supervisor holds a POSIX record lock (``fcntl(F_SETLK)``) on the file for as
long as it runs, and the kernel drops the lock when the process dies, however it
dies. A client asks the kernel who holds the lock (``F_GETLK``) and signals only if
that process is the PID the file names. A file someone else wrote, a stale file
whose PID now belongs to an unrelated process, a device or a FIFO: none of them is
held by the process it names, so none of them gets a signal.

The supervisor claims the path before it binds anything: a path it could not
replace later (another user's file in a sticky directory such as ``/tmp``, a live
supervisor's file, a file that is not a PID file) makes it refuse to start. It
writes and locks a hidden staged file in the same directory, and renames it into
place once the first generation is ready, so that a PID file always names a
supervisor that was serving. At exit it removes the file only if it is still the
one it locked.

POSIX locks vanish when their owner closes *any* descriptor of the file, so the
supervisor never opens its PID file a second time.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import stat
import struct
import tempfile

from ._errors import ConfigError, GracefulError

#: A PID file is read up to this many bytes; a PID has at most 7 digits on Linux.
_MAX_PID_FILE_BYTES = 64
#: PID_MAX_LIMIT on 64-bit Linux.
_PID_MAX = 4_194_304
#: ``struct flock`` on Linux: l_type, l_whence, l_start, l_len, l_pid (and padding).
_FLOCK = struct.Struct("hhqqi4x")


class PidFile:
    """The supervisor's PID file, claimed at start and published once it serves."""

    def __init__(self, path: str, directory: str, fd: int, staged: str) -> None:
        self.path = path
        self._directory = directory
        self._fd: int | None = fd
        self._staged: str | None = staged

    @classmethod
    def claim(cls, path: str | os.PathLike[str]) -> PidFile:
        """Check that ``path`` can become this supervisor's PID file, and stage it.

        A stale PID file (one that no running supervisor holds) is removed now.

        Raises:
            ConfigError: the directory is missing or not writable, ``path`` is a
                directory or not a PID file, a running supervisor holds it, or it is
                another user's file that this user may not replace.
        """
        text = os.fspath(path)
        absolute = os.path.abspath(text)
        directory = os.path.dirname(absolute)
        if os.path.isdir(absolute):
            raise ConfigError(f"--pid-file {text!r} is a directory")
        if not os.path.isdir(directory):
            raise ConfigError(f"--pid-file {text!r}: directory {directory} does not exist")
        if not os.access(directory, os.W_OK):
            raise ConfigError(f"--pid-file {text!r}: directory {directory} is not writable")
        _remove_stale(text, absolute)
        try:
            fd, staged = tempfile.mkstemp(prefix=".graceful-pid-", dir=directory)
        except OSError as exc:
            raise ConfigError(
                f"--pid-file {text!r}: cannot write in {directory}: {exc.strerror}"
            ) from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, f"{os.getpid()}\n".encode())
            os.fchmod(fd, 0o644)
            os.set_inheritable(fd, False)
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(staged)
            raise ConfigError(f"--pid-file {text!r}: cannot prepare it: {exc.strerror}") from None
        return cls(absolute, directory, fd, staged)

    def publish(self) -> None:
        """Move the staged file into place (atomically).

        Raises:
            GracefulError: if it cannot (someone put a file there meanwhile that this
                user may not replace, say).
        """
        if self._staged is None:
            return
        try:
            os.replace(self._staged, self.path)
        except OSError as exc:
            raise GracefulError(f"cannot write PID file {self.path}: {exc.strerror}") from None
        self._staged = None

    def release(self) -> None:
        """Remove the PID file (or the staged one) if it is still the one this process
        locked, and drop the lock."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            mine = os.fstat(self._fd)
            path = self._staged or self.path
            there = os.lstat(path)
            if (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino):
                os.unlink(path)
        os.close(self._fd)
        self._fd = None


def _remove_stale(text: str, path: str) -> None:
    """Make room at ``path``: nothing there, or a stale PID file, which is removed.

    Raises:
        ConfigError: for anything else at ``path``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(
                f"--pid-file {text!r} is a symbolic link; refusing to use it"
            ) from None
        raise ConfigError(f"--pid-file {text!r}: cannot read it: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"--pid-file {text!r} is not a regular file")
        if _parse_pid(os.read(fd, _MAX_PID_FILE_BYTES)) is None:
            raise ConfigError(
                f"--pid-file {text!r} exists and does not hold a PID; graceful never overwrites it"
            )
        holder = lock_holder(fd)
    finally:
        os.close(fd)
    if holder is not None:
        raise ConfigError(f"--pid-file {text!r} belongs to a running supervisor (PID {holder})")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError(
            f"--pid-file {text!r}: cannot replace the stale PID file there (owned by uid "
            f"{st.st_uid}): {exc.strerror}"
        ) from None


def _parse_pid(data: bytes) -> int | None:
    text = data.strip()
    if not text or len(text) > 7 or not text.isdigit():
        return None
    pid = int(text)
    return pid if 0 < pid <= _PID_MAX else None


def lock_holder(fd: int) -> int | None:
    """The PID of the process holding a POSIX lock on the file open as ``fd``, or None."""
    query = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
    lock_type, _, _, _, pid = _FLOCK.unpack(answer)
    return None if lock_type == fcntl.F_UNLCK else int(pid)


def supervisor_pidfd(path: str | os.PathLike[str]) -> tuple[int, int | None]:
    """The PID that the PID file at ``path`` names, and a pidfd for it (None where
    pidfds are unavailable), after checking that this process is the graceful
    supervisor holding the file.

    Signal through the pidfd (``signal.pidfd_send_signal``): it cannot reach another
    process even if the supervisor exits meanwhile and its PID is reused.

    Raises:
        GracefulError: one line, for a missing or unreadable file, a file that is not
            a regular file or holds no PID, a PID no process has, or a process that
            is not the supervisor holding the file.
    """
    text = os.fspath(path)
    try:
        fd = os.open(text, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise GracefulError(f"no PID file at {text!r}: is the service running?") from None
    except OSError as exc:
        raise GracefulError(f"cannot read PID file {text!r}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise GracefulError(f"PID file {text!r} is not a regular file")
        data = os.read(fd, _MAX_PID_FILE_BYTES)
        pid = _parse_pid(data)
        if pid is None:
            raise GracefulError(f"PID file {text!r} does not hold a PID: {data[:40]!r}")
        pidfd = _open_pidfd(pid, text)
        holder = lock_holder(fd)
    finally:
        os.close(fd)
    if holder != pid:
        if pidfd is not None:
            os.close(pidfd)
        held = "no supervisor holds the file" if holder is None else f"PID {holder} holds it"
        raise GracefulError(
            f"process {pid} is not a graceful supervisor ({held}): refusing to signal it "
            f"(stale PID file {text!r}?)"
        )
    return pid, pidfd


def _open_pidfd(pid: int, path: str) -> int | None:
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        raise GracefulError(f"no process {pid} (stale PID file {path!r})") from None
    except (AttributeError, OSError):
        pass  # no pidfds here: fall back to the PID, checked to exist
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise GracefulError(f"no process {pid} (stale PID file {path!r})") from None
    except PermissionError:
        pass
    return None


def signal_supervisor(path: str | os.PathLike[str], signum: signal.Signals) -> int:
    """Send ``signum`` to the supervisor named by the PID file at ``path``; return its PID.

    Raises:
        GracefulError: see :func:`supervisor_pidfd`, or if the signal is not allowed.
    """
    pid, pidfd = supervisor_pidfd(path)
    try:
        if pidfd is None:
            os.kill(pid, signum)
        else:
            signal.pidfd_send_signal(pidfd, signum)
    except ProcessLookupError:
        raise GracefulError(f"process {pid} exited (stale PID file {os.fspath(path)!r})") from None
    except PermissionError:
        raise GracefulError(
            f"not allowed to signal process {pid} from {os.fspath(path)!r}"
        ) from None
    finally:
        if pidfd is not None:
            os.close(pidfd)
    return pid
