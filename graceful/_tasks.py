"""Task helpers for the servers a worker runs: a main task with helpers beside it,
and exception groups unwrapped, so that a failure reads as its real cause."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio


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
