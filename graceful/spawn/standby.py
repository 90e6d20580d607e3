"""The warm standby: an interpreter that has imported everything but the user's code.

Most of a cold worker start is not the user's code: a new interpreter, multiprocess
and dill, anyio and its event loop, graceful's worker code, and for ``graceful
serve`` the server. None of it changes between reloads. So while the service is
quiet (a generation serves, nothing is starting), the supervisor keeps one
*standby*: a process spawned like a worker (multiprocess's spawn context, its own
process group, the worker's channels already open) that imports all that, then
waits. The next worker start (the first worker of a reload, or a crashed worker's
replacement) is handed to it: it imports the user's code fresh from disk and runs
at once. With ``preload`` the standby becomes the generation's template instead
(:mod:`graceful.spawn.template`). Another standby is prepared once the service is quiet again.
Off with ``standby=False`` (``--no-standby``).

What keeps it honest:

* **The code stays fresh.** A standby never imports the user's code: not the main
  script, not the app, not the entry point (only graceful's own entry points, such
  as ``graceful serve``'s, are warmed up, and they import the server, never the
  app). The service's own directories (the script's, the app directory) are off
  ``sys.path`` while it imports, so a file there that has a library's name is not
  imported either: such a file *shadows* the library for a new process, and a
  standby that would not see it gives up (see below). It is given the working
  directory a spawn would have now (a release symlink is followed anew) and
  forgets what it knew of the directories on ``sys.path`` before it imports
  anything of the user's.
* **A library upgraded meanwhile is noticed.** The standby records what it
  imported (:mod:`graceful.code.stale_imports`); when given work, it checks, and if anything
  changed on disk (or a new file now shadows what it imported) it answers
  ``stale`` and exits: the worker is spawned cold, with every library fresh.
* **Anything else goes cold too.** No standby yet, one still warming up, one that
  died, hangs (``ASSIGN_TIMEOUT``), or a generation that needs another
  environment (the stale-bytecode bypass): the worker is spawned as without it.

Wire, over a ``SOCK_SEQPACKET`` socketpair (the standby's *link*):

* standby to supervisor: ``{"warm": true}`` once imported, or ``{"failed": cause}``;
* supervisor to standby: one :class:`Assignment`, pickled (the supervisor's own
  data: nothing the standby sends is unpickled);
* standby to supervisor: ``{"taken": true}``, or ``{"stale": [what changed]}``
  before it exits. A worker then closes the link and speaks on the worker's
  channels; a template goes on with the template protocol on the link.

The supervisor closing its end (or dying) ends a waiting standby.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
from multiprocess.reduction import ForkingPickler

from graceful.base import processes as _processes
from graceful.base.errors import name_some, one_line
from graceful.base.log import logger
from graceful.code.release import Runtime
from graceful.wire import messages as _wire
from graceful.wire.bootstrap import Assignment

if TYPE_CHECKING:
    pass


#: Seconds a standby has to import everything before it is given up.
WARM_TIMEOUT = 60.0

#: Seconds a standby has to answer an assignment (it checks its imports first).
ASSIGN_TIMEOUT = 5.0

#: Seconds the service must have been quiet before a standby is started: the
#: moments after a reload are the new generation's first requests and the old one's
#: hand-over, which a spawn's burst of work would slow down.
SETTLE_DELAY = 0.2

#: Seconds before a standby is started again after one failed (to start, to warm up,
#: or it died), doubled for each failure in a row up to ``RETRY_MOST``.
RETRY_FIRST = 0.5
RETRY_MOST = 60.0


# --- the supervisor's side -----------------------------------------------------------


class Standby:
    """A standby process, as the supervisor sees it (see the module docstring)."""

    def __init__(
        self,
        process: Any,
        link: socket.socket,
        control: Any,
        fd_channel: socket.socket | None,
        *,
        runtime: Runtime,
        environment: dict[str, str] | None = None,
    ) -> None:
        self.process = process
        #: what it was started from: it becomes a process of that release only
        self.runtime = runtime
        #: the configured environment it was started with: it becomes a process of a
        #: generation configured with the same only
        self.environment = dict(environment or {})
        #: (kept: the process object forgets it once closed)
        self.pid: int = process.pid
        self.link = link
        #: the supervisor's ends of the worker's channels (None for a template)
        self.control = control
        self.fd_channel = fd_channel
        self.warm = False

    async def wait_warm(self) -> str | None:
        """Wait until it has imported everything: None once it has, else why not
        (a standby of a graceful this supervisor cannot speak to, say)."""
        answer = await self._receive()
        if "hello" in answer:
            why = _wire.hello_mismatch(answer["hello"], "standby")
            if why is not None:
                return why
            answer = await self._receive()
        if answer.get("warm") is True:
            self.warm = True
            return None
        return str(answer.get("failed", answer or "it exited"))

    async def assign(self, assignment: Assignment) -> str | None:
        """Give it ``assignment``: None once it took it, else why not (it is then to
        be discarded). Waits at most :data:`ASSIGN_TIMEOUT` seconds."""
        try:
            self.link.send(bytes(ForkingPickler.dumps(assignment)))
        except OSError as exc:
            return f"cannot reach it: {exc.strerror or exc}"
        answer: dict[str, Any] = {}
        with anyio.move_on_after(ASSIGN_TIMEOUT) as waited:
            answer = await self._receive()
        if waited.cancelled_caught:
            return f"it did not answer within {ASSIGN_TIMEOUT:g}s"
        if answer.get("taken") is True:
            return None
        if "stale" in answer:
            stale = answer["stale"]
            changed = name_some(stale) if isinstance(stale, list) else name_some([stale])
            return f"what it imported changed on disk: {changed}"
        if not answer:
            return "it exited before it answered"
        return f"it answered {name_some([repr(answer)])}"

    async def wait_exit(self) -> None:
        """Return once it has exited (its link closes as it does)."""
        while True:
            await anyio.wait_readable(self.link)
            try:
                if not self.link.recv(_wire.LINK_MESSAGE_BYTES, socket.MSG_PEEK):
                    return
            except BlockingIOError:
                continue
            except OSError:
                return
            await anyio.sleep(0.1)  # an unexpected message: not an exit; look again later

    async def _receive(self) -> dict[str, Any]:
        """The next message, or {} once the link has closed."""
        try:
            answer = await _wire.receive_object(self.link, _wire.LINK_MESSAGE_BYTES)
        except _wire.NotAMessage as garbage:
            return {"garbage": str(garbage)}
        return {} if answer is None else answer

    def close(self) -> None:
        """Kill it (and its process group), reap it, and close the supervisor's ends."""
        _processes.kill_group_or_process(self.pid)
        with contextlib.suppress(Exception):
            self.process.join()
            self.process.close()
        self.link.close()
        if self.control is not None:
            self.control.close()
        if self.fd_channel is not None:
            self.fd_channel.close()


