"""What a worker's entry function is given: its listeners, readiness, and shutdown.

:class:`Context` is for ``async def`` entry points (asyncio or trio, through anyio);
:class:`SyncContext` offers the same names as blocking calls to a plain ``def``.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import anyio
from anyio.abc import SocketStream, TaskGroup

from graceful.child.shutdown import ShutdownRequest
from graceful.core.answers import FAILED, OK, bucket_of, outcome_of
from graceful.sockets.listeners import Listener
from graceful.wire import messages as _wire
from graceful.wire.vitals import VitalsPage

if TYPE_CHECKING:
    from anyio.from_thread import BlockingPortal

logger = logging.getLogger("graceful.worker")

#: errno values after which ``accept()`` is retried a little later rather than fatal:
#: the process or the system ran out of descriptors or memory for a moment.
_ACCEPT_PRESSURE = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

Handler = Callable[[SocketStream], Awaitable[None]]


class Context:
    """The worker's view of the service, for an ``async def`` entry point.

    Attributes:
        listeners: the listening sockets, in the order of ``listen=``.
        generation: 1 for the first generation, then one more per reload.
        worker_id: ``0 .. workers-1`` within the generation.
    """

    def __init__(
        self,
        *,
        listeners: Sequence[Listener],
        generation: int,
        worker_id: int,
        control: _wire.ControlChannel,
        shutdown: ShutdownRequest,
        vitals: VitalsPage | None = None,
    ) -> None:
        self.listeners: Sequence[Listener] = tuple(listeners)
        self.generation = generation
        self.worker_id = worker_id
        self._control = control
        self._ready_sent = False
        self._broken_sent = False
        self._shutdown = shutdown
        #: the cancel scopes of the connections :meth:`serve` runs
        self._connections: set[anyio.CancelScope] = set()
        self._listeners_sent_again: tuple[Listener, ...] | None = None
        self._vitals = vitals
        self._requests = 0
        self._requests_source: Callable[[], int] | None = None
        self._beaten = False
        #: answers may be counted from several threads (a plain ``def`` entry's)
        self._counting = threading.Lock()

    # -- liveness and requests (see docs/guides/liveness.md) -------------------------

    def heartbeat(self) -> None:
        """Tell the supervisor this worker's loop is alive. An ``async def`` entry
        need not call it: a task on its event loop beats by itself. A plain ``def``
        entry calls it (through :meth:`SyncContext.heartbeat`) from its server loop;
        from its first call on, the worker is judged hung once ``timeout`` seconds
        pass without one. A store to shared memory: cheap enough to call per request."""
        if self._vitals is not None:
            self._beaten = True
            self._vitals.beat()
            if self._requests_source is not None:
                self._vitals.set_requests(self._requests_source())

    @property
    def has_beaten(self) -> bool:
        """True once :meth:`heartbeat` was called (a plain ``def`` entry that never
        calls it is never judged hung; graceful beats for one that does while it is
        parked: see :func:`graceful.child.worker._run_sync`)."""
        return self._beaten

    def count_request(self) -> None:
        """Count one request served, for ``max_requests`` and ``status``. :meth:`serve`
        counts each connection, and ``graceful serve`` each HTTP request, by
        themselves; a hand-written server calls it once per request."""
        self._requests += 1
        if self._vitals is not None:
            self._vitals.set_requests(self._requests)

    def count_answer(self, ok: bool = True, seconds: float = 0.0) -> None:
        """Count one answer of this worker's: ``ok``, or failed (a server error), and
        how many ``seconds`` it took. The judged probation and the canary judge a new
        generation by its failed share and its p99 (docs/guides/verdicts.md), and
        ``status`` and the metrics show them. :meth:`serve` counts each connection
        by itself (failed when its handler raised), and ``graceful serve`` each HTTP
        request (by its status: :meth:`count_http_answer`); a hand-written server
        calls it once per request. Safe from any thread."""
        self._count(OK if ok else FAILED, seconds)

    def count_http_answer(self, status: int | None, seconds: float) -> None:
        """As :meth:`count_answer`, for an HTTP response with ``status`` (None: the
        request ended without one), counted by its class: a 5xx is a server error.
        Called on this worker's event loop only (``graceful serve`` calls it for
        each request): it takes no lock."""
        self._record(outcome_of(status), seconds)

    def _count(self, outcome: int, seconds: float) -> None:
        with self._counting:
            self._record(outcome, seconds)

    def _record(self, outcome: int, seconds: float) -> None:
        """Write one answer into the vitals page (one writer at a time)."""
        vitals = self._vitals
        if vitals is None:
            return
        # what a caller passes is clamped: NaN and negatives as 0, at most a year (an
        # int beyond any float compares exactly, and is clamped too)
        if not 0.0 <= seconds < 3e7:
            seconds = 3e7 if seconds >= 3e7 else 0.0
        vitals.count_answer(outcome, bucket_of(seconds), int(seconds * 1e6))

    def count_requests_with(self, source: Callable[[], int]) -> None:
        """Have the heartbeat publish ``source()`` as the requests served (a server's
        own counter), instead of :meth:`count_request`'s count."""
        self._requests_source = source

    async def keep_beating(self, interval: float) -> None:
        """Beat every ``interval`` seconds, on this event loop, until cancelled (the
        worker runs it beside an ``async def`` entry)."""
        while True:
            self.heartbeat()
            await anyio.sleep(interval)

    # -- readiness and shutdown -----------------------------------------------------

    async def ready(self, *, parkable: bool = False) -> None:
        """Tell the supervisor this worker can take traffic. Calling it again does
        nothing (until a resume: see :meth:`wait_resume`).

        The reload that started this worker's generation completes (and the old
        generation starts draining) once every worker of the generation is ready.

        ``parkable=True`` promises that this worker, once it has stopped accepting
        and closed its listeners after :meth:`wait_shutdown`, calls
        :meth:`wait_resume` and, if resumed, serves again on the new
        :attr:`listeners`. Only then can its generation be kept parked through the
        next generation's probation, and brought back by a rollback.
        :meth:`serve` does all this by itself.
        """
        if not self._ready_sent:
            self._ready_sent = True
            self._control.send(_wire.Ready(parkable=parkable))

    def listeners_closed(self) -> None:
        """Tell the supervisor this worker has closed its listeners after a shutdown
        request (:meth:`serve` and graceful's servers do it): a reload's timeline shows
        when the generation it replaces stopped accepting. Optional for a hand-written
        accept loop."""
        self.report_progress("closed")

    def report_progress(self, phase: str) -> None:
        """Tell the supervisor this worker reached ``phase``, one of
        :data:`graceful.wire.messages.PROGRESS_PHASES` (for graceful's own servers)."""
        self._control.send(_wire.Progress(phase))

    async def wait_shutdown(self) -> None:
        """Return once this worker is asked to stop accepting: its generation was
        replaced by a reload (or parked, see :attr:`parking`), the service is
        stopping, or the supervisor is gone."""
        await self._shutdown.wait()

    @property
    def parking(self) -> bool:
        """True once this worker was asked to park rather than exit: it drains as for
        a shutdown, and may then be resumed (see :meth:`wait_resume`)."""
        return self._shutdown.parked

    async def wait_resume(self) -> bool:
        """After :meth:`wait_shutdown`, once this worker has stopped accepting and
        closed its listeners: wait, alive and idle (in-flight work may go on), until
        it is resumed or told to exit. Returns False at once if the stop is final.

        Returns True when a rollback resumes this worker's generation: the listeners
        were sent again and :attr:`listeners` holds them; nothing is requested any
        more (:attr:`shutdown_requested` is False, :attr:`drain_deadline` None), and
        the worker must accept on them and call :meth:`ready` again. Returns False
        when it must finish its drain by :attr:`drain_deadline` and return.
        """
        resumed = await self._shutdown.wait_resume()
        pending, self._listeners_sent_again = self._listeners_sent_again, None
        if resumed:
            if pending is not None:
                self.listeners = pending
            self._ready_sent = False
        elif pending is not None:
            for listener in pending:
                listener.socket.close()
        return resumed

    async def cannot_resume(self, reason: str) -> None:
        """Parked, this worker can no longer be resumed safely (for example, work it
        had to cancel at its drain deadline may have left the app in an unknown
        state): tell the supervisor why, and make the stop final, so that
        :meth:`wait_resume` returns False. The supervisor no longer counts on it for
        a rollback, and kills it if it has not exited ``kill_grace`` seconds later."""
        if self._shutdown.parked:
            self._control.send(_wire.Failed(" ".join(reason.split())))
            self._shutdown.request()

    def listeners_sent_again(self, listeners: Sequence[Listener]) -> None:
        """The supervisor sent the listeners again, for a resume: they become
        :attr:`listeners` when :meth:`wait_resume` returns True (not before: the
        worker may still be closing the ones it had). Called by the worker."""
        if self._listeners_sent_again is not None:
            for listener in self._listeners_sent_again:
                listener.socket.close()
        self._listeners_sent_again = tuple(listeners)

    async def declare_broken(self, reason: str) -> None:
        """Tell the supervisor this worker's code is broken, although it runs.

        During the probation that follows the reload that started this worker's
        generation, the supervisor rolls back to the parked previous generation.
        Before the generation is ready, the reload fails. Otherwise it is only
        logged. The worker goes on either way: it is drained like any other.
        """
        if not self._broken_sent:
            self._broken_sent = True
            self._control.send(_wire.Broken(" ".join(reason.split()) or "no reason given"))

    @property
    def ready_sent(self) -> bool:
        """True once this worker has told the supervisor it is ready."""
        return self._ready_sent

    @property
    def shutdown_requested(self) -> bool:
        """True once :meth:`wait_shutdown` would return at once."""
        return self._shutdown.requested

    @property
    def drain_deadline(self) -> float | None:
        """Once shutdown is requested: the :func:`anyio.current_time` by which in-flight
        work should be done (the supervisor kills the worker soon after). Else None."""
        return self._shutdown.deadline

    # -- the high-level server ------------------------------------------------------

    async def serve(self, handler: Handler) -> None:
        """Accept connections on every listener and run ``await handler(stream)`` for each.

        Reports ready once it is accepting. When shutdown is requested it stops
        accepting (a connection the kernel already queued stays in the shared
        backlog for the next generation; none that this worker accepted is lost),
        closes this worker's copies of the listeners, and waits for running handlers
        until the drain deadline, when it cancels the rest and returns.

        When parked instead (probation), it drains the same way but stays, and a
        resume makes it accept again on the listeners it is sent; the handlers still
        running then keep going without a deadline.

        An exception from ``handler`` is logged with its traceback and closes only
        that connection.
        """
        async with anyio.create_task_group() as connections:
            while True:
                async with anyio.create_task_group() as acceptors:
                    for listener in self.listeners:
                        acceptors.start_soon(
                            self._accept_loop, listener.socket, connections, handler
                        )
                    await self.ready(parkable=True)
                    await self.wait_shutdown()
                    acceptors.cancel_scope.cancel()
                for listener in self.listeners:
                    listener.socket.close()
                self.listeners_closed()
                self._set_connection_deadline(self.drain_deadline)
                if not await self.wait_resume():
                    break
                self._set_connection_deadline(None)

    def _set_connection_deadline(self, deadline: float | None) -> None:
        for scope in self._connections:
            scope.deadline = math.inf if deadline is None else deadline

    async def _accept_loop(
        self, listener: socket.socket, connections: TaskGroup, handler: Handler
    ) -> None:
        # Cancel-safe accept: the wait is the only cancellation point, and between
        # accept() and start_soon() nothing awaits, so an accepted connection always
        # reaches a handler. BlockingIOError means another process took it.
        # O_NONBLOCK lives on the listener's open file description, shared by every
        # generation: another one may have cleared it, and a blocking accept() that
        # loses the race for a connection would stall this worker. Set it again
        # before each accept (one fcntl when it is already set).
        fd = listener.fileno()
        while True:
            await anyio.wait_readable(listener)
            try:
                os.set_blocking(fd, False)
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue
            except OSError as exc:
                if exc.errno not in _ACCEPT_PRESSURE:
                    raise
                logger.warning("accept() failed: %s; retrying in 0.1s", exc.strerror)
                await anyio.sleep(0.1)
                continue
            self.count_request()
            connections.start_soon(_run_handler, conn, handler, self)


