"""Starting a successor supervisor (``graceful upgrade``), and the wire to it.

The running supervisor starts its successor as it starts every process: through
multiprocess's *spawn* context, from the release the service points to now (its
interpreter, working directory and paths: :mod:`graceful.code.release`), with the
boot entry :func:`graceful._boot.start_supervisor`. Unlike a worker, the successor
stays in the supervisor's process group and session (a terminal's Ctrl-C, a service
manager's cgroup reach both alike).

What crosses to it is the *succession contract* (:data:`graceful._version.SUCCESSION`),
kept between every pair of versions, since the successor runs whatever graceful is
installed there: the boot entry's arguments, a bootstrap of plain JSON (never a
pickle: keys are only ever added, and a successor ignores those it does not know),
the descriptors, and JSON datagrams on one ``SOCK_SEQPACKET`` link. The protocol, step
by step, is :mod:`graceful.supervisor.upgrade`; the datagrams, each a JSON object
with one key (a side ignores keys it does not know, and fields within them):

* running supervisor to successor: ``{"sockets": N}`` with the N descriptors, first
  (:func:`successor_bootstrap` says what each is); ``{"go": {"reload": bool,
  "parked": bool}}``: take over now (and reload: the running supervisor ran a newer
  generation meanwhile; ``parked``: it keeps its generation parked for the
  successor's probation);
* successor to running supervisor: ``{"hello": {...}}`` first (as every process
  graceful starts says it: its graceful and Python versions); ``{"serving":
  {"probation": S}}`` once its first generation serves; ``{"failed": "cause"}``
  before it exits without having taken over; then, during its probation,
  ``{"passed": true}``, ``{"rollback": "cause"}`` (take the service back) or
  ``{"stop": true}`` (the service is being stopped: stop too).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from dataclasses import dataclass
from typing import Any

import multiprocess
import multiprocess.process

from graceful._boot import start_supervisor
from graceful._version import SUCCESSION, VERSION, python_version
from graceful.base import processes as _processes
from graceful.code.main_script import main_script_for
from graceful.code.release import ReleaseLayout
from graceful.sockets.listeners import BoundListener
from graceful.spawn.spawner import start_from
from graceful.wire.bootstrap import MainScript
from graceful.wire.fds import send_with


@dataclass(frozen=True)
class Handed:
    """A listening socket the supervisor hands its successor: its ``role``
    (``"listener"``, ``"health"`` or ``"control"``), how it was named (``spec``), and
    the unix socket file the supervisor created for it (``owned``: path, device,
    inode), which the successor then removes at its own exit."""

    role: str
    spec: str
    socket: socket.socket
    owned: tuple[str, int, int] | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "spec": self.spec,
            "owned": list(self.owned) if self.owned is not None else None,
        }


def handed_listeners(listeners: list[BoundListener], role: str) -> list[Handed]:
    """``listeners`` as they are handed over."""
    return [
        Handed(role, listener.spec, listener.socket, listener.owned_path) for listener in listeners
    ]


@dataclass
class SuccessorProcess:
    """The started successor, as the running supervisor sees it."""

    process: Any  # multiprocess SpawnProcess
    #: the supervisors' link (non-blocking): JSON datagrams both ways
    link: socket.socket
    #: readable once the successor has exited; None where pidfds are unavailable
    pidfd: int | None

    @property
    def pid(self) -> int:
        pid: int = self.process.pid
        return pid

    def send(self, **message: Any) -> bool:
        """Send one datagram; False if the successor is gone or does not read."""
        try:
            self.link.send(json.dumps(message).encode())
        except OSError:
            return False
        return True

    #: reaped: its process ID may belong to another process now
    reaped: bool = False

    def kill(self) -> None:
        """SIGKILL the successor (its workers see their channel close, and stop); once
        it has been reaped, nothing."""
        if not self.reaped and self.process.exitcode is None:
            with contextlib.suppress(OSError):
                os.kill(self.pid, 9)

    def let_go(self) -> None:
        """The successor is the service's supervisor now: it outlives this process,
        which must neither join nor kill it at exit."""
        multiprocess.process._children.discard(self.process)

    def reap(self) -> int | None:
        """Once it has exited: its exit status; the descriptors are closed."""
        self.process.join()
        exitcode: int | None = self.process.exitcode
        self.reaped = True
        self.process.close()
        self.close()
        return exitcode

    def close(self) -> None:
        self.link.close()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def successor_bootstrap(
    main: MainScript,
    handed: list[Handed],
    *,
    pid_file: str | None,
    notify_socket: str | None,
    log_level: int,
    release_link: str | None = None,
) -> dict[str, Any]:
    """The successor's bootstrap (JSON; the keys are the succession contract's):

    * ``succession``: :data:`~graceful._version.SUCCESSION`;
    * ``argv``: the command line's arguments (``sys.argv[1:]``), run again;
    * ``main``: the script or module the service was started with (``module``,
      ``path``, and the application's ``sys_path`` entries), in the release now;
    * ``predecessor``: this supervisor's ``pid``, ``graceful`` and ``python``;
    * ``pid_file``, ``notify_socket`` (``NOTIFY_SOCKET``), ``log_level``;
    * ``release_link``: the release link the service follows (None for none), which
      the successor, started by physical paths, cannot find itself;
    * ``sockets``: what each descriptor sent after it is (:meth:`Handed.describe`).
    """
    return {
        "succession": SUCCESSION,
        "argv": sys.argv[1:],
        "main": {"module": main.module, "path": main.path, "sys_path": main.sys_path},
        "predecessor": {"pid": os.getpid(), "graceful": VERSION, "python": python_version()},
        "pid_file": pid_file,
        "notify_socket": notify_socket,
        "log_level": log_level,
        "sockets": [item.describe() for item in handed],
        "release_link": release_link,
    }


def start_successor(
    release: ReleaseLayout,
    handed: list[Handed],
    *,
    pid_file: str | None,
    notify_socket: str | None,
    log_level: int,
) -> SuccessorProcess:
    """Start the successor from the release the service points to now, and hand it
    ``handed`` (see the module docstring). Raises on any failure, having killed and
    reaped whatever it started."""
    runtime = release.resolve()
    context = multiprocess.get_context("spawn")
    bootstrap = successor_bootstrap(
        main_script_for(runtime),
        handed,
        pid_file=pid_file,
        notify_socket=notify_socket,
        log_level=log_level,
        release_link=release.link,
    )
    with contextlib.ExitStack() as on_failure:
        link, child_link = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        on_failure.callback(link.close)
        with child_link:
            data = json.dumps(bootstrap).encode()
            process = context.Process(
                target=start_supervisor, args=(data, child_link), name="graceful supervisor"
            )
            start_from(process, {}, runtime, own_group=False)
            on_failure.callback(_kill_and_reap, process)
        pidfd = _processes.open_pidfd(process.pid)
        # The descriptors wait in the link until the successor reads them.
        sockets = [item.socket.fileno() for item in handed]
        send_with(link, json.dumps({"sockets": len(sockets)}).encode(), sockets)
        link.setblocking(False)
        on_failure.pop_all()
    return SuccessorProcess(process, link, pidfd)


def _kill_and_reap(process: Any) -> None:
    with contextlib.suppress(OSError):
        os.kill(process.pid, 9)
    process.join()
