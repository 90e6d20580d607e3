"""What happens to the workers of a supervisor that dies: the orphan guard.

Normally a worker hears of its supervisor's death within milliseconds (its control
channel reaches end-of-file), stops accepting, drains, and exits. Two things can
defeat that: an event loop that never runs again (a handler stuck in a blocking
call, or in C code that holds the GIL, where not even another thread of the worker
can run), and the processes a worker started, which no supervisor is left to stop
when the worker exits.

So each supervisor starts one guard: a small separate interpreter (``python -I -S``
running this file, which imports nothing but the standard library; about 6 MB). It
holds none of the service's descriptors and sits in a process group of its own.
The supervisor hands it a pidfd for each worker it starts, over a socket pair
(:class:`OrphanGuard`). The guard waits for that socket to reach end-of-file:

* after a clean stop every worker has exited and been reaped: the guard exits;
* after the supervisor died, each worker still alive gets ``drain_timeout +
  kill_grace`` seconds to exit by itself. The process group of a worker that is
  still alive then is SIGKILLed. What a worker left in its group when it exited
  gets SIGTERM, and SIGKILL ``kill_grace`` seconds later.

A worker's pidfd names that process and no other, and its process group number
cannot be reused while the worker is alive or a member remains; the guard checks
right before each signal. Where pidfds are not available there is no guard.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time

# --- the supervisor's side --------------------------------------------------------------


class OrphanGuard:
    """The supervisor's handle on its guard process."""

    def __init__(self, process: subprocess.Popen[bytes], channel: socket.socket) -> None:
        self._process = process
        self._channel = channel

    @classmethod
    def start(cls, drain_timeout: float, kill_grace: float) -> OrphanGuard | None:
        """Start the guard, or return None where it cannot work (no pidfds, or no
        source to run)."""
        program = _own_program()
        if program is None or not hasattr(os, "pidfd_open"):
            return None
        # SOCK_SEQPACKET: one message per worker, never merged
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", *program, str(drain_timeout), str(kill_grace)],
                stdin=theirs.fileno(),
                stdout=subprocess.DEVNULL,
                close_fds=True,
                process_group=0,
                restore_signals=True,
            )
        except OSError:
            ours.close()
            return None
        finally:
            theirs.close()
        return cls(process, ours)

    @property
    def pid(self) -> int:
        return self._process.pid

    def watch(self, pid: int, pidfd: int) -> None:
        """Hand the guard worker ``pid`` (its pidfd is duplicated into the guard)."""
        with contextlib.suppress(OSError):
            socket.send_fds(self._channel, [str(pid).encode()], [pidfd])

    def close(self, timeout: float = 2.0) -> None:
        """Let the guard go (every worker has been reaped) and reap it."""
        self._channel.close()
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def _own_program() -> list[str] | None:
    """How ``python -I -S`` runs this file: by its path (a clean line in ``ps``), or
    as ``-c`` with its source where it is not a plain file (a zip archive)."""
    path = globals().get("__file__")
    if path and os.path.isfile(path):
        return [path]
    loader = globals().get("__loader__")
    try:
        source: str | None = loader.get_source(__name__) if loader is not None else None
    except (ImportError, OSError):
        return None
    return None if source is None else ["-c", source]


# --- the guard's side (runs in its own interpreter) -------------------------------------

_POLL_INTERVAL = 0.05


def _run_guard(channel: socket.socket, drain_timeout: float, kill_grace: float) -> None:
    for ignored in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGTTIN, signal.SIGTTOU):
        signal.signal(ignored, signal.SIG_IGN)
    workers: dict[int, int] = {}  # pidfd -> pid
    while True:
        poller = select.poll()
        poller.register(channel, select.POLLIN)
        for pidfd in workers:
            poller.register(pidfd, select.POLLIN)
        ready = {fd for fd, _ in poller.poll()}
        for pidfd in ready & workers.keys():
            # exited while the supervisor lives: the supervisor takes care of it
            del workers[pidfd]
            os.close(pidfd)
        if channel.fileno() in ready:
            try:
                data, fds, _, _ = socket.recv_fds(channel, 32, 1)
            except OSError:
                data, fds = b"", []
            if not data:
                break  # the supervisor is gone
            for pidfd in fds:
                workers[pidfd] = int(data)
    _outlive_the_supervisor(workers, drain_timeout, kill_grace)


def _outlive_the_supervisor(
    workers: dict[int, int], drain_timeout: float, kill_grace: float
) -> None:
    deadline = time.monotonic() + drain_timeout + kill_grace
    sweeps: dict[int, float] = {}  # process group -> when to SIGKILL it
    while workers or sweeps:
        now = time.monotonic()
        for pidfd, pid in list(workers.items()):
            if select.select([pidfd], [], [], 0)[0]:
                del workers[pidfd]
                os.close(pidfd)
                if _signal_group(pid, signal.SIGTERM):
                    sweeps[pid] = now + kill_grace
            elif now >= deadline:
                _say(
                    f"the supervisor is gone and worker {pid} did not exit within "
                    f"{drain_timeout + kill_grace:g}s; killing it"
                )
                _signal_group(pid, signal.SIGKILL)  # alive: its group is its own
                del workers[pidfd]
                os.close(pidfd)
        for pgid, when in list(sweeps.items()):
            if not _signal_group(pgid, 0):
                del sweeps[pgid]
            elif now >= when:
                _say(f"worker {pgid} left processes behind; killing them")
                _signal_group(pgid, signal.SIGKILL)
                del sweeps[pgid]
        time.sleep(_POLL_INTERVAL)


def _signal_group(pgid: int, signum: int) -> bool:
    """Signal process group ``pgid``; False if it has no member."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _say(text: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, f"graceful[{os.getpid()}] orphan guard: ERROR {text}\n".encode())


if __name__ == "__main__":
    _run_guard(socket.socket(fileno=0), float(sys.argv[1]), float(sys.argv[2]))
