"""``graceful upgrade``, the successor's side: take the service over from the running
supervisor once the first generation serves, and give it back if that generation
fails its probation.

The protocol, step by step, is :mod:`graceful.supervisor.upgrade`. Here, in order:

1. the first generation is ready: say ``serving`` (with this supervisor's
   ``probation``) to the predecessor, and wait for ``go``. Nothing else changes
   meanwhile: the predecessor's PID file, control socket and health endpoint stand,
   and systemd is not told anything;
2. on ``go`` (or if the predecessor has died before it said it), take over: put the
   PID file in place, listen on the control socket (``listen()`` again, so that its
   peer credentials name this process) and the health endpoint, and tell systemd
   ``MAINPID=`` with ``READY=1``; if the predecessor ran a reload while this one
   started, reload (the newest code wins);
3. with a probation, the predecessor stays parked until it ends: a crash of a
   worker, or ``graceful rollback``, gives the service back (``rollback`` with the
   cause): this supervisor stops serving its sockets, stops notifying systemd and
   drains, exiting with status 1. When the probation passes, ``passed``: the
   predecessor drains and exits.
"""

from __future__ import annotations

import json
import os
from typing import Any, Protocol

import anyio

from graceful.base.log import logger
from graceful.child.successor import Inheritance
from graceful.control.server import ReloadWaiter
from graceful.core import events
from graceful.core.actions import RollbackEnded
from graceful.supervisor import upgrade
from graceful.supervisor.socket_files import SocketFiles
from graceful.wire.messages import LINK_MESSAGE_BYTES


class Host(upgrade.Host, Protocol):
    """What the successor's side needs of the supervisor's loop: what the upgrade's
    running side needs, and more."""

    def publish_pid_file(self) -> None: ...
    def request_reload(self, through_probation: bool = False) -> ReloadWaiter: ...


