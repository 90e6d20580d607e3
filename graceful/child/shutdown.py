"""A worker's shutdown request: who may ask for it, and what the asking sets.

A worker is asked to stop by the supervisor's ``Shutdown`` message (with the drain
time it is given), by the supervisor's disappearance or an unreadable message from
it, or by a SIGTERM sent to the worker itself (the last three with the service's
``drain_timeout``). The first request wins; later ones change nothing.

A worker whose server takes part in probation may instead be asked to *park*
(``Park``): it stops accepting and drains exactly as for a shutdown, then waits
alive until it is resumed (``Resume``: a new *turn*, in which it accepts again on
listeners sent anew) or shut down for good. A shutdown request while parked is
final; a second park changes nothing.

:class:`ShutdownRequest` holds the request for the worker's :class:`Context`, as an
anyio event for the event loop and a thread-safe flag for synchronous code.
:func:`follow_supervisor` and :func:`drain_on_sigterm` are the tasks that make the
requests.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
from collections.abc import Callable

import anyio

from graceful.wire import messages as _wire

logger = logging.getLogger("graceful.worker")


class ShutdownRequest:
    """Whether, and by when, this worker was asked to stop."""

    def __init__(self, default_drain_timeout: float) -> None:
        #: the drain time of a request that names none (a SIGTERM, a lost supervisor)
        self.default_drain_timeout = default_drain_timeout
        self._event = anyio.Event()
        self._flag = threading.Event()
        self._deadline: float | None = None
        #: this turn's request is a park (and no final request came since)
        self._parked = False
        self._final = anyio.Event()
        #: a resume arrived and :meth:`wait_resume` has not taken it yet
        self._resume_pending = False
        self._resumed = anyio.Event()

    def request(self, drain_timeout: float | None = None, *, park: bool = False) -> None:
        """Ask this worker to stop accepting within ``drain_timeout`` seconds (the
        default if None), and then to exit, or with ``park`` to wait for a resume.
        Must run in the event loop's thread. Only the first request of a turn sets
        the deadline; a request to exit while parked makes the stop final."""
        if not park and not self._final.is_set():
            self._final.set()
            self._parked = False
        if self._flag.is_set():
            return
        if drain_timeout is None:
            drain_timeout = self.default_drain_timeout
        self._deadline = anyio.current_time() + drain_timeout
        self._parked = park
        self._flag.set()
        self._event.set()

    @property
    def parked(self) -> bool:
        """True while this turn's stop is a park that may still be resumed (a resume
        that has arrived but not been taken by :meth:`wait_resume` included)."""
        return self._parked

    def resume(self) -> None:
        """A resume arrived (the listeners are back). It is kept until
        :meth:`wait_resume` takes it, however late: the worker may still be on its
        way to stopping. Only while parked; must run in the event loop's thread."""
        if self._parked:
            self._resume_pending = True
            self._resumed.set()

    async def wait_resume(self) -> bool:
        """Once this turn's stop was requested: wait until a resume (True: a new turn
        begins, in which nothing is requested) or a final stop (False; at once if the
        stop was final). A final stop wins over a resume not yet taken."""
        while not self._final.is_set():
            if self._resume_pending:
                self._begin_turn()
                return True
            async with anyio.create_task_group() as waiting:

                async def either(event: anyio.Event) -> None:
                    await event.wait()
                    waiting.cancel_scope.cancel()

                waiting.start_soon(either, self._final)
                waiting.start_soon(either, self._resumed)
        return False

    def _begin_turn(self) -> None:
        self._resume_pending = False
        self._parked = False
        self._deadline = None
        self._event = anyio.Event()
        self._flag = threading.Event()
        self._resumed = anyio.Event()

    @property
    def requested(self) -> bool:
        """True once a request was made (safe from any thread)."""
        return self._flag.is_set()

    @property
    def deadline(self) -> float | None:
        """The :func:`anyio.current_time` by which draining should be done, once
        requested; else None."""
        return self._deadline

    async def wait(self) -> None:
        """Return once a request was made."""
        await self._event.wait()

    def wait_blocking(self, timeout: float | None = None) -> bool:
        """From a thread: block until a request is made or ``timeout`` seconds pass;
        True if it was made."""
        return self._flag.wait(timeout)


async def follow_supervisor(
    control: _wire.ControlChannel,
    shutdown: ShutdownRequest,
    take_listeners_back: Callable[[], None] | None = None,
) -> None:
    """Turn the supervisor's messages, and its disappearance, into shutdown requests,
    parks and resumes. Returns once the supervisor is gone or unreadable.

    ``take_listeners_back`` receives the listeners sent again before a ``Resume``;
    if it raises, the worker cannot resume, says why, and stops for good."""
    send, receive = anyio.create_memory_object_stream[_wire.Received](math.inf)
    async with anyio.create_task_group() as tasks, receive:
        tasks.start_soon(_wire.pump, control, send)
        async for message in receive:
            if isinstance(message, _wire.Shutdown):
                shutdown.request(message.drain_timeout)
            elif isinstance(message, _wire.Park):
                shutdown.request(message.drain_timeout, park=True)
            elif isinstance(message, _wire.Resume):
                if not shutdown.parked:
                    continue
                try:
                    if take_listeners_back is not None:
                        take_listeners_back()
                except Exception as exc:
                    logger.error("cannot resume: %s", exc)
                    control.send(_wire.Failed(f"could not resume: {exc}"))
                    shutdown.request()
                else:
                    shutdown.resume()
            elif isinstance(message, _wire.PeerGone):
                logger.warning("the supervisor is gone; draining and exiting")
                shutdown.request()
                break
            elif isinstance(message, _wire.ProtocolError):
                logger.error(
                    "unreadable message from the supervisor (%s); draining", message.detail
                )
                shutdown.request()
                break
        tasks.cancel_scope.cancel()


async def drain_on_sigterm(shutdown: ShutdownRequest) -> None:
    """Turn every SIGTERM this worker receives into a shutdown request (an async
    entry point's worker; a synchronous one installs a plain handler instead)."""
    with anyio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            shutdown.request()
