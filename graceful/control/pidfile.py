"""The PID file: where ``graceful reload`` and ``graceful stop`` find the supervisor.

The file holds the supervisor's PID and a newline, nothing else, so that
``kill -HUP "$(cat app.pid)"`` keeps working. What makes it trustworthy is a lock:
the supervisor holds a POSIX record lock (``fcntl(F_SETLK)``) on one byte of the
file, at an offset of its own (:data:`MARK_OFFSET`, which no ordinary file
reaches), for as long as it runs; the kernel drops the lock when the process dies,
however it dies. A client asks the kernel who holds that byte and the next one
(``F_GETLK``) and signals only if the process holding the mark, and nothing
beyond it, is the PID the file names. A file someone else wrote, another
program's PID file (locked whole, so the byte after the mark is held too), a stale
file whose PID now belongs to an unrelated process, a device or a FIFO: none of
them passes, so none of them gets a signal.

The supervisor claims the path before it binds anything: it refuses to start if
the path is held by a running supervisor (or one still starting), names a live
process that is not a graceful supervisor, is not a regular file holding a PID, or
cannot be replaced (another user's file in a sticky directory such as ``/tmp``). A
stale PID file is removed. The supervisor writes and marks a hidden staged file
beside it (``.NAME.graceful-staged``), and renames it into place once the first
generation is ready, so that a PID file always names a supervisor that was
serving. At exit it removes the file only if it is still the one it marked.

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

from graceful.base.errors import ConfigError, GracefulError

#: A PID file is read up to this many bytes; a PID has at most 7 digits on Linux.
_MAX_PID_FILE_BYTES = 64
#: PID_MAX_LIMIT on 64-bit Linux.
_PID_MAX = 4_194_304
#: ``struct flock`` on Linux: l_type, l_whence, l_start, l_len, l_pid (and padding).
_FLOCK = struct.Struct("hhqqi4x")
#: The byte of the PID file whose lock marks a graceful supervisor ("grace" in ASCII).
MARK_OFFSET = 0x6772616365


class PidFile:
    """The supervisor's PID file, claimed at start and published once it serves."""

    def __init__(self, path: str, fd: int, staged: str) -> None:
        self.path = path
        self._fd: int | None = fd
        self._staged: str | None = staged
        #: the PID file's directory, held open: the file is replaced and removed
        #: there even if the directory is renamed meanwhile
        self._dir_fd: int | None = open_directory(os.path.dirname(path))

    @classmethod
    def claim(cls, path: str | os.PathLike[str]) -> PidFile:
        """Check that ``path`` can become this supervisor's PID file, and stage it.

        A stale PID file (one that names no live process) is removed now, and so is
        a staged file that a killed supervisor left.

        Raises:
            ConfigError: see the module docstring; one line naming the path.
        """
        text = os.fspath(path)
        absolute = os.path.abspath(text)
        directory, name = os.path.split(absolute)
        if os.path.isdir(absolute):
            raise ConfigError(f"--pid-file {text!r} is a directory")
        if not os.path.isdir(directory):
            raise ConfigError(f"--pid-file {text!r}: directory {directory} does not exist")
        if not os.access(directory, os.W_OK):
            raise ConfigError(f"--pid-file {text!r}: directory {directory} is not writable")
        _make_room(text, absolute)
        staged = os.path.join(directory, f".{name}.graceful-staged")
        fd = _stage(text, directory, staged)
        return cls(absolute, fd, staged)

    @classmethod
    def succeed(cls, path: str | os.PathLike[str]) -> PidFile:
        """For a successor supervisor (``graceful upgrade``): stage a marked file that
        :meth:`publish` puts in place of the running supervisor's, which holds
        ``path`` meanwhile.

        Raises:
            ConfigError: as :meth:`claim`, for what cannot be staged.
        """
        text = os.fspath(path)
        absolute = os.path.abspath(text)
        staged = cls.successor_staged(absolute)
        return cls(absolute, _stage(text, os.path.dirname(absolute), staged), staged)

    @staticmethod
    def successor_staged(path: str | os.PathLike[str]) -> str:
        """Where a successor of the supervisor of ``path`` stages its PID file."""
        directory, name = os.path.split(os.path.abspath(os.fspath(path)))
        return os.path.join(directory, f".{name}.graceful-successor")

    def remove_stale_successor_file(self) -> None:
        """Remove the staged file a successor that died before taking over left (if
        nobody marks it: a live one's is left alone)."""
        with contextlib.suppress(ConfigError):
            _remove_stale_staged(self.path, self.successor_staged(self.path))

    def reclaim(self) -> None:
        """Put a newly marked file of this process in place again, after a successor
        replaced it and gave the service back (an upgrade rolled back).

        Raises:
            GracefulError: if it cannot be staged or put in place.
        """
        if self._fd is None:
            return
        directory, name = os.path.split(self.path)
        staged = os.path.join(directory, f".{name}.graceful-staged")
        try:
            fd = _stage(self.path, directory, staged)
        except ConfigError as exc:
            raise GracefulError(str(exc)) from None
        os.close(self._fd)  # the lock on the replaced file, which nobody reads
        self._fd, self._staged = fd, staged
        self.publish()

    def _named(self, path: str) -> str:
        """``path`` as named through the directory descriptor (the path itself
        without one)."""
        return os.path.basename(path) if self._dir_fd is not None else path

    def publish(self) -> None:
        """Move the staged file into place (atomically).

        Raises:
            GracefulError: if it cannot (someone put a file there meanwhile that this
                user may not replace, say).
        """
        if self._staged is None or self._fd is None:
            return
        try:
            staged, name = self._named(self._staged), self._named(self.path)
            mine = os.fstat(self._fd)
            there = os.lstat(staged, dir_fd=self._dir_fd)
            if (mine.st_dev, mine.st_ino) != (there.st_dev, there.st_ino):
                raise GracefulError(
                    f"cannot write PID file {self.path}: its staged file was replaced"
                )
            os.replace(staged, name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        except OSError as exc:
            raise GracefulError(f"cannot write PID file {self.path}: {exc.strerror}") from None
        self._staged = None

    def release(self) -> None:
        """Remove the PID file (or the staged one) if it is still the one this process
        marked, and drop the mark."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            mine = os.fstat(self._fd)
            name = self._named(self._staged or self.path)
            there = os.lstat(name, dir_fd=self._dir_fd)
            if (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino):
                os.unlink(name, dir_fd=self._dir_fd)
        os.close(self._fd)
        self._fd = None
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None


def open_directory(directory: str) -> int | None:
    """A descriptor of ``directory`` to name files in it by (``dir_fd=``) whatever it
    is called later; None if it cannot be opened (the path is used then)."""
    try:
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None


def _stage(text: str, directory: str, staged: str) -> int:
    """Create the staged file, already marked and holding this PID, under its name.

    The file is written and marked under a random name first, then linked to the
    staged name: another supervisor never sees the staged name unmarked. A staged
    file a killed supervisor left (unmarked) is removed.

    Raises:
        ConfigError: if another supervisor is starting with the same PID file, or
            the directory cannot be written.
    """
    try:
        fd, scratch = tempfile.mkstemp(prefix=".graceful-pid-", dir=directory)
    except OSError as exc:
        raise ConfigError(
            f"--pid-file {text!r}: cannot write in {directory}: {exc.strerror}"
        ) from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, MARK_OFFSET, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fchmod(fd, 0o644)
        for _ in range(2):
            try:
                os.link(scratch, staged)
                return fd
            except FileExistsError:
                _remove_stale_staged(text, staged)
        raise ConfigError(f"--pid-file {text!r}: {staged} keeps reappearing")
    except OSError as exc:
        os.close(fd)
        raise ConfigError(f"--pid-file {text!r}: cannot prepare it: {exc.strerror}") from None
    except BaseException:
        os.close(fd)
        raise
    finally:
        with contextlib.suppress(OSError):
            os.unlink(scratch)


def _remove_stale_staged(text: str, staged: str) -> None:
    """Remove a staged file nobody marks (a killed supervisor's).

    Raises:
        ConfigError: if a live supervisor marks it, or it may not be removed.
    """
    try:
        fd = os.open(staged, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"--pid-file {text!r}: cannot read {staged}: {exc.strerror}") from None
    try:
        holder = graceful_holder(fd)
        owner = os.fstat(fd).st_uid
    finally:
        os.close(fd)
    if holder is not None:
        raise ConfigError(
            f"--pid-file {text!r}: another supervisor (PID {holder}) is starting with this PID file"
        )
    try:
        os.unlink(staged)  # left by a supervisor that was killed while starting
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError(
            f"--pid-file {text!r}: cannot remove the stale {staged} (owned by uid {owner}): "
            f"{exc.strerror}"
        ) from None


def _make_room(text: str, path: str) -> None:
    """Make room at ``path``: nothing there, or a stale PID file, which is removed.

    Raises:
        ConfigError: for anything else at ``path``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_NOFOLLOW | os.O_CLOEXEC)
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
        pid = _parse_pid(os.read(fd, _MAX_PID_FILE_BYTES))
        if pid is None:
            raise ConfigError(
                f"--pid-file {text!r} exists and does not hold a PID; graceful never overwrites it"
            )
        holder = graceful_holder(fd)
    finally:
        os.close(fd)
    if holder is not None:
        raise ConfigError(f"--pid-file {text!r} belongs to a running supervisor (PID {holder})")
    if pid != os.getpid() and _is_alive(pid):
        raise ConfigError(
            f"--pid-file {text!r} names process {pid}, which is running and is not a graceful "
            "supervisor; if the file is stale, remove it"
        )
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError(
            f"--pid-file {text!r}: cannot replace the stale PID file there (owned by uid "
            f"{st.st_uid}): {exc.strerror}"
        ) from None


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _parse_pid(data: bytes) -> int | None:
    text = data.strip()
    if not text or len(text) > 7 or not text.isdigit():
        return None
    pid = int(text)
    return pid if 0 < pid <= _PID_MAX else None


def _lock_holder(fd: int, start: int) -> int | None:
    """The PID of the process holding a POSIX lock on byte ``start`` of ``fd``'s file."""
    query = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, start, 1, 0)
    answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
    lock_type, _, _, _, pid = _FLOCK.unpack(answer)
    return None if lock_type == fcntl.F_UNLCK else int(pid)


