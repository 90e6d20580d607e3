"""Task helpers: a main task with helpers beside it, exception groups unwrapped so
that a failure reads as its real cause, and a bound on connections being read."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

import anyio
from anyio.abc import SocketListener, SocketStream, TaskGroup

from ._logging import logger


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
) -> None:
    """Accept on the listening ``sock`` forever, running ``handle(stream)`` in
    ``tasks`` for each connection. Running out of descriptors (or any other failed
    ``accept()``) is logged, naming ``what``, and retried a little later."""
    sock.setblocking(False)
    listener: SocketListener = await SocketListener.from_socket(sock)
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            logger.warning("%s: accept() failed: %s", what, exc.strerror)
            await anyio.sleep(0.1)
            continue
        tasks.start_soon(handle, stream)


class BoundedReaders:
    """At most ``limit`` connections waiting for their request at once; a new one
    cancels the wait of the oldest (which is then closed). So clients that connect
    and send nothing can neither use up the server's descriptors nor keep a prompt
    client (a health probe) waiting."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._waiting: dict[int, anyio.CancelScope] = {}

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
