"""The signals the supervisor follows, and what each asks for.

SIGHUP reloads, SIGUSR2 rolls back the generation on probation, SIGTTIN and SIGTTOU
add and remove a worker (gunicorn's and uvicorn's convention), SIGTERM and SIGINT
stop (what a stop signal does depends on the stops before it: the loop decides).
"""

from __future__ import annotations

import signal
from collections.abc import Callable

from anyio import open_signal_receiver
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectSendStream

from graceful.base.log import logger
from graceful.core.machine import Event, ReloadRequested, RollbackRequested, ScaleRequested

#: The signal that asks for a rollback of the generation on probation.
ROLLBACK_SIGNAL = signal.SIGUSR2

#: The signals that add a worker and remove one (gunicorn's and uvicorn's convention).
SCALE_SIGNALS = {signal.SIGTTIN: 1, signal.SIGTTOU: -1}


async def follow_signals(
    events_in: MemoryObjectSendStream[Event],
    on_stop: Callable[[], None],
    *,
    task_status: TaskStatus[None],
) -> None:
    """Turn the signals above into events on ``events_in`` (a stop signal calls
    ``on_stop``) until cancelled; then leave them ignored, so that a signal that
    comes after has nothing to act on."""
    stops = {signal.SIGTERM, signal.SIGINT}
    followed = {signal.SIGHUP, ROLLBACK_SIGNAL, *SCALE_SIGNALS, *stops}
    try:
        with open_signal_receiver(*followed) as signals:
            try:
                task_status.started()
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        logger.info("SIGHUP: reloading")
                        events_in.send_nowait(ReloadRequested())
                    elif signum == ROLLBACK_SIGNAL:
                        events_in.send_nowait(RollbackRequested(ROLLBACK_SIGNAL.name))
                    elif signum in SCALE_SIGNALS:
                        name = signal.Signals(signum).name
                        events_in.send_nowait(ScaleRequested(name, step=SCALE_SIGNALS[signum]))
                    else:
                        on_stop()
            finally:
                # The receiver resets these to their default actions (which kill,
                # or raise KeyboardInterrupt) as it closes. Once the supervisor
                # stops listening, a reload or a rollback has nothing to act on
                # and the stop is already under way: hold them until they are
                # ignored.
                signal.pthread_sigmask(signal.SIG_BLOCK, followed)
    finally:
        for signum in followed:
            signal.signal(signum, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, followed)
