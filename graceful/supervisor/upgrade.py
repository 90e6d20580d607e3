"""``graceful upgrade``, the running supervisor's side: start a successor supervisor,
hand it the service, and take the service back if it fails.

The hand-over, step by step (the successor's side is
:mod:`graceful.supervisor.succession`; what crosses between them,
:mod:`graceful.spawn.successor`):

1. **Request.** ``upgrade`` arrives on the control socket. It is refused, in one
   line, where the supervisor's process ID must not change (:func:`refusal`), while
   the service stops, or in development mode. It waits while a reload, its probation
   or a rollback runs; a second request joins the first.
2. **Start.** The supervisor spawns the successor from the release the service
   points to now, and sends it the listening sockets (the listeners, the health
   endpoint's, the control socket) with their descriptors. The successor reads its
   configuration anew, adopts the sockets (binding only what is new) and starts its
   first generation. Both generations accept meanwhile, from the same queues.
3. **Serving.** The successor's first generation is ready: it says ``serving`` (with
   its probation). Once this supervisor has no reload or rollback under way, it
   answers ``go`` and hands over: it stops serving the control socket and the health
   endpoint, leaves the sockets' files to the successor, stops notifying systemd,
   and parks its generation (the successor runs a probation) or drains it. On
   ``go`` the successor puts its PID file in place (atomically), serves the control
   socket and the health endpoint, and tells systemd ``MAINPID=`` with ``READY=1``.
4. **Probation.** If the successor's worker crashes, it is rolled back
   (``graceful rollback`` at the successor), or the successor dies, this supervisor
   takes the service back: its PID file, the sockets' files, the control socket,
   the health endpoint, ``MAINPID=``; its parked generation resumes; the successor
   (if alive) drains and exits. When the probation passes (``passed``), the parked
   generation drains and this supervisor exits.

A successor that fails before step 3 (an import error, a configuration error, a
first generation that does not start, ``ready_timeout``) exits having changed
nothing, and the request is answered with its cause.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio

from graceful.base.errors import GracefulError, one_line
from graceful.base.log import logger
from graceful.control.pidfile import PidFile
from graceful.control.server import ReloadWaiter, UpgradeEnded
from graceful.core import events
from graceful.core.machine import SupervisorStateMachine
from graceful.core.succession import NO_SUCCESSOR
from graceful.core.trial import NO_TRIAL, Rejected
from graceful.spawn.successor import SuccessorProcess
from graceful.supervisor.socket_files import SocketFiles
from graceful.supervisor.systemd import Notifier
from graceful.wire.messages import LINK_MESSAGE_BYTES, printable

#: Service managers, and container inits, that track the supervisor's process ID as
#: their child, with no way to hand the service to another process: the start of the
#: parent's name (``/proc/PPID/comm``, at most 15 characters).
TRACKING_MANAGERS = (
    "supervisord",
    "runsv",
    "s6-supervise",
    "tini",
    "dumb-init",
    "docker-init",
    "catatonit",
    "podman-init",
)


def start_timeout(ready_timeout: float) -> float:
    """How long a successor has to serve: twice ``ready_timeout`` (its own start, then
    its first generation's) and 30 s more for its imports."""
    return 2 * ready_timeout + 30


def refusal(*, pid_file: str | None, notify_socket: str | None) -> str | None:
    """Why this supervisor cannot hand the service to another process, or None."""
    if os.getpid() == 1:
        return (
            "refused: this supervisor is PID 1 (a container's main process), and the "
            "container lives exactly as long as it; roll out a new image instead"
        )
    if os.environ.get("INVOCATION_ID") and not notify_socket:
        return (
            "refused: under systemd without Type=notify, systemd takes the supervisor's "
            "exit for the service's end; use Type=notify (or notify-reload) with "
            "NotifyAccess=all (see docs/operations/upgrade.md)"
        )
    if pid_file is None and not notify_socket:
        return (
            "refused: with neither a PID file nor systemd, nothing could follow the "
            "supervisor's new process ID; stop and start the service instead"
        )
    manager = _tracking_parent()
    if manager is not None:
        return (
            f"refused: the parent process is {manager}, which tracks this supervisor's "
            "process ID and would take its exit for the service's end; restart the "
            "service through it instead"
        )
    return None


def _tracking_parent() -> str | None:
    try:
        with open(f"/proc/{os.getppid()}/comm") as comm:
            name = comm.read().strip()
    except OSError:
        return None
    return name if name.startswith(TRACKING_MANAGERS) else None


@dataclass(frozen=True)
class Upgrades:
    """What the supervisor's loop is given for upgrades."""

    #: starts a successor, handing it the sockets
    start: Callable[[], SuccessorProcess]
    #: who removes the sockets' files
    files: SocketFiles
    #: why upgrades are refused here (:func:`refusal`), or None
    refused: str | None = None


class Host(Protocol):
    """What the upgrade needs of the supervisor's loop."""

    machine: SupervisorStateMachine
    notifier: Notifier
    pid_file: PidFile | None
    files: SocketFiles | None

    def send_event(self, event: events.Event) -> None: ...
    def start_task(self, function: Callable[[], Coroutine[Any, Any, object]]) -> None: ...
    def serve_own_sockets(self, serving: bool) -> None:
        """Serve the control socket and the health endpoint, or stop serving them."""


@dataclass
class Attempt:
    """One upgrade, from its request to its end."""

    waiters: list[ReloadWaiter] = field(default_factory=list)
    successor: SuccessorProcess | None = None
    #: the successor's ``hello`` (its graceful and Python versions)
    graceful: str = "?"
    python: str = "?"
    #: "queued", "starting", "serving" (waits for the hand-over), "handed over"
    #: (parked for its probation), "draining" (this supervisor exits)
    phase: str = "queued"
    #: its probation, as it said with ``serving``
    probation: float = 0.0
    #: the cause it reported before it exited
    cause: str | None = None
    #: the serving generation when it started (another one since: it reloads)
    serving_at_start: int | None = None
    #: cancels its start deadline once it has served or ended
    deadline: anyio.CancelScope = field(default_factory=anyio.CancelScope)

    def describe(self) -> str:
        pid = self.successor.pid if self.successor is not None else "?"
        return f"successor {pid} (graceful {self.graceful}, Python {self.python})"


class Upgrader:
    """The running supervisor's side of upgrades (see the module docstring)."""

    def __init__(
        self,
        host: Host,
        start: Callable[[], SuccessorProcess] | None,
        *,
        refused: str | None,
        busy: Callable[[], bool] = lambda: False,
    ) -> None:
        self.host = host
        #: starts a successor (None: upgrades are not possible here, ``refused`` says why)
        self._start = start
        self._refused = refused
        #: True while the upgrade that started this supervisor is not over
        self._busy = busy
        self.attempt: Attempt | None = None

    # -- requests -------------------------------------------------------------------

    def request(self, through_probation: bool) -> ReloadWaiter:
        """Ask for an upgrade; the waiter learns how it ended (an :class:`UpgradeEnded`)."""
        waiter = ReloadWaiter(through_probation=through_probation)
        machine = self.host.machine
        refused = self._refused
        if refused is None and machine.stop_announced:
            refused = "refused: the service is stopping"
        if refused is None and machine.settings.development:
            refused = "refused: not in development mode (the code reloads on every change)"
        if refused is None and self._start is None:
            refused = "refused: this supervisor cannot start a successor"
        if refused is not None:
            logger.warning("upgrade %s", refused)
            waiter.resolve(UpgradeEnded(False, refused))
            return waiter
        if self.attempt is None or self.attempt.phase == "draining":
            if self.attempt is not None and self.attempt.phase == "draining":
                waiter.resolve(UpgradeEnded(True, self._handed_over_line(self.attempt)))
                return waiter
            self.attempt = Attempt()
            logger.info("upgrade requested")
        elif self.attempt.phase == "handed over" and not through_probation:
            waiter.resolve(UpgradeEnded(True, self._handed_over_line(self.attempt)))
            return waiter
        self.attempt.waiters.append(waiter)
        self.step()
        return waiter

    def status(self) -> dict[str, Any] | None:
        """The upgrade under way, for ``graceful status``."""
        attempt = self.attempt
        if attempt is None:
            return None
        return {
            "role": "predecessor",
            "phase": attempt.phase,
            "successor": {
                "pid": attempt.successor.pid if attempt.successor is not None else None,
                "graceful": attempt.graceful,
                "python": attempt.python,
            },
        }

    # -- progress -------------------------------------------------------------------

    def step(self) -> None:
        """Take the next step an attempt waits for, if it can now (after every event)."""
        attempt = self.attempt
        if attempt is None:
            return
        machine = self.host.machine
        if machine.stop_announced and attempt.phase in ("queued", "starting", "serving"):
            self._fail(attempt, "the service is stopping")
            return
        if not self._settled():
            return
        if attempt.phase == "queued":
            self._spawn(attempt)
        elif attempt.phase == "serving":
            self._hand_over(attempt)

    def successor_pids(self) -> set[int]:
        """The successor's PID while it is this process's child."""
        attempt = self.attempt
        if attempt is None or attempt.successor is None:
            return set()
        return {attempt.successor.pid}

    def _settled(self) -> bool:
        machine = self.host.machine
        return (
            not self._busy()
            and machine.serving is not None
            and machine.starting is None
            and (machine.trial is NO_TRIAL or isinstance(machine.trial, Rejected))
            and machine.succession is NO_SUCCESSOR
            and not machine.stop_announced
        )

    def _spawn(self, attempt: Attempt) -> None:
        assert self._start is not None
        attempt.serving_at_start = self.host.machine.serving
        # The successor's MAINPID= comes from a process that is not the main one yet:
        # systemd (254 and later) takes it under NotifyAccess=all only.
        self.host.notifier.send(NOTIFYACCESS="all")
        try:
            attempt.successor = self._start()
        except (GracefulError, OSError, ValueError) as exc:
            self._fail(attempt, f"could not start the successor: {one_line(exc)}")
            return
        attempt.phase = "starting"
        logger.info("upgrading: successor %d starting", attempt.successor.pid)
        self.host.start_task(lambda: self._guarded(attempt, self._follow))
        self.host.start_task(lambda: self._guarded(attempt, self._deadline))

    async def _guarded(
        self, attempt: Attempt, task: Callable[[Attempt], Coroutine[Any, Any, None]]
    ) -> None:
        """Run one of an attempt's tasks: a fault in it fails the upgrade (the
        successor is killed), never the running supervisor."""
        try:
            await task(attempt)
        except Exception as exc:
            logger.exception("upgrade: %s", one_line(exc))
            if attempt.phase in ("queued", "starting", "serving"):
                self._fail(
                    attempt, f"the upgrade failed in the running supervisor: {one_line(exc)}"
                )

    async def _deadline(self, attempt: Attempt) -> None:
        """A successor that has not served within :func:`start_timeout` is killed."""
        timeout = start_timeout(self.host.machine.settings.ready_timeout)
        with attempt.deadline:
            await anyio.sleep(timeout)
        if attempt.deadline.cancel_called:
            return  # it served, or ended
        if attempt.phase == "starting" and attempt.successor is not None:
            attempt.cause = f"the successor did not serve within {timeout:g}s"
            attempt.successor.kill()

    async def _follow(self, attempt: Attempt) -> None:
        """Read the successor's messages until its link closes (it has exited)."""
        successor = attempt.successor
        assert successor is not None
        while True:
            await anyio.wait_readable(successor.link)
            try:
                data = successor.link.recv(LINK_MESSAGE_BYTES)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                break
            try:
                message = json.loads(data)
            except (ValueError, RecursionError):
                message = None
            if not isinstance(message, dict):
                logger.error("upgrade: the successor sent %r; killing it", data[:80])
                successor.kill()
                continue
            self._on_message(attempt, message)
        await self._on_exit(attempt)

    def _on_message(self, attempt: Attempt, message: dict[str, Any]) -> None:
        if isinstance(message.get("hello"), dict):
            hello = message["hello"]
            attempt.graceful = printable(str(hello.get("graceful", "?")))[:40]
            attempt.python = printable(str(hello.get("python", "?")))[:40]
            line = f"upgrading: {attempt.describe()} starting"
            logger.info("%s", line)
            self.host.notifier.send(STATUS=line)
        elif "failed" in message:
            attempt.cause = printable(str(message["failed"]))[:2000]
        elif isinstance(message.get("serving"), dict) and attempt.phase == "starting":
            probation = message["serving"].get("probation", 0)
            attempt.probation = float(probation) if isinstance(probation, int | float) else 0.0
            attempt.phase = "serving"
            attempt.deadline.cancel()
            self.step()
        elif "passed" in message and attempt.phase == "handed over":
            attempt.phase = "draining"
            self.host.send_event(events.SuccessorPassed())
            self._answer(attempt, True, f"{attempt.describe()} passed its probation", every=True)
        elif "stop" in message and attempt.phase == "handed over":
            attempt.phase = "draining"
            self.host.send_event(events.SuccessorPassed())
            self._answer(attempt, False, f"{attempt.describe()} stopped the service", every=True)
        elif "rollback" in message and attempt.phase == "handed over":
            self._take_back(attempt, printable(str(message["rollback"]))[:2000])

    def _hand_over(self, attempt: Attempt) -> None:
        successor = attempt.successor
        assert successor is not None
        machine = self.host.machine
        reload = machine.serving != attempt.serving_at_start
        park = attempt.probation > 0 and machine.can_park_for_successor()
        if not successor.send(go={"reload": reload, "parked": park}):
            return  # gone: its exit is on its way
        successor.let_go()
        self.host.serve_own_sockets(False)
        if self.host.files is not None:
            self.host.files.hand_over()
        self.host.notifier.muted = True
        attempt.phase = "handed over" if park else "draining"
        self.host.send_event(events.HandOver(park))
        line = self._handed_over_line(attempt)
        logger.info("upgrading: %s", line)
        self._answer(attempt, True, line, every=not park)

    def _handed_over_line(self, attempt: Attempt) -> str:
        then = (
            f"supervisor {os.getpid()} parked for its probation ({attempt.probation:g}s)"
            if attempt.phase == "handed over"
            else f"supervisor {os.getpid()} draining"
        )
        return f"{attempt.describe()} serving; {then}"

    def _take_back(self, attempt: Attempt, cause: str) -> None:
        """The successor failed during its probation: take the service back."""
        attempt.phase = "taken back"
        if self.host.files is not None:
            self.host.files.take_back()
        pid_file = self.host.pid_file
        if pid_file is not None:
            try:
                pid_file.reclaim()
            except GracefulError as exc:
                logger.error("upgrade rolled back, but %s", exc)
        self.host.serve_own_sockets(True)
        self.host.notifier.become_main(f"upgrade rolled back: {cause}")
        self.host.send_event(events.TakeBack(cause))
        self._answer(attempt, False, f"upgrade rolled back: {cause}", every=True)
        self.attempt = None

    async def _on_exit(self, attempt: Attempt) -> None:
        successor = attempt.successor
        assert successor is not None
        if successor.pidfd is not None:
            with anyio.move_on_after(5):
                await anyio.wait_readable(successor.pidfd)
        exitcode = await anyio.to_thread.run_sync(successor.reap, abandon_on_cancel=True)
        attempt.deadline.cancel()
        if self.host.pid_file is not None and attempt.phase != "draining":
            self.host.pid_file.remove_stale_successor_file()
        if attempt.phase in ("queued", "starting", "serving"):
            how = f"exited with status {exitcode}" if exitcode != 0 else "exited"
            cause = attempt.cause or f"the successor {how} before it served"
            self._fail(attempt, cause)
        elif attempt.phase == "handed over":
            self._take_back(attempt, attempt.cause or f"the successor exited ({exitcode})")

    def _fail(self, attempt: Attempt, cause: str) -> None:
        if attempt.successor is not None and attempt.phase != "failed":
            attempt.successor.kill()
        attempt.phase = "failed"
        attempt.deadline.cancel()
        then = "stops" if self.host.machine.stop_announced else "keeps serving"
        line = f"upgrade failed: {cause}; supervisor {os.getpid()} {then}"
        logger.error("%s", line)
        self.host.notifier.send(STATUS=line)
        self._answer(attempt, False, line, every=True)
        if self.attempt is attempt:
            self.attempt = None

    def _answer(self, attempt: Attempt, ok: bool, detail: str, *, every: bool) -> None:
        """Answer the waiters (``every`` one, or those not waiting for the probation)."""
        left = []
        for waiter in attempt.waiters:
            if every or not waiter.through_probation:
                waiter.resolve(UpgradeEnded(ok, detail))
            else:
                left.append(waiter)
        attempt.waiters = left

    def close(self) -> None:
        """The supervisor ends: a successor that has not taken over is killed."""
        attempt = self.attempt
        if (
            attempt is not None
            and attempt.successor is not None
            and attempt.phase in ("starting", "serving", "queued")
        ):
            attempt.successor.kill()
        for waiter in attempt.waiters if attempt is not None else []:
            waiter.resolve(UpgradeEnded(False, "the supervisor stopped"))
