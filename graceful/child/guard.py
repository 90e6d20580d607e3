"""The orphan guard's program: run as ``python -I -S`` with the path of this file,
it imports nothing but the standard library (the concept: :mod:`graceful.spawn.guard`)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass


class _Worker:
    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self.pidfd = pidfd
        #: when it was seen to exit (boot-time clock ticks), or None while alive
        self.exited_at: int | None = None


def _run_guard(channel: socket.socket, drain_timeout: float, kill_grace: float) -> None:
    for ignored in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGTTIN, signal.SIGTTOU):
        signal.signal(ignored, signal.SIG_IGN)
    alive: dict[int, _Worker] = {}  # by pidfd
    exited: list[_Worker] = []  # while the supervisor may still be sweeping their groups
    while True:
        poller = select.poll()
        poller.register(channel, select.POLLIN)
        for pidfd in alive:
            poller.register(pidfd, select.POLLIN)
        ready = {fd for fd, _ in poller.poll(int(kill_grace * 1000) + 1000)}
        now = _ticks()
        for pidfd in ready & alive.keys():
            worker = alive.pop(pidfd)
            worker.exited_at = now
            os.close(pidfd)
            exited.append(worker)
        horizon = now - int((kill_grace + 1) * _TICKS_PER_SECOND)
        exited = [worker for worker in exited if worker.exited_at and worker.exited_at > horizon]
        if channel.fileno() in ready:
            try:
                data, fds, _, _ = socket.recv_fds(channel, 32, 1)
            except OSError:
                data, fds = b"", []
            if not data:
                break  # the supervisor is gone
            for pidfd in fds:
                alive[pidfd] = _Worker(int(data), pidfd)
    _outlive_the_supervisor(list(alive.values()), exited, drain_timeout, kill_grace)


def _outlive_the_supervisor(
    alive: list[_Worker], exited: list[_Worker], drain_timeout: float, kill_grace: float
) -> None:
    deadline = time.monotonic() + drain_timeout + kill_grace
    sweeps: list[tuple[float, list[int]]] = []  # (when to SIGKILL, pidfds of leftovers)
    for worker in exited:
        _add_sweep(sweeps, _start_sweep(worker, kill_grace))
    while alive or sweeps:
        poller = select.poll()
        for worker in alive:
            poller.register(worker.pidfd, select.POLLIN)
        wait = min([deadline, *(when for when, _ in sweeps)]) - time.monotonic()
        # (poll takes at most a C int of milliseconds: a drain_timeout of weeks is
        # waited for in steps)
        ready = {fd for fd, _ in poller.poll(min(max(0, int(wait * 1000)) + 1, _MOST_MS))}
        now = time.monotonic()
        for worker in list(alive):
            if worker.pidfd in ready:
                worker.exited_at = _ticks()
                alive.remove(worker)
                _add_sweep(sweeps, _start_sweep(worker, kill_grace))
                os.close(worker.pidfd)
            elif now >= deadline:
                _say(
                    f"the supervisor is gone and worker {worker.pid} did not exit within "
                    f"{drain_timeout + kill_grace:g}s; killing it"
                )
                if _leads_group(worker.pid):  # alive: the number is its own
                    _signal_group(worker.pid, signal.SIGKILL)
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(worker.pidfd, signal.SIGKILL)
                alive.remove(worker)
                os.close(worker.pidfd)
        for sweep in list(sweeps):
            when, pidfds = sweep
            if now >= when or not any(_is_alive(pidfd) for pidfd in pidfds):
                for pidfd in pidfds:
                    if _is_alive(pidfd):
                        _say("a worker left processes behind; killing them")
                        with contextlib.suppress(OSError):
                            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                    os.close(pidfd)
                sweeps.remove(sweep)


def _add_sweep(sweeps: list[tuple[float, list[int]]], sweep: tuple[float, list[int]]) -> None:
    """Keep ``sweep`` if it has anything to sweep: an empty one would only make the
    guard wait ``kill_grace`` for nothing (and the supervisor's stop with it)."""
    if sweep[1]:
        sweeps.append(sweep)


def _start_sweep(worker: _Worker, kill_grace: float) -> tuple[float, list[int]]:
    """SIGTERM what ``worker`` (exited) left in its process group."""
    pidfds = _leftovers(worker.pid, worker.exited_at or _ticks())
    for pidfd in pidfds:
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(pidfd, signal.SIGTERM)
    return time.monotonic() + kill_grace, pidfds


def _leftovers(pgid: int, exited_at: int) -> list[int]:
    """Pidfds for the live members of group ``pgid`` that started before ``exited_at``
    (boot-time clock ticks): what the worker left, never a process that reused the
    number later."""
    pidfds = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        identity = _identity(int(entry))
        if identity is None or identity[0] != pgid or identity[1] >= exited_at:
            continue
        pidfd = pidfd_of(int(entry))
        if pidfd is None:
            continue
        if _identity(int(entry)) != identity:  # not the process listed any more
            os.close(pidfd)
            continue
        pidfds.append(pidfd)
    return pidfds


def _identity(pid: int) -> tuple[int, int] | None:
    """Process group and start time (boot-time clock ticks) of live process ``pid``."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            text = file.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[2]), int(fields[19])


_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")

#: The longest wait ``poll()`` takes, in milliseconds (a C int).
_MOST_MS = 2**31 - 1


def _ticks() -> int:
    """Now, on the clock /proc's start times use (boot time, in clock ticks)."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * _TICKS_PER_SECOND)


def _is_alive(pidfd: int) -> bool:
    return not select.select([pidfd], [], [], 0)[0]


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except OSError:
        return False


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pgid, signum)


def _say(text: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, f"graceful[{os.getpid()}] orphan guard: ERROR {text}\n".encode())


def pidfd_of(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


if __name__ == "__main__":
    _run_guard(socket.socket(fileno=0), float(sys.argv[1]), float(sys.argv[2]))
