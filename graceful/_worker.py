"""The worker side: what runs in each spawned process of a generation.

The spawn context has already imported the user's main script from disk (as
``__mp_main__``) by the time :func:`worker_main` runs. It then:

1. makes itself the leader of a process group of its own, so that whatever it
   starts can be stopped with it (see ``_processes.py``);
2. ignores SIGINT and SIGHUP (shutdown is the supervisor's decision; Ctrl-C in a
   terminal reaches the whole process group), and SIGTTIN and SIGTTOU (it is not
   in the terminal's foreground group), and turns SIGTERM into a drain;
3. starts a watch on its supervisor: if the supervisor dies, the event loop hears
   of it and drains, and if the loop is blocked, the watch ends the worker (and its
   process group) ``drain_timeout + kill_grace`` seconds later all the same;
4. receives the listeners' descriptors over the fd channel;
5. looks the entry point up by name in the fresh code;
6. runs it with a :class:`Context` on the entry's anyio backend, or with a
   :class:`SyncContext` for a plain function, while a control task follows the
   supervisor's messages.

A failure before or during the entry function is reported to the supervisor as one
line (:class:`graceful._wire.Failed`) before the process exits with status 1.
graceful's own errors (:class:`ConfigError`, such as an app that cannot be
imported) are one line on stderr too; anything else also leaves its traceback.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import anyio
import anyio.from_thread

from . import _wire
from ._context import Context, SyncContext, run_beside
from ._entry import EntryRef, one_line, resolve_entry
from ._errors import ConfigError
from ._listeners import Address, Listener
from ._logging import ensure_visible, logger


@dataclass
class WorkerBootstrap:
    """Everything a worker receives from the supervisor in its ``Process`` args.

    Sockets and connections travel as objects so that spawn passes their
    descriptors to the child; the listeners follow over ``fd_channel``.
    """

    entry: EntryRef
    generation: int
    worker_id: int
    supervisor_pid: int
    listeners: list[tuple[str, Address]]
    fd_channel: socket.socket
    control: Any  # multiprocess Connection
    drain_timeout: float
    #: how long after its drain deadline the supervisor would kill a worker
    kill_grace: float
    backend: str
    log_level: int
    #: keyword arguments for the entry function (used by library entry points such
    #: as the ASGI worker; a user's ``@service`` function gets none)
    entry_options: dict[str, Any]
    #: passed to ``anyio.run`` as ``backend_options`` (e.g. ``use_uvloop``)
    backend_options: dict[str, Any]


@dataclass(frozen=True)
class Runnable:
    """The entry function as found in the fresh code, with how to run it."""

    function: Callable[..., Any]
    backend: str

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.function)


def worker_main(boot: WorkerBootstrap) -> None:
    """The target of every worker process. Exits 0 after a normal return."""
    with contextlib.suppress(OSError):  # the supervisor may have done it already
        os.setpgid(0, 0)
    for ignored in (signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
        signal.signal(ignored, signal.SIG_IGN)
    # The supervisor blocked these around start(); pending ones are now discarded.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGHUP})
    ensure_visible(f"gen {boot.generation} worker {boot.worker_id}")
    if boot.log_level:
        logger.setLevel(boot.log_level)
    control = _wire.ControlChannel(boot.control)
    exit_when_orphaned(boot.supervisor_pid, boot.drain_timeout + boot.kill_grace)

    try:
        fds = _wire.recv_fds(boot.fd_channel)
    except (OSError, ConnectionError) as exc:
        _fail(control, f"could not receive the listeners: {exc}")
    finally:
        boot.fd_channel.close()
    listeners = [
        Listener(socket.socket(fileno=fd), spec, address)
        for fd, (spec, address) in zip(fds, boot.listeners, strict=True)
    ]
    try:
        runnable = _find_runnable(boot)
    except ConfigError as exc:
        _fail(control, str(exc))

    context = Context(
        listeners=listeners,
        generation=boot.generation,
        worker_id=boot.worker_id,
        control=control,
        default_drain_timeout=boot.drain_timeout,
    )
    try:
        entry = functools.partial(runnable.function, **boot.entry_options)
        if runnable.is_async:
            anyio.run(
                _run_async,
                entry,
                context,
                backend=runnable.backend,
                backend_options=boot.backend_options if runnable.backend == "asyncio" else None,
            )
        else:
            _run_sync(entry, context)
    except ConfigError as exc:
        _fail(control, str(exc))
    except Exception as exc:
        control.send(_wire.Failed(one_line(exc)))
        raise


def _fail(control: _wire.ControlChannel, cause: str) -> NoReturn:
    logger.error("%s", cause)
    control.send(_wire.Failed(cause))
    sys.exit(1)


def exit_when_orphaned(supervisor_pid: int, grace: float) -> None:
    """Make sure this worker and its process group end within ``grace`` seconds of
    the death of its supervisor, whatever the event loop is doing.

    A daemon thread waits for the supervisor's exit (on a pidfd, or by polling the
    parent PID where pidfds are unavailable), sleeps ``grace`` seconds, then kills
    the worker's process group. Normally the worker has long gone by then: its event
    loop sees the control channel close and drains within ``drain_timeout``.
    """
    pidfd = None
    with contextlib.suppress(AttributeError, OSError):
        pidfd = os.pidfd_open(supervisor_pid)
    # If the supervisor died before that, its PID may name another process already;
    # then this process has been re-parented, which the check below sees.

    def watch() -> None:
        if pidfd is not None and os.getppid() == supervisor_pid:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            while not poller.poll():
                pass
        else:
            while os.getppid() == supervisor_pid:
                time.sleep(0.2)
        time.sleep(grace)
        # No logging module here: the blocked main thread may hold its lock.
        with contextlib.suppress(OSError):
            os.write(
                2,
                f"graceful[{os.getpid()}]: ERROR the supervisor is gone and this worker did "
                f"not exit within {grace:g}s; killing it\n".encode(),
            )
        if os.getpgrp() == os.getpid():
            os.killpg(0, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="graceful orphan watch", daemon=True).start()


def _find_runnable(boot: WorkerBootstrap) -> Runnable:
    target = resolve_entry(boot.entry)
    describe = getattr(target, "__graceful_runnable__", None)
    if describe is not None:
        function, backend = describe()
        return Runnable(function, backend)
    if callable(target):
        return Runnable(target, boot.backend)
    raise ConfigError(f"entry point {boot.entry} is not callable in the code on disk")


async def _run_async(function: Callable[[Context], Any], context: Context) -> None:
    # The entry's own exception reaches the process as itself (a SystemExit keeps
    # its exit status) rather than wrapped in an exception group.
    await run_beside(
        lambda: function(context),
        context._follow_control,
        lambda: _drain_on_sigterm(context),
    )


async def _drain_on_sigterm(context: Context) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            context._request_shutdown(context._default_drain_timeout)


def _run_sync(function: Callable[[SyncContext], Any], context: Context) -> None:
    with anyio.from_thread.start_blocking_portal() as portal:
        control = portal.start_task_soon(context._follow_control)
        previous = signal.signal(
            signal.SIGTERM,
            lambda *_: portal.start_task_soon(_request_shutdown_soon, context),
        )
        try:
            function(SyncContext(context, portal))
        finally:
            signal.signal(signal.SIGTERM, previous)
            control.cancel()


async def _request_shutdown_soon(context: Context) -> None:
    context._request_shutdown(context._default_drain_timeout)
