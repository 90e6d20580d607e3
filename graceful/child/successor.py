"""A successor supervisor's start (``graceful upgrade``): take what the running
supervisor hands over, then run the service's own command.

The running supervisor spawns this process with the boot entry
:func:`graceful._boot.start_supervisor`, from the release the service points to now
(:mod:`graceful.spawn.successor`). It reads its JSON bootstrap and the descriptors
of the listening sockets, records them as the :class:`Inheritance` that
:func:`inherited` returns, and runs the command the service was started with, as
Python would have (``python app.py``, ``python -m pkg``, or a console script such as
``graceful serve``), with ``__name__ == "__main__"``. That command reads its
configuration anew and calls :func:`graceful.supervisor.run.run_supervisor`, which
finds the inheritance: it adopts the sockets instead of binding them and supervises
as the successor (:mod:`graceful.supervisor.succession`).

If the command fails before the successor has taken over (an exception, a
configuration error, a first generation that does not start), the running supervisor
is told why in one line (``{"failed": cause}``) before this process exits: it keeps
everything.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import runpy
import signal
import socket
import sys
from dataclasses import dataclass, field
from typing import Any

from graceful.base.errors import one_line
from graceful.base.log import ensure_visible, logger
from graceful.code.release import child_sys_path
from graceful.sockets.listeners import BoundListener
from graceful.wire.fds import receive_with
from graceful.wire.messages import LINK_MESSAGE_BYTES

#: How long the successor waits for the descriptors, which were sent before it
#: started: only a broken predecessor makes it wait at all.
_DESCRIPTORS_TIMEOUT = 10.0


@dataclass
class Inheritance:
    """What the running supervisor handed this successor."""

    #: the supervisors' link: JSON datagrams both ways
    link: socket.socket
    predecessor_pid: int
    #: the predecessor's graceful and Python versions
    predecessor_graceful: str
    predecessor_python: str
    pid_file: str | None
    #: ``NOTIFY_SOCKET`` of the service (the successor becomes its main process)
    notify_socket: str | None
    #: the predecessor's release link (absolute, logical), which this process, started
    #: by its physical paths, cannot see itself
    release_link: str | None = None
    #: the listeners, by the spec they were bound from
    listeners: dict[str, list[BoundListener]] = field(default_factory=dict)
    health: dict[str, list[BoundListener]] = field(default_factory=dict)
    control: socket.socket | None = None
    #: the control socket's file (path, device, inode), removed at this one's exit
    control_owned: tuple[str, int, int] | None = None
    #: the unix socket file (path, device, inode) the predecessor made for each
    #: listener, which is this one's to remove once it has taken over (until then,
    #: each :attr:`BoundListener.owned_path` is None)
    files: list[tuple[BoundListener, tuple[str, int, int] | None]] = field(default_factory=list)
    #: set once the successor took over (or gave up): nothing more to report on exit
    settled: bool = False
    #: the last error logged: the cause reported if the command ends without taking over
    last_error: str | None = None

    def report_failure(self, cause: str) -> None:
        """Tell the running supervisor why this successor will not take over."""
        if self.settled:
            return
        self.settled = True
        with contextlib.suppress(OSError):
            self.link.send(json.dumps({"failed": cause[:2000]}).encode())

    def take(self, pool: dict[str, list[BoundListener]], spec: str) -> list[BoundListener]:
        """The listeners handed over for ``spec`` (removed from ``pool``), or none."""
        return pool.pop(spec, [])

    def unused(self) -> list[BoundListener]:
        """The handed-over listeners the command did not take."""
        return [
            listener
            for pool in (self.listeners, self.health)
            for listeners in pool.values()
            for listener in listeners
        ]


_inherited: Inheritance | None = None


def inherited() -> Inheritance | None:
    """What a running supervisor handed this process, if it is a successor (once)."""
    return _inherited


class _LastError(logging.Handler):
    def __init__(self, inheritance: Inheritance) -> None:
        super().__init__(logging.ERROR)
        self.inheritance = inheritance

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.inheritance.last_error = record.getMessage().splitlines()[0]


def successor_main(bootstrap: bytes, link: socket.socket) -> None:
    """Run the service's command as a successor supervisor; exit with its status."""
    global _inherited  # noqa: PLW0603 - one per process, read by run_supervisor
    # blocked by the supervisor around the spawn; the command sets its own handlers
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGHUP})
    _leave_the_predecessors_resource_tracker()
    boot = json.loads(bootstrap)
    inheritance = _receive(boot, link)
    _inherited = inheritance
    level = boot.get("log_level")
    if isinstance(level, int):
        logger.setLevel(level)
    ensure_visible("supervisor")
    logger.addHandler(_LastError(inheritance))
    main = boot.get("main") or {}
    code: int = 1
    try:
        code = _run_command(main, [str(arg) for arg in boot.get("argv") or []])
    except BaseException as exc:
        inheritance.last_error = one_line(exc, where=True)
        logger.error("the successor supervisor failed: %s", inheritance.last_error)
        code = 1
    finally:
        cause = inheritance.last_error or (
            f"the command exited with status {code} without starting a supervisor"
        )
        inheritance.report_failure(cause)
        for listener in inheritance.unused():
            listener.socket.close()
    sys.exit(code)


