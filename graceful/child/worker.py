"""The worker side: what runs in each spawned process of a generation.

:func:`worker_main` runs in a fresh interpreter started by multiprocess's spawn
context. It:

1. makes itself the leader of a process group of its own, so that whatever it
   starts can be stopped with it (see :mod:`graceful.base.processes`);
2. ignores SIGINT and SIGHUP (shutdown is the supervisor's decision; Ctrl-C in a
   terminal reaches the whole process group), and SIGTTIN and SIGTTOU (it is not
   in the terminal's foreground group), and turns SIGTERM into a drain;
3. imports the main script the user ran, fresh from disk (multiprocess is kept
   from doing it: see :mod:`graceful.spawn.spawner`), so that an exception there is reported
   like any other, and whatever it starts is in the worker's process group;
4. receives the listeners' descriptors over the fd channel (kept open: a rollback
   sends them again to a parked worker), and its vitals page
   (:mod:`graceful.wire.vitals`), on whose memory file :mod:`faulthandler` dumps
   every thread's stack when the supervisor finds the worker hung;
5. looks the entry point up by name in the fresh code;
6. runs it with a :class:`Context` on the entry's anyio backend, or with a
   :class:`SyncContext` for a plain function, while a control task follows the
   supervisor's messages. For an ``async def`` entry, a task on the same event loop
   beats the heartbeat (:meth:`Context.keep_beating`), so that a blocked loop stops
   beating; a plain function beats by calling :meth:`SyncContext.heartbeat`.

A failure before or during the entry function is reported to the supervisor as one
line (:class:`graceful.wire.messages.Failed`) before the process exits with status 1.
graceful's own errors (:class:`ConfigError`, such as an app that cannot be
imported) are one line on stderr too; anything else also leaves its traceback.
"""

from __future__ import annotations

import contextlib
import faulthandler
import functools
import os
import signal
import socket
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

import anyio
import anyio.from_thread

from graceful.base import processes as _processes
from graceful.base.errors import ConfigError, one_line
from graceful.base.log import (
    ensure_visible,
    logger,
    report_start_failures_only,
    start_failures_logged,
)
from graceful.base.processes import WORKER_NAME
from graceful.base.tasks import run_beside
from graceful.child.context import Context, SyncContext
from graceful.child.shutdown import ShutdownRequest, drain_on_sigterm, follow_supervisor
from graceful.code.entry import find_runnable, traits_of
from graceful.code.main_script import import_main_script
from graceful.sockets.listeners import Listener
from graceful.wire import messages as _wire
from graceful.wire.bootstrap import WorkerBootstrap, WorkerOptions
from graceful.wire.fds import receive_all
from graceful.wire.vitals import DUMP_SIGNAL, VitalsPage


def worker_main(boot: WorkerBootstrap, connection: Any, fd_channel: socket.socket) -> None:
    """A spawned worker's life (see the module docstring), on its control channel
    (``connection``, a multiprocess Connection end) and ``fd_channel``, which
    spawn passes to the child as objects beside ``boot``. Exits 0 after a normal
    return."""
    settle_process(f"gen {boot.generation} worker {boot.worker_id}", boot.log_level, boot.options)
    control = _wire.ControlChannel(connection)
    control.send(_wire.Progress("graceful"))
    import_and_run(boot, control, fd_channel)


def import_and_run(
    boot: WorkerBootstrap, control: _wire.ControlChannel, fd_channel: socket.socket
) -> None:
    """Import the main script fresh from disk, then :func:`run_worker`."""
    try:
        import_main_script(boot.main)
    except BaseException as exc:  # a KeyboardInterrupt raised at import is a failure too
        if start_failures_logged():
            logger.exception("importing the main script failed")
        _fail(control, one_line(exc, where=True), log=False)
    run_worker(boot, control, fd_channel)