def _runtime_changed(was: Runtime, now: Runtime) -> str:
    if was.release == now.release and was.executable == now.executable:
        return (
            f"the interpreter {now.executable} (or its environment) was replaced since it started"
        )
    return (
        f"it was started from {_describe_runtime(was)}; the service now runs from "
        f"{_describe_runtime(now)}"
    )


def _describe_runtime(runtime: Runtime) -> str:
    if runtime.release is not None:
        return f"release {runtime.release}"
    return f"the interpreter {runtime.executable} in {runtime.cwd}"


class StandbyKeeper:
    """Keeps one standby while the service is quiet, and hands it out.

    ``start`` spawns a new standby (and may raise). :meth:`run` is a task for the
    supervisor's life; :meth:`set_quiet` says when a standby may be prepared (the
    work of a spawn must not slow a start, nor the moments after it, down);
    :meth:`take` hands it out. A
    standby that could not start, warm up, or that died, is replaced while the
    service is quiet, after a pause that doubles with each such failure in a row
    (from :data:`RETRY_FIRST` to :data:`RETRY_MOST` seconds).
    """

    def __init__(self, start: Callable[[], Standby]) -> None:
        self._start = start
        #: warming up or warm; None when there is none
        self._standby: Standby | None = None
        self._quiet = False
        self._quiet_since = 0.0
        #: failures in a row, and when the next standby may be started after them
        self._failures = 0
        self._retry_at = 0.0
        self._wake: anyio.Event | None = None
        #: cancels the watch of the current standby (when it is taken), and is set
        #: once the watch has ended (nothing waits on the standby's link any more)
        self._watching: anyio.CancelScope | None = None
        self._watch_ended: anyio.Event | None = None
        self._warned = False
        self._closed = False

    @property
    def pid(self) -> int | None:
        return self._standby.pid if self._standby is not None else None

    def describe(self) -> dict[str, Any]:
        """``{"pid": PID or None, "warm": bool}``, for ``graceful status``."""
        standby = self._standby
        return {
            "pid": standby.pid if standby is not None else None,
            "warm": standby is not None and standby.warm,
        }

    def set_quiet(self, quiet: bool) -> None:
        """Whether the service is quiet now: a standby is prepared only once it has
        been for :data:`SETTLE_DELAY` seconds."""
        if quiet and not self._quiet:
            self._quiet_since = anyio.current_time()
        self._quiet = quiet
        if quiet and self._wake is not None:
            self._wake.set()

    def _quiet_for(self) -> float:
        return anyio.current_time() - self._quiet_since if self._quiet else 0.0

    async def run(self) -> None:
        """Prepare a standby whenever the service is quiet and there is none, and
        watch it until it is taken or exits. Cancelled at the supervisor's end."""
        self._wake = anyio.Event()
        while not self._closed:
            await self._wake.wait()
            self._wake = anyio.Event()
            if self._standby is not None or self._closed or not self._quiet:
                continue
            pause = max(self._retry_at - anyio.current_time(), SETTLE_DELAY - self._quiet_for())
            if pause > 0:
                await anyio.sleep(pause)
                self._wake.set()  # look again: still quiet, and still none?
                continue
            try:
                standby = self._start()
            except Exception as exc:
                self._trouble(f"could not start a standby: {one_line(exc)}")
                continue
            self._standby = standby
            self._watch_ended = ended = anyio.Event()
            try:
                with anyio.CancelScope() as self._watching:
                    await self._watch(standby)
            except Exception:
                # a standby only saves time: whatever goes wrong costs it, never
                # the supervisor
                logger.exception("could not watch the standby (PID %d)", standby.pid)
                if self._standby is standby:
                    self._standby = None
                    standby.close()
            finally:
                self._watching = None
                ended.set()

    async def _watch(self, standby: Standby) -> None:
        why: str | None = f"it did not import within {WARM_TIMEOUT:g}s"
        with anyio.move_on_after(WARM_TIMEOUT):
            why = await standby.wait_warm()
        if why is not None:
            self._standby = None
            standby.close()
            self._trouble(f"the standby (PID {standby.pid}) could not warm up: {why}")
            return
        logger.debug("a standby (PID %d) is warm", standby.pid)
        await standby.wait_exit()
        self._standby = None
        standby.close()
        self._trouble(f"the standby (PID {standby.pid}) exited")

    def _trouble(self, what: str) -> None:
        """Warn once; later troubles are debug lines (a start without a standby only
        takes longer). Another standby is prepared after a pause, while quiet."""
        level = logging.DEBUG if self._warned else logging.WARNING
        logger.log(level, "%s; workers start cold until another one is warm", what)
        self._warned = True
        self._failures += 1
        pause = min(RETRY_MOST, RETRY_FIRST * 2 ** (self._failures - 1))
        self._retry_at = anyio.current_time() + pause
        if self._wake is not None:
            self._wake.set()

    async def take(
        self,
        assignment: Callable[[], Assignment],
        runtime: Runtime,
        environment: dict[str, str] | None = None,
    ) -> Standby | None:
        """The warm standby, given the work ``assignment()`` describes (called once it
        is sure to be sent); None if there is none, it was started from another
        ``runtime`` (another release) or with another configured ``environment``, or
        it could not take the work (it is then discarded, and the caller starts the
        process cold)."""
        standby = self._standby
        if standby is None or not standby.warm:
            return None
        self._standby = None
        try:
            with anyio.CancelScope(shield=True):
                if self._watching is not None and self._watch_ended is not None:
                    self._watching.cancel()
                    await self._watch_ended.wait()
                if standby.runtime != runtime:
                    why: str | None = _runtime_changed(standby.runtime, runtime)
                elif standby.environment != (environment or {}):
                    why = "the workers' configured environment changed since it started"
                else:
                    why = await standby.assign(assignment())
        except BaseException:
            standby.close()  # whatever failed, it must not outlive its use
            raise
        if why is None:
            self._failures = 0
            return standby
        logger.info("the standby (PID %d) was not used: %s; starting cold", standby.pid, why)
        standby.close()
        return None

    def close(self) -> None:
        """Kill and reap the standby, if any; prepare no more."""
        self._closed = True
        standby, self._standby = self._standby, None
        if standby is not None:
            standby.close()
        if self._wake is not None:
            self._wake.set()