def _leave_the_predecessors_resource_tracker() -> None:
    """Close the predecessor's resource tracker pipe, which spawn handed this process
    as every child's, so that this supervisor and its workers start a tracker of
    their own: the predecessor's ends once its own processes have, and the
    predecessor, whose interpreter waits for it at exit (multiprocess on Python
    3.12 and later), can exit."""
    from multiprocess import resource_tracker  # noqa: PLC0415

    tracker = resource_tracker._resource_tracker
    fd = getattr(tracker, "_fd", None)
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.close(fd)
    tracker._fd = None
    if hasattr(tracker, "_pid"):
        tracker._pid = None


def _receive(boot: dict[str, Any], link: socket.socket) -> Inheritance:
    """The descriptors the predecessor sent, matched with the bootstrap's list."""
    described = boot.get("sockets") or []
    link.settimeout(_DESCRIPTORS_TIMEOUT)
    _, fds = receive_with(link, LINK_MESSAGE_BYTES, max(1, len(described)))
    link.settimeout(None)
    predecessor = boot.get("predecessor") or {}
    inheritance = Inheritance(
        link=link,
        predecessor_pid=int(predecessor.get("pid", 0)),
        predecessor_graceful=str(predecessor.get("graceful", "?")),
        predecessor_python=str(predecessor.get("python", "?")),
        pid_file=boot.get("pid_file"),
        notify_socket=boot.get("notify_socket"),
        release_link=boot.get("release_link"),
    )
    for item, fd in zip(described, fds, strict=False):
        sock = socket.socket(fileno=fd)
        owned = item.get("owned")
        owned_path = (str(owned[0]), int(owned[1]), int(owned[2])) if owned else None
        if item.get("role") == "control":
            inheritance.control, inheritance.control_owned = sock, owned_path
            continue
        sock.setblocking(False)
        spec = str(item.get("spec"))
        listener = BoundListener(sock, spec, sock.getsockname(), adopted=owned_path is None)
        inheritance.files.append((listener, owned_path))
        pool = inheritance.health if item.get("role") == "health" else inheritance.listeners
        pool.setdefault(spec, []).append(listener)
    for fd in fds[len(described) :]:
        os.close(fd)
    return inheritance


def _run_command(main: dict[str, Any], argv: list[str]) -> int:
    """Run the script or module the service was started with, as ``__main__``;
    its exit status."""
    sys.path[:] = child_sys_path([str(entry) for entry in main.get("sys_path") or []], sys.path)
    module, path = main.get("module"), main.get("path")
    try:
        if module:
            sys.argv = [str(module), *argv]
            runpy.run_module(str(module), run_name="__main__", alter_sys=True)
        elif path:
            sys.argv = [str(path), *argv]
            runpy.run_path(str(path), run_name="__main__")
        else:
            raise RuntimeError("the service was not started from a script or module")
    except SystemExit as exc:
        return _status(exc.code)
    return 0


def _status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1