def settle_process(
    role: str, log_level: int, options: WorkerOptions, *, name: str | None = WORKER_NAME
) -> None:
    """What a worker (or a template, or a standby) does first: lead a process group
    of its own, ignore the signals that are not its to act on, take the process
    name ``name`` (None: keep it), and log as ``role``, at the supervisor's level,
    leaving start-up failures to the supervisor if it says so."""
    with contextlib.suppress(OSError):  # the supervisor may have done it already
        os.setpgid(0, 0)
    if name is not None:
        _processes.set_name(name)
    for ignored in (signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
        signal.signal(ignored, signal.SIG_IGN)
    # The supervisor blocked these around start(); pending ones are now discarded.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGHUP})
    ensure_visible(role)
    if log_level:
        logger.setLevel(log_level)
    if options.report_only:
        report_start_failures_only()  # for the servers' own start-up errors too


def run_worker(
    boot: WorkerBootstrap, control: _wire.ControlChannel, fd_channel: socket.socket
) -> None:
    """A worker's life once the user's code is imported (by this process, or by the
    template it was forked from): take the listeners, find the entry point, run it."""
    options = boot.options
    log = start_failures_logged()
    try:
        listeners, vitals = _receive_start(boot, fd_channel)
    except (OSError, ConnectionError) as exc:
        _fail(control, f"could not receive the listeners: {exc}")
    try:
        runnable = find_runnable(boot.entry, boot.options.backend)
    except ConfigError as exc:
        _fail(control, str(exc), log=log)
    if not traits_of(runnable.function).imports_code:
        control.send(_wire.Progress("code"))

    shutdown = ShutdownRequest(options.drain_timeout)
    context = Context(
        listeners=listeners,
        generation=boot.generation,
        worker_id=boot.worker_id,
        control=control,
        shutdown=shutdown,
        vitals=vitals,
    )
    beating = options.heartbeat if vitals is not None else 0.0

    def take_listeners_back() -> None:
        context.listeners_sent_again(_receive_listeners(boot, fd_channel))

    try:
        entry = functools.partial(runnable.function, **options.entry_options)
        if runnable.is_async:
            anyio.run(
                _run_async,
                entry,
                context,
                lambda: follow_supervisor(control, shutdown, take_listeners_back),
                shutdown,
                beating,
                backend=runnable.backend,
                backend_options=options.backend_options if runnable.backend == "asyncio" else None,
            )
        else:
            _run_sync(
                entry,
                context,
                lambda: follow_supervisor(control, shutdown, take_listeners_back),
                shutdown,
                beating,
            )
    except ConfigError as exc:
        _fail(control, str(exc), log=log or context.ready_sent)
    except Exception as exc:
        control.send(_wire.Failed(one_line(exc, where=True)))
        if not log and not context.ready_sent:
            sys.exit(1)  # reported; the supervisor prints it
        raise


def _receive_start(
    boot: WorkerBootstrap, fd_channel: socket.socket
) -> tuple[list[Listener], VitalsPage | None]:
    """What the supervisor sends on the fd channel at the start: the listeners, then
    the vitals page, on whose memory file faulthandler dumps the stacks on
    :data:`~graceful.wire.vitals.DUMP_SIGNAL`.

    Raises:
        ConnectionError: if they did not all arrive (see :func:`graceful.wire.fds.receive_all`).
        OSError: if the page cannot be mapped.
    """
    fds = _receive_fds(fd_channel)
    listeners, extra = fds[: len(boot.listeners)], fds[len(boot.listeners) :]
    if len(extra) != 1:
        for fd in fds:
            os.close(fd)
        raise ConnectionError(
            f"received {len(fds)} descriptors, expected {len(boot.listeners)} listeners "
            "and a vitals page"
        )
    vitals = VitalsPage.attach(extra[0])
    faulthandler.register(DUMP_SIGNAL, os.fdopen(vitals.dump_to(), "wb", 0), all_threads=True)
    return _listeners(boot, listeners), vitals


def _receive_listeners(boot: WorkerBootstrap, fd_channel: socket.socket) -> list[Listener]:
    """The listeners the supervisor sends again before a resume (they are already
    there: sent before the message that announces them).

    Raises:
        ConnectionError: if they did not all arrive (see :func:`graceful.wire.fds.receive_all`).
    """
    return _listeners(boot, _receive_fds(fd_channel))


def _receive_fds(fd_channel: socket.socket) -> list[int]:
    fd_channel.settimeout(_LISTENERS_TIMEOUT)
    return receive_all(fd_channel)


def _listeners(boot: WorkerBootstrap, fds: list[int]) -> list[Listener]:
    return [
        Listener(socket.socket(fileno=fd), spec, address)
        for fd, (spec, address) in zip(fds, boot.listeners, strict=True)
    ]


#: Seconds to wait for listeners the supervisor has announced.
_LISTENERS_TIMEOUT = 10.0


def _fail(control: _wire.ControlChannel, cause: str, *, log: bool = True) -> NoReturn:
    if log:
        logger.error("%s", cause)
    control.send(_wire.Failed(cause))
    sys.exit(1)


async def _run_async(
    function: Callable[[Context], Any],
    context: Context,
    follow: Callable[[], Coroutine[Any, Any, None]],
    shutdown: ShutdownRequest,
    beating: float,
) -> None:
    context.report_progress("loop")
    helpers = [follow, lambda: drain_on_sigterm(shutdown)]
    if beating > 0:
        helpers.append(lambda: context.keep_beating(beating))
    # The entry's own exception reaches the process as itself (a SystemExit keeps
    # its exit status) rather than wrapped in an exception group.
    await run_beside(lambda: function(context), *helpers)


def _run_sync(
    function: Callable[[SyncContext], Any],
    context: Context,
    follow: Callable[[], Coroutine[Any, Any, None]],
    shutdown: ShutdownRequest,
    beating: float,
) -> None:
    with anyio.from_thread.start_blocking_portal() as portal:
        context.report_progress("loop")
        following = portal.start_task_soon(follow)
        # A plain def parked (draining, then in wait_resume) cannot beat from its
        # server loop: graceful beats for it, if it beats at all, until it resumes.
        parked_beats = (
            portal.start_task_soon(_beat_while_parked, context, shutdown, beating)
            if beating > 0
            else None
        )
        previous = signal.signal(
            signal.SIGTERM, lambda *_: portal.start_task_soon(_request_soon, shutdown)
        )
        try:
            function(SyncContext(context, portal, shutdown))
        finally:
            signal.signal(signal.SIGTERM, previous)
            following.cancel()
            if parked_beats is not None:
                parked_beats.cancel()


async def _beat_while_parked(context: Context, shutdown: ShutdownRequest, interval: float) -> None:
    """Beat every ``interval`` seconds for a plain ``def`` entry that has beaten,
    while it is parked (until a resume is taken: then its own loop beats again)."""
    while True:
        if shutdown.parked and context.has_beaten:
            context.heartbeat()
        await anyio.sleep(interval)


async def _request_soon(shutdown: ShutdownRequest) -> None:
    shutdown.request()