def graceful_holder(fd: int) -> int | None:
    """The PID of the graceful supervisor that marked the file open as ``fd`` (see the
    module docstring), or None."""
    holder = _lock_holder(fd, MARK_OFFSET)
    if holder is None or _lock_holder(fd, MARK_OFFSET + 1) == holder:
        return None  # unmarked, or locked whole by some other program
    return holder


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
        holder = graceful_holder(fd)
        if holder is not None and holder != pid and _innermost_pid(holder) == pid:
            # written in another PID namespace (a container's PID 1, seen from the
            # host): the kernel names the lock's holder as this process sees it
            pid = holder
        pidfd = _open_pidfd(pid, text)
    finally:
        os.close(fd)
    if holder != pid:
        if pidfd is not None:
            os.close(pidfd)
        held = (
            "no graceful supervisor holds the file"
            if holder is None
            else f"the supervisor holding it is PID {holder}"
        )
        raise GracefulError(
            f"process {pid} is not a graceful supervisor ({held}): refusing to signal it "
            f"(stale PID file {text!r}?)"
        )
    return pid, pidfd


def _innermost_pid(pid: int) -> int | None:
    """Process ``pid`` (as this process sees it) as its own PID namespace sees it:
    the last number of the ``NSpid`` line of ``/proc/PID/status``; None if unknown."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError, IndexError):
        pass
    return None


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