class Successor:
    """This supervisor was started by ``graceful upgrade``: its side of the hand-over."""

    def __init__(self, inheritance: Inheritance) -> None:
        self.inheritance = inheritance
        #: "starting", "serving" (waits for go), "probation", "serving alone",
        #: "gave back"
        self.phase = "starting"
        #: what the predecessor does now, for status: "serving", "parked",
        #: "draining", "gone"
        self.predecessor = "serving"
        self._crashes_at_take_over = 0
        self._probation_scope: anyio.CancelScope | None = None
        self._files: SocketFiles | None = None

    @property
    def took_over(self) -> bool:
        return self.phase in ("probation", "serving alone")

    @property
    def settled_in(self) -> bool:
        """The upgrade that started this supervisor has ended (another may begin)."""
        return self.phase in ("serving alone", "gave back")

    @property
    def in_upgrade(self) -> bool:
        """The upgrade is not over for ``status``: the predecessor is still there."""
        return not self.settled_in or self.predecessor != "gone"

    def status(self) -> dict[str, Any]:
        inheritance = self.inheritance
        return {
            "role": "successor",
            "phase": self.phase,
            "predecessor": {
                "pid": inheritance.predecessor_pid,
                "graceful": inheritance.predecessor_graceful,
                "python": inheritance.predecessor_python,
                "state": self.predecessor,
            },
        }

    def _send(self, **message: Any) -> bool:
        try:
            self.inheritance.link.send(json.dumps(message).encode())
        except OSError:
            return False
        return True

    def first_generation_serving(self, host: Host) -> None:
        """Step 1: the first generation is ready."""
        if self.phase != "starting":
            return
        self.phase = "serving"
        probation = host.machine.settings.probation
        if not self._send(serving={"probation": probation}):
            self._take_over(host, parked=False, reload=False, gone=True)

    async def follow(self, host: Host) -> None:
        """Read the predecessor's messages until it has exited (the link closes)."""
        link = self.inheritance.link
        link.setblocking(False)
        while True:
            await anyio.wait_readable(link)
            try:
                data = link.recv(LINK_MESSAGE_BYTES)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                break
            try:
                message = json.loads(data)
            except (ValueError, RecursionError):
                continue
            go = message.get("go") if isinstance(message, dict) else None
            if isinstance(go, dict) and self.phase == "serving":
                # parked: the predecessor waits for this one's probation to end
                parked = go.get("parked") is True and host.machine.settings.probation > 0
                self._take_over(host, parked=parked, reload=go.get("reload") is True)
        self.predecessor = "gone"
        if self.phase == "serving":
            logger.warning(
                "the predecessor (PID %d) is gone before it handed over: taking over",
                self.inheritance.predecessor_pid,
            )
            self._take_over(host, parked=False, reload=False, gone=True)
        elif self.phase == "probation":
            logger.warning(
                "the predecessor (PID %d) is gone: the upgrade can no longer be rolled back",
                self.inheritance.predecessor_pid,
            )
            self._end_probation()
        elif self.phase == "starting":
            logger.warning(
                "the predecessor (PID %d) is gone before this supervisor served",
                self.inheritance.predecessor_pid,
            )

    def _take_over(self, host: Host, *, parked: bool, reload: bool, gone: bool = False) -> None:
        """Step 2."""
        self.inheritance.settled = True
        self.phase = "probation" if parked else "serving alone"
        if not gone:
            self.predecessor = "parked" if parked else "draining"
        self._crashes_at_take_over = host.machine.counters.worker_crashes
        self._files = host.files
        if host.files is not None:
            host.files.take_over()
            if not parked:
                host.files.drop_unused()
        host.publish_pid_file()
        host.serve_own_sockets(True)
        pid = self.inheritance.predecessor_pid
        then = {
            "parked": f"supervisor {pid} parked until this one's probation ends",
            "draining": f"supervisor {pid} draining",
            "gone": f"supervisor {pid} gone",
        }[self.predecessor]
        line = f"upgraded: supervisor {os.getpid()} serves; {then}"
        logger.info("%s", line)
        host.notifier.become_main(f"{host.machine.status()}; {line}")
        if parked:
            self._probation_scope = anyio.CancelScope()
            host.start_task(lambda: self.run_probation(host))
        if reload:
            logger.info("the predecessor reloaded while this supervisor started: reloading")
            host.request_reload()

    async def run_probation(self, host: Host) -> None:
        """Step 3: the probation's timer (a task, started once taken over)."""
        scope = self._probation_scope
        if scope is None:
            return
        with scope:
            await anyio.sleep(host.machine.settings.probation)
            if self.phase == "probation":
                logger.info(
                    "upgrade: passed its probation (%gs); supervisor %d exits",
                    host.machine.settings.probation,
                    self.inheritance.predecessor_pid,
                )
                self._send(passed=True)
                self.predecessor = "draining"
                self._end_probation()

    def after_event(self, host: Host) -> None:
        """During the probation, a crashed worker gives the service back; a stop
        stops the parked predecessor too."""
        if self.phase != "probation":
            return
        if host.machine.stop_announced:
            logger.info(
                "stopping during the upgrade's probation: supervisor %d stops too",
                self.inheritance.predecessor_pid,
            )
            self._send(stop=True)
            self.predecessor = "draining"
            self._end_probation()
            return
        if host.machine.counters.worker_crashes > self._crashes_at_take_over:
            self.give_back(host, "a worker of the successor crashed during its probation")

    def request_rollback(self, host: Host, by: str) -> RollbackEnded | None:
        """``graceful rollback`` during the probation gives the service back; None
        outside it (the rollback is then this supervisor's own)."""
        if self.phase != "probation":
            return None
        pid = self.inheritance.predecessor_pid
        self.give_back(host, f"rolled back by {by}")
        if self.phase != "gave back":
            return RollbackEnded(False, f"nothing to roll back to: supervisor {pid} is gone")
        return RollbackEnded(True, f"upgrade rolled back: supervisor {pid} serves again")

    def give_back(self, host: Host, cause: str) -> None:
        """Hand the service back to the parked predecessor, and drain."""
        pid = self.inheritance.predecessor_pid
        if not self._send(rollback=cause):
            logger.error(
                "%s, but supervisor %d is gone: nothing to roll back to; serving on", cause, pid
            )
            self.predecessor = "gone"
            self._end_probation()
            return
        logger.error("upgrade rolled back: %s; supervisor %d serves again", cause, pid)
        self.phase = "gave back"
        self.predecessor = "serving"
        self._end_probation()
        host.serve_own_sockets(False)
        if host.files is not None:
            host.files.give_back()
        host.notifier.muted = True
        host.send_event(events.StopRequested(delay=False, exit_code=1))

    def _end_probation(self) -> None:
        """The predecessor will not take the service back."""
        if self.phase == "probation":
            self.phase = "serving alone"
            if self._files is not None:
                self._files.drop_unused()
        if self._probation_scope is not None:
            self._probation_scope.cancel()