async def _run_handler(conn: socket.socket, handler: Handler, context: Context) -> None:
    """Run ``handler`` on ``conn`` and count the connection as an answer: failed if
    the handler raised or was cancelled (its drain deadline passed)."""
    began = time.perf_counter()
    ok = False
    with anyio.CancelScope() as scope:
        context._connections.add(scope)
        try:
            try:
                stream = await SocketStream.from_socket(conn)
            except BaseException:
                conn.close()
                raise
            async with stream:
                try:
                    await handler(stream)
                    ok = True
                except Exception:
                    logger.exception("connection handler failed")
        finally:
            context._connections.discard(scope)
            context.count_answer(ok, time.perf_counter() - began)


class SyncContext:
    """The worker's view of the service, for a plain ``def`` entry point.

    Same names as :class:`Context`, as blocking calls that are safe to use from any
    thread. The listeners are non-blocking sockets; stdlib servers
    (``socketserver``, ``http.server``, ``wsgiref``) accept on them correctly.
    """

    def __init__(self, context: Context, portal: BlockingPortal, shutdown: ShutdownRequest) -> None:
        self._context = context
        self._portal = portal
        self._shutdown = shutdown
        self.listeners: Sequence[Listener] = context.listeners
        self.generation = context.generation
        self.worker_id = context.worker_id

    def ready(self, *, parkable: bool = False) -> None:
        """Tell the supervisor this worker can take traffic. Idempotent (until a
        resume). ``parkable`` as for :meth:`Context.ready`."""
        self._portal.call(lambda: self._context.ready(parkable=parkable))

    @property
    def parking(self) -> bool:
        """True once this worker was asked to park rather than exit."""
        return self._context.parking

    def wait_resume(self) -> bool:
        """As :meth:`Context.wait_resume`, blocking: True once resumed (serve again on
        :attr:`listeners` and call :meth:`ready`), False when the stop is final."""
        resumed = self._portal.call(self._context.wait_resume)
        if resumed:
            self.listeners = self._context.listeners
        return resumed

    def declare_broken(self, reason: str) -> None:
        """As :meth:`Context.declare_broken`."""
        self._portal.call(self._context.declare_broken, reason)

    def heartbeat(self) -> None:
        """Tell the supervisor this worker is alive: call it from the server loop,
        at least every ``timeout`` seconds (a loop that waits for connections with a
        timeout, as ``socketserver``'s ``serve_forever(poll_interval)`` does, can call
        it on each turn). Until the first call the worker is never judged hung; from
        then on, ``timeout`` seconds without one make it hung (see
        :meth:`Context.heartbeat`). Safe from any thread."""
        self._context.heartbeat()

    def count_request(self) -> None:
        """As :meth:`Context.count_request`. Safe from any thread."""
        self._context.count_request()

    def count_answer(self, ok: bool = True, seconds: float = 0.0) -> None:
        """As :meth:`Context.count_answer`. Safe from any thread."""
        self._context.count_answer(ok, seconds)

    def wait_shutdown(self, timeout: float | None = None) -> bool:
        """Block until this worker is asked to stop, or ``timeout`` seconds pass.

        Returns True if shutdown was requested.
        """
        return self._shutdown.wait_blocking(timeout)

    @property
    def shutdown_requested(self) -> bool:
        """True once shutdown was requested."""
        return self._context.shutdown_requested

    @property
    def drain_timeout_left(self) -> float | None:
        """Seconds left to finish in-flight work once shutdown is requested, else None."""
        deadline = self._context.drain_deadline
        if deadline is None:
            return None
        return max(0.0, deadline - self._portal.call(anyio.current_time))
