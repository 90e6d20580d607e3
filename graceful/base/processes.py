"""Worker processes as the kernel sees them: exit notification, process groups, reaping.

Each worker runs in a process group of its own, whose number is the worker's PID.
Whatever the worker starts (a ``fork()``, a ``subprocess`` with inherited
descriptors, a helper daemon that does not call ``setsid()``) stays in that group,
so the supervisor can stop it with the worker.

A worker's exit is noticed through a pidfd, which becomes readable when the process
exits, whoever still holds its pipes. (multiprocess's ``sentinel`` is a pipe that
any child of the worker inherits, so it can stay open long after the worker has
gone.) Where pidfds are not available, the exit is polled with
``waitid(WNOWAIT)``, which does not reap.

Group numbers are only safe to signal while they cannot be reused. A group's
number is its leader's PID; the kernel does not reuse it while the leader is an
unreaped zombie or while any member is alive. The supervisor therefore signals a
worker's group before it reaps the worker, and afterwards only while members
remain.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal

#: How often an exit is polled for where pidfds are not available, in seconds.
EXIT_POLL_INTERVAL = 0.05


def open_pidfd(pid: int) -> int | None:
    """A pidfd for child ``pid`` (readable once it has exited), or None where the
    kernel or a sandbox refuses one."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None
    os.set_inheritable(fd, False)
    return fd


def has_exited(pid: int) -> bool:
    """True once child ``pid`` has exited, without reaping it."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def exit_status(pid: int) -> int | None:
    """Child ``pid``'s exit status, without reaping it: the exit code, or minus the
    signal that killed it; None while it runs (or if it is not a child)."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return None
    if info is None:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def leads_own_group(pid: int) -> bool:
    """True if ``pid`` (alive or an unreaped zombie) leads a process group of its own."""
    try:
        return os.getpgid(pid) == pid
    except OSError:
        return False


def signal_group(pgid: int, signum: int) -> bool:
    """Send ``signum`` to process group ``pgid``; False if the group is empty."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a member changed its user: it exists, but is not ours to signal
    return True


def group_members(pgid: int) -> list[int]:
    """PIDs of the live (not zombie) processes in process group ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                text = file.read()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def describe_pids(pids: list[int] | None) -> str:
    """``1 process (4242)``, ``2 processes (4242, 4243)``, or ``processes`` if unknown."""
    if pids is None:
        return "processes"
    listed = ", ".join(map(str, pids))
    return f"{len(pids)} process{'' if len(pids) == 1 else 'es'} ({listed})"


def stray_zombies(exclude: set[int | None]) -> list[int]:
    """This process's children that have exited (zombies), except ``exclude``."""
    found = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as children:
                pids = [int(pid) for pid in children.read().split()]
        except OSError:
            continue
        for pid in pids:
            if pid in exclude:
                continue
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    text = stat.read()
            except OSError:
                continue
            if text[text.rindex(")") + 2] == "Z":
                found.append(pid)
    return found


def reap_zombie(pid: int) -> None:
    """Reap ``pid`` if it is a child of this process that has exited."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def kill_group_or_process(pid: int) -> None:
    """SIGKILL ``pid`` and, if it leads its own process group, everything in it.

    Only for a child that has not been reaped yet (so that ``pid`` cannot have been
    reused)."""
    if leads_own_group(pid):
        signal_group(pid, signal.SIGKILL)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


#: prctl(2) option: orphaned descendants are re-parented to this process.
_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process a child subreaper: a descendant orphaned below it (such as
    a worker forked by a template that has exited) becomes its child, which it can
    reap. False where the kernel or the C library refuses."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


#: prctl(2) option: this thread's name, as ``/proc/PID/comm`` shows it.
_PR_SET_NAME = 15

#: Every worker's process name (``/proc/PID/comm``, at most 15 bytes), however it
#: was started; templates and standbys have names of their own.
WORKER_NAME = "graceful-worker"


def set_name(name: str) -> None:
    """Name this process (``/proc/PID/comm``, ``ps -o comm``, 15 bytes at most), so
    that tools can tell a worker from a template or a standby. Silently does
    nothing where the C library refuses."""
    _prctl(_PR_SET_NAME, name.encode()[:15])


def _prctl(option: int, argument: int | bytes) -> bool:
    """``prctl(option, argument)``; False where it fails or the C library has none."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(option, argument, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False
