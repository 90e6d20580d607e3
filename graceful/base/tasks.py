"""Task helpers: a main task with helpers beside it, exception groups unwrapped so
that a failure reads as its real cause, and a bound on connections being read."""

from __future__ import annotations

import contextlib
import math
import resource
import socket
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

import anyio
from anyio.abc import SocketStream, TaskGroup, UNIXSocketStream

from graceful.base.log import logger


async def run_beside(
    main: Callable[[], Awaitable[object]], *helpers: Callable[[], Coroutine[Any, Any, None]]
) -> None:
    """Run ``main`` with ``helpers`` as background tasks that end when it returns.

    An exception from ``main`` is raised as itself, not wrapped in an exception
    group, so that its one-line description names the real cause.
    """
    failure: BaseException | None = None
    async with anyio.create_task_group() as tasks:
        for helper in helpers:
            tasks.start_soon(helper)
        try:
            await main()
        except (Exception, SystemExit) as exc:
            failure = exc
        finally:
            tasks.cancel_scope.cancel()
    if failure is not None:
        raise failure


async def unwrap_group(main: Callable[[], Awaitable[None]]) -> None:
    """Await ``main``; if it raises an exception group holding one exception, raise that."""
    try:
        await main()
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if len(leaves) == 1 and isinstance(leaves[0], Exception | SystemExit):
            raise leaves[0] from None
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(_leaves(exc))
        else:
            found.append(exc)
    return found


async def serve_connections(
    sock: socket.socket,
    tasks: TaskGroup,
    handle: Callable[[SocketStream], Coroutine[Any, Any, None]],
    what: str,
    *,
    limit: int,
) -> None:
    """Accept on the listening ``sock`` forever, running ``handle(stream)`` in
    ``tasks`` for each connection, with at most ``limit`` connections open at once
    (more wait in the socket's backlog, where clients retry within their timeout:
    the supervisor's descriptors are what it starts workers with).

    A failed ``accept()`` (running out of descriptors, which anyio would report as a
    broken resource) is logged, naming ``what``, at most every
    :data:`_ACCEPT_WARNING_INTERVAL` seconds, and retried a little later: it never
    ends the loop."""
    sock.setblocking(False)
    unix = sock.family == socket.AF_UNIX
    open_now = 0
    freed = anyio.Event()
    warned_at = -math.inf

    async def run(conn: socket.socket) -> None:
        nonlocal open_now
        try:
            try:
                stream: SocketStream = await (
                    UNIXSocketStream.from_socket(conn) if unix else SocketStream.from_socket(conn)
                )
            except (OSError, ValueError):
                conn.close()  # the client left before it could be served
                return
            await handle(stream)
        finally:
            open_now -= 1
            freed.set()

    while True:
        while open_now >= limit:
            freed = anyio.Event()
            await freed.wait()
        await anyio.wait_readable(sock)
        try:
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError):
            continue  # another accept took it
        except OSError as exc:
            now = anyio.current_time()
            if now - warned_at >= _ACCEPT_WARNING_INTERVAL:
                warned_at = now
                logger.warning("%s: accept() failed: %s", what, exc.strerror or exc)
            await anyio.sleep(0.1)
            continue
        conn.setblocking(False)
        open_now += 1
        tasks.start_soon(run, conn)


def connection_limit(most: int) -> int:
    """How many connections one of the supervisor's servers may hold open: ``most``,
    or an eighth of the descriptor limit if that is less (at least 4): the rest are
    for its workers."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return most
    return max(4, min(most, soft // 8))


#: Seconds between two warnings of failed ``accept()`` calls on one socket.
_ACCEPT_WARNING_INTERVAL = 10.0


class BoundedReaders:
    """At most ``limit`` connections waiting for their request at once; a new one
    cancels the wait of the oldest (which is then closed). So clients that connect
    and send nothing can neither use up the server's descriptors nor keep a prompt
    client (a health probe) waiting."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._waiting: dict[int, anyio.CancelScope] = {}

    @classmethod
    def within(cls, open_limit: int, most: int) -> BoundedReaders:
        """Readers for a server that holds ``open_limit`` connections open: at most
        ``most``, and always two fewer than ``open_limit``, so that a new connection
        finds room to be accepted and displace the oldest that sends nothing."""
        return cls(min(most, max(1, open_limit - 2)))

    @contextlib.contextmanager
    def reading(self) -> Iterator[anyio.CancelScope]:
        """Wrap the read of one request; the scope's ``cancelled_caught`` says,
        afterwards, whether a newer connection took its place."""
        scope = anyio.CancelScope()
        while len(self._waiting) >= self.limit:
            oldest = next(iter(self._waiting))
            self._waiting.pop(oldest).cancel()
        self._waiting[id(scope)] = scope
        try:
            with scope:
                yield scope
        finally:
            self._waiting.pop(id(scope), None)


class ConnectionServer:
    """A server that runs as tasks of the supervisor's event loop (the control
    socket, the health endpoint) on the listening ``sock``: at most ``most_open``
    connections at once (see :func:`connection_limit`), at most ``most_reading`` of
    them waiting for their request (see :class:`BoundedReaders`). A subclass
    answers each connection in :meth:`handle`."""

    def __init__(self, sock: socket.socket, what: str, most_open: int, most_reading: int) -> None:
        self.sock = sock
        self._what = what
        self._open = connection_limit(most_open)
        self._readers = BoundedReaders.within(self._open, most_reading)

    async def serve(self, tasks: TaskGroup) -> None:
        """Serve connections in ``tasks`` until cancelled."""
        await serve_connections(self.sock, tasks, self.handle, self._what, limit=self._open)

    async def handle(self, stream: SocketStream) -> None:
        """Answer one connection (it is closed after)."""
        raise NotImplementedError
