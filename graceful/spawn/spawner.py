"""Starting worker processes: the spawn, its process group, and the listeners' hand-over.

:class:`ProcessFactory` is the seam between the supervisor's loop and the kernel:
the loop asks it for a started :class:`WorkerProcess` and from then on only uses
that protocol (its control channel, its exit descriptor, kill, reap). The real
factory, :class:`SpawningFactory`, starts each worker through multiprocess's
*spawn* context, so every generation imports the user's code fresh from disk
(with ``preload``, :class:`graceful.spawn.template.TemplateFactory` forks them from one
template per generation instead); tests give the loop a factory of stand-ins
(``tests/test_supervisor_loop.py``). While the service is quiet, the factory keeps
a warm standby (:mod:`graceful.spawn.standby`), and a start is handed to it when it can take it:
the steps below are then the standby's (spawned earlier, with its channels), and a
start it cannot take is a cold one.

Starting a worker, step by step (any failure at any step is raised as one
exception, and whatever was already open or started is closed, killed and reaped):

1. a duplex ``Pipe`` for the control channel and a ``socketpair`` for the
   listeners' descriptors;
2. ``Process.start()`` with SIGINT and SIGHUP blocked (the worker unblocks them
   once its own handlers are set), the extra environment of this generation, in
   the release directory the service points to now, with that release's
   interpreter, working directory and application paths (:mod:`graceful.code.release`), then
   the worker made the leader of its own process group. Its target is
   ``_boot.start_worker``, which says hello and reports the interpreter up before
   it imports graceful's worker code (the bootstrap travels pickled, behind the
   version contract's header: ``_version.py``).
   The main script is left for the worker to import itself
   (:class:`~graceful.wire.bootstrap.MainScript`): multiprocess would import it before
   any graceful code runs in the child, so an exception there could not be
   reported, and what it started would be outside the worker's process group;
3. a pidfd for it, so that its exit is noticed whatever its children hold;
4. the listeners sent over the socketpair (:func:`graceful.wire.fds.send_all`), non-blocking,
   followed by the worker's vitals page (:mod:`graceful.wire.vitals`), which the
   supervisor keeps mapped for the worker's life. The socketpair stays open: a
   rollback sends the listeners again to a parked worker
   (:meth:`WorkerProcess.hand_listeners`).

Before a batch of spawns, :class:`BytecodeGate` checks the application's
bytecode once (see :mod:`graceful.code.bytecode`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import anyio.to_thread
import multiprocess
import multiprocess.spawn

from graceful._boot import start_standby, start_worker, wrap
from graceful.base import processes as _processes
from graceful.base.errors import GracefulError
from graceful.base.log import logger
from graceful.child.standby import STANDBY_VARIABLE
from graceful.code.bytecode import BytecodeCheck, application_roots, bypass_environment, recompile
from graceful.code.main_script import main_script_for
from graceful.code.release import ReleaseError, ReleaseLayout, Runtime
from graceful.core.machine import SpawnWorker
from graceful.sockets.listeners import BoundListener
from graceful.spawn.standby import Standby, StandbyKeeper
from graceful.wire import messages as _wire
from graceful.wire.bootstrap import (
    Assignment,
    EntryRef,
    StandbyBootstrap,
    TemplateBootstrap,
    WorkerBootstrap,
    WorkerOptions,
)
from graceful.wire.fds import send_all
from graceful.wire.vitals import VitalsPage

#: Signals a worker must not receive between fork and its own setup: the terminal's
#: Ctrl-C reaches the whole foreground process group, and SIGHUP may too.
_BLOCKED_DURING_SPAWN = {signal.SIGINT, signal.SIGHUP}

#: How many stale source files a warning names before it says "and N more".
_STALE_FILES_NAMED = 5


@dataclass(frozen=True)
class Reaped:
    """A worker's end: its exit status (negative for a signal, None if unknown), and
    the live processes it left in its process group, which has been sent SIGTERM
    (``left_in_group`` is its number, or None when it left nothing)."""

    exitcode: int | None
    left_in_group: int | None = None
    #: their PIDs, or None if they could not be listed
    left_pids: list[int] | None = None


class WorkerProcess(Protocol):
    """One started worker, as the supervisor's loop uses it."""

    serial: int
    generation: int
    worker_id: int
    #: the worker's messages, and the supervisor's to it
    channel: _wire.ControlChannel
    #: the release directory it was started from (None: the service has no link)
    release: str | None
    #: its first message is a ``Hello`` (every process graceful starts; not the
    #: stand-ins of tests)
    says_hello: bool
    #: its heartbeat, request count and stack dumps (None: stand-ins of tests)
    vitals: VitalsPage | None

    @property
    def pid(self) -> int: ...

    @property
    def exit_fd(self) -> int | None:
        """A descriptor that becomes readable once the process has exited (a pidfd),
        or None if there is none: then :meth:`has_exited` is polled."""

    def has_exited(self) -> bool:
        """True once the process has exited, without reaping it."""

    def kill(self) -> None:
        """SIGKILL the worker and its process group. Only before :meth:`reap`."""

    def hand_listeners(self) -> None:
        """Send the listeners again (before a resume). Raises ``OSError`` if the
        worker cannot take them."""

    def reap(self) -> Reaped:
        """Once it has exited: collect its status, send SIGTERM to what it left in its
        process group, and release the supervisor's descriptors for it."""

    def abandon(self) -> int | None:
        """Kill, wait for and release a worker whatever state it is in; its exit
        status if known. For when watching it failed."""


class ProcessFactory(Protocol):
    """Starts workers for the supervisor's loop."""

    async def start(self, spawn: SpawnWorker, setup: WorkerSetup) -> WorkerProcess:
        """Start the worker ``spawn`` describes, as ``setup`` says, and hand it the
        listeners. Raises on any failure, having
        cleaned up whatever it had started. If cancelled, nothing is left started."""

    def generation_ended(self, number: int) -> None:
        """Generation ``number`` will start no more workers (it was retired)."""

    async def run(self) -> None:
        """The factory's own work for the supervisor's life (keeping a warm standby,
        see :mod:`graceful.spawn.standby`); cancelled at the end."""

    def set_quiet(self, quiet: bool) -> None:
        """Whether the service is quiet now (a generation serves, no worker is
        starting, no stop), told after every event: the moments for work that would
        slow a start down."""

    def standby_status(self) -> dict[str, Any] | None:
        """The warm standby, for ``graceful status``: its ``pid`` (None when there is
        none at the moment) and whether it is ``warm``; None when turned off."""

    def helper_pids(self) -> set[int]:
        """PIDs of the factory's own child processes that are not workers."""

    def collect_exited(self) -> None:
        """Reap the factory's own child processes that have exited (on SIGCHLD)."""

    def close(self) -> None:
        """Kill and reap whatever the factory still runs (the supervisor's end)."""


@dataclass(kw_only=True)
class ChildWorker:
    """What a worker does the same way however it was started (spawned, or forked
    from a template and adopted): it is this process's child, in a process group of
    its own, watched through a pidfd, and reaped by ``_collect`` (its exit status,
    once it has exited; the supervisor's descriptors for it are released)."""

    serial: int
    generation: int
    worker_id: int
    channel: _wire.ControlChannel
    #: readable once the process has exited; None where pidfds are unavailable
    pidfd: int | None
    #: the supervisor's end of the fd channel, and what to send on it
    fd_channel: socket.socket
    listeners: list[BoundListener]
    #: the release directory it was started from (None: the service has no link)
    release: str | None = None
    says_hello: bool = True
    vitals: VitalsPage | None = None

    @property
    def pid(self) -> int:
        raise NotImplementedError

    @property
    def exit_fd(self) -> int | None:
        return self.pidfd

    def has_exited(self) -> bool:
        return _processes.has_exited(self.pid)

    def kill(self) -> None:
        # Not reaped yet (its watcher does that): its PID and process group number
        # are still its own.
        _processes.kill_group_or_process(self.pid)

    def hand_listeners(self) -> None:
        hand_over(self.fd_channel, self.listeners)

    def reap(self) -> Reaped:
        pid = self.pid
        own_group = _processes.leads_own_group(pid)
        if own_group:
            # Safe while the worker is an unreaped zombie: its number is not reused.
            _processes.signal_group(pid, signal.SIGTERM)
        exitcode = self._collect()
        if not own_group or not _processes.signal_group(pid, 0):
            return Reaped(exitcode)
        try:
            left: list[int] | None = _processes.group_members(pid)
        except OSError:
            left = None  # cannot look (out of descriptors?): sweep all the same
        if left == []:  # only zombies are left, which their parents reap
            return Reaped(exitcode)
        return Reaped(exitcode, pid, left)

    def _collect(self) -> int | None:
        raise NotImplementedError

    def _close_channels(self) -> None:
        """Release the supervisor's descriptors for the worker."""
        self.channel.close()
        self.fd_channel.close()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        if self.vitals is not None:
            self.vitals.close()
            self.vitals = None


@dataclass(kw_only=True)
class SpawnedWorker(ChildWorker):
    """A worker started by :class:`SpawningFactory`."""

    process: Any  # multiprocess SpawnProcess

    @property
    def pid(self) -> int:
        pid: int = self.process.pid
        return pid

    def _collect(self) -> int | None:
        exitcode: int | None = self.process.exitcode
        if exitcode is None:  # it has exited, so this does not wait
            self.process.join()
            exitcode = self.process.exitcode
        self._close()
        return exitcode

    def abandon(self) -> int | None:
        with contextlib.suppress(Exception):
            if self.process.exitcode is None:
                self.kill()
            self.process.join()
        exitcode: int | None = None
        with contextlib.suppress(Exception):
            exitcode = self.process.exitcode
            self._close()
        return exitcode

    def _close(self) -> None:
        self.process.close()
        self._close_channels()


@dataclass(frozen=True)
class Launch:
    """What every worker of the service is started from."""

    entry: EntryRef
    #: handed to each worker
    listeners: list[BoundListener]
    #: what the first generation's workers are told (each generation's own come
    #: with its :class:`WorkerSetup`)
    options: WorkerOptions
    #: where each start finds its release (its interpreter, paths, directory)
    release: ReleaseLayout
    #: keep a warm standby for the next start
    standby: bool = True


@dataclass(frozen=True)
class WorkerSetup:
    """What one generation's workers are started with (each reload may read it anew:
    :mod:`graceful.supervisor.reconfigure`)."""

    #: what each is told (None: the :class:`Launch`'s)
    options: WorkerOptions | None = None
    #: added to the supervisor's environment: the configured variables, and any
    #: ``bypass``
    environment: dict[str, str] = field(default_factory=dict)
    #: the environment holds the stale-bytecode bypass (:class:`BytecodeGate`): no
    #: standby can take the start
    bypass: bool = False


class SpawningFactory:
    """Starts workers with multiprocess's spawn context (see the module docstring)."""

    def __init__(self, launch: Launch) -> None:
        self.entry = launch.entry
        self.listeners = launch.listeners
        #: the newest generation's options and configured environment: a standby is
        #: started with them, and can take the start of a generation with the same
        self.options = launch.options
        self.environment: dict[str, str] = {}
        self.release = launch.release
        self._context = multiprocess.get_context("spawn")
        #: keeps the warm standby (:mod:`graceful.spawn.standby`); None when turned off
        self.standbys = StandbyKeeper(self.start_standby) if launch.standby else None

    async def start(self, spawn: SpawnWorker, setup: WorkerSetup) -> WorkerProcess:
        runtime = self.release.resolve()
        standby = await self.take_standby(
            setup,
            runtime,
            lambda: Assignment(
                runtime.cwd, worker=self.bootstrap(spawn, setup.options or self.options, runtime)
            ),
        )
        if standby is not None:
            return self.adopt(spawn, standby, runtime)
        return self.spawn(spawn, setup, runtime)

    async def take_standby(
        self, setup: WorkerSetup, runtime: Runtime, assignment: Callable[[], Assignment]
    ) -> Standby | None:
        """The warm standby, given ``assignment()``; None if there is none, or it
        cannot be used (the start is then cold): it was started from another
        ``runtime`` (the release link was switched since) or with another configured
        environment, or the start needs the stale-bytecode bypass. The next standby
        is started with ``setup``'s options and environment."""
        if not setup.bypass:
            self.options = setup.options or self.options
            self.environment = setup.environment
        if self.standbys is None or setup.bypass:
            return None
        return await self.standbys.take(assignment, runtime, setup.environment)

    def adopt(self, spawn: SpawnWorker, standby: Standby, runtime: Runtime) -> SpawnedWorker:
        """The worker ``spawn`` describes, from a standby that has taken the work:
        hand it the listeners (any failure kills and reaps it, and is raised)."""
        control, fd_channel = standby.control, standby.fd_channel
        with contextlib.ExitStack() as on_failure:
            on_failure.callback(standby.close)
            if control is None or fd_channel is None:
                raise GracefulError("a template's standby cannot become a worker")
            handed = self.take_on(spawn, standby.pid, control, fd_channel, runtime.release)
            on_failure.pop_all()
        standby.link.close()
        return SpawnedWorker(process=standby.process, **handed)

    def start_standby(self) -> Standby:
        """Spawn a standby that will become a worker (see :mod:`graceful.spawn.standby`)."""
        return self.spawn_standby(template=False)

    def spawn_standby(self, *, template: bool) -> Standby:
        """Spawn a standby, with the worker's channels unless it is to become a
        ``template``, from the release the service points to now. Raises on any
        failure, having closed what it opened."""
        runtime = self.release.resolve()
        with contextlib.ExitStack() as on_failure:
            link, child_link = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            on_failure.callback(link.close)
            link.setblocking(False)
            control = fd_channel = child_control = child_fd_channel = None
            if not template:
                control, fd_channel, child_control, child_fd_channel = self.open_channels(
                    on_failure
                )
            with child_link, contextlib.ExitStack() as child_ends:
                if child_control is not None:
                    child_ends.callback(child_control.close)
                if child_fd_channel is not None:
                    child_ends.callback(child_fd_channel.close)
                boot = StandbyBootstrap(
                    entry=self.entry,
                    options=self.options,
                    log_level=logger.getEffectiveLevel(),
                    started_ns=time.time_ns(),
                    template=template,
                    sys_path=runtime.app_path,
                )
                process = self._context.Process(
                    target=start_standby,
                    args=(
                        wrap(boot),
                        own_directories(runtime),
                        child_link,
                        child_control,
                        child_fd_channel,
                    ),
                    name="graceful standby",
                )
                environment = dict(self.environment)
                self.start_process(process, {**environment, STANDBY_VARIABLE: "1"}, runtime)
            on_failure.pop_all()
        return Standby(process, link, control, fd_channel, runtime=runtime, environment=environment)

    def generation_ended(self, number: int) -> None:
        pass

    async def run(self) -> None:
        if self.standbys is not None:
            await self.standbys.run()

    def set_quiet(self, quiet: bool) -> None:
        if self.standbys is not None:
            self.standbys.set_quiet(quiet)

    def standby_status(self) -> dict[str, Any] | None:
        return self.standbys.describe() if self.standbys is not None else None

    def helper_pids(self) -> set[int]:
        pid = self.standbys.pid if self.standbys is not None else None
        return {pid} if pid is not None else set()

    def collect_exited(self) -> None:
        pass

    def close(self) -> None:
        if self.standbys is not None:
            self.standbys.close()

    def spawn(self, spawn: SpawnWorker, setup: WorkerSetup, runtime: Runtime) -> SpawnedWorker:
        """Start the worker ``spawn`` describes, from ``runtime`` (see the module
        docstring)."""
        with contextlib.ExitStack() as on_failure:
            channel, fd_channel, child_control, child_fd_channel = self.open_channels(on_failure)
            with contextlib.closing(child_control), child_fd_channel:
                process = self._context.Process(
                    target=start_worker,
                    args=(
                        child_control,
                        child_fd_channel,
                        wrap(self.bootstrap(spawn, setup.options or self.options, runtime)),
                    ),
                    name=f"graceful gen {spawn.generation} worker {spawn.worker_id}",
                )
                self.start_process(process, setup.environment, runtime)
                on_failure.callback(kill_and_reap, process)
            handed = self.take_on(spawn, process.pid, channel, fd_channel, runtime.release)
            on_failure.pop_all()
        return SpawnedWorker(process=process, **handed)

    def take_on(
        self,
        spawn: SpawnWorker,
        pid: int,
        channel: _wire.ControlChannel,
        fd_channel: socket.socket,
        release: str | None,
    ) -> dict[str, Any]:
        """Watch the worker ``spawn`` describes, now running as ``pid``, and hand it the
        listeners and its vitals page: the fields of its :class:`ChildWorker`. Raises
        if any of it fails (having closed what it opened)."""
        pidfd = _processes.open_pidfd(pid)
        try:
            vitals = VitalsPage.create()
        except BaseException:
            if pidfd is not None:
                os.close(pidfd)
            raise
        try:
            hand_over(fd_channel, self.listeners, vitals)
        except BaseException:
            vitals.close()
            if pidfd is not None:
                os.close(pidfd)
            raise
        return {
            "serial": spawn.serial,
            "generation": spawn.generation,
            "worker_id": spawn.worker_id,
            "channel": channel,
            "pidfd": pidfd,
            "fd_channel": fd_channel,
            "listeners": self.listeners,
            "release": release,
            "vitals": vitals,
        }

    def open_channels(
        self, on_failure: contextlib.ExitStack
    ) -> tuple[_wire.ControlChannel, socket.socket, Any, socket.socket]:
        """A new worker's control channel and fd channel: the supervisor's ends, and
        the worker's (a multiprocess Connection and a socket), which the caller hands
        to the worker and then closes. ``on_failure`` closes all four."""
        control, child_control = self._context.Pipe(duplex=True)
        on_failure.callback(control.close)
        on_failure.callback(child_control.close)
        channel = _wire.ControlChannel(control)
        on_failure.callback(channel.close)
        fd_channel, child_fd_channel = socket.socketpair()
        on_failure.callback(fd_channel.close)
        on_failure.callback(child_fd_channel.close)
        # A worker that never reads what it is sent must not stall the supervisor: a
        # full channel fails the send instead.
        fd_channel.setblocking(False)
        return channel, fd_channel, child_control, child_fd_channel

    def bootstrap(
        self, spawn: SpawnWorker, options: WorkerOptions, runtime: Runtime
    ) -> WorkerBootstrap:
        """What the worker ``spawn`` describes is told at its start."""
        return WorkerBootstrap.of(
            self.generation_bootstrap(spawn.generation, options, runtime), spawn.worker_id
        )

    def generation_bootstrap(
        self, generation: int, options: WorkerOptions, runtime: Runtime
    ) -> TemplateBootstrap:
        """What every worker of ``generation`` started from ``runtime`` is told (and
        its template, with ``preload``)."""
        return TemplateBootstrap(
            entry=self.entry,
            generation=generation,
            supervisor_pid=os.getpid(),
            listeners=[(listener.spec, listener.address) for listener in self.listeners],
            options=options,
            log_level=logger.getEffectiveLevel(),
            main=main_script_for(runtime),
        )

    def start_process(self, process: Any, environment: dict[str, str], runtime: Runtime) -> None:
        """:func:`start_from` ``runtime``, in a process group of its own."""
        start_from(process, environment, runtime, own_group=True)


def start_from(
    process: Any, environment: dict[str, str], runtime: Runtime, *, own_group: bool
) -> None:
    """``process.start()`` from ``runtime`` (its interpreter, working directory and
    paths), with the terminal's signals blocked until the child has set up its own
    handlers, with ``environment`` added to its environment, and, with
    ``own_group``, in a process group of its own.

    The supervisor itself moves into the runtime's working directory: where it was
    may be a release that is deleted next.
    """
    try:
        os.chdir(runtime.cwd)
    except OSError as exc:
        raise ReleaseError(
            f"cannot enter the working directory {runtime.cwd}: {exc.strerror or exc}"
        ) from None
    multiprocess.spawn.set_executable(runtime.executable)
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED_DURING_SPAWN)
    saved = {name: os.environ.get(name) for name in environment}
    try:
        # inside: a variable the environment cannot hold must not leave the others
        # set here, or the signals blocked
        os.environ.update(environment)
        with _prepared_from(runtime):
            process.start()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
    # The worker does the same as its first step; whichever runs first wins (this
    # one fails with EACCES once the child has exec'd).
    if own_group:
        with contextlib.suppress(OSError):
            os.setpgid(process.pid, process.pid)


def hand_over(
    fd_channel: socket.socket, listeners: list[BoundListener], vitals: VitalsPage | None = None
) -> None:
    """Send ``listeners`` on a worker's fd channel, and at its start, its ``vitals``
    page after them."""
    # A generation may have made the shared listeners blocking (the flag lives on the
    # open file description): hand them over non-blocking.
    for listener in listeners:
        os.set_blocking(listener.socket.fileno(), False)
    fds = [listener.socket.fileno() for listener in listeners]
    send_all(fd_channel, fds if vitals is None else [*fds, vitals.fd])


def own_directories(runtime: Runtime) -> list[str]:
    """The service's own directories, where its code lives: the script's, the first
    of the application's ``sys.path`` entries (the app directory, or the working
    directory of ``python -m``), and the working directory if it is one of them
    (``--app-dir`` puts its directory before it); never graceful's own. A standby
    imports nothing from them. (Other ``PYTHONPATH`` directories may hold the
    libraries themselves.)"""
    ours = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    found = []
    if runtime.main_path is not None:
        found.append(os.path.dirname(runtime.main_path))
    if runtime.app_path:
        found.append(runtime.app_path[0])
    if runtime.cwd in runtime.app_path:
        found.append(runtime.cwd)
    return [path for path in dict.fromkeys(found) if path != ours]


#: What this thread starts a process from, while it does: see :func:`_prepared_from`.
_starting = threading.local()


def _for_the_runtime(
    original: Callable[[str], dict[str, Any]],
) -> Callable[[str], dict[str, Any]]:
    def get_preparation_data(name: str) -> dict[str, Any]:
        data = original(name)
        runtime: Runtime | None = getattr(_starting, "runtime", None)
        if runtime is not None:
            data.pop("init_main_from_name", None)
            data.pop("init_main_from_path", None)
            # the child's interpreter computes its own; the application's entries
            # travel in the bootstrap (MainScript.sys_path)
            data.pop("sys_path", None)
            data["dir"] = runtime.cwd
            if runtime.original_dir is not None:
                data["orig_dir"] = runtime.original_dir
            if runtime.argv0 and data.get("sys_argv"):
                data["sys_argv"] = [runtime.argv0, *data["sys_argv"][1:]]
        return data

    get_preparation_data.graceful_wrapped = True  # type: ignore[attr-defined]
    return get_preparation_data


@contextlib.contextmanager
def _prepared_from(runtime: Runtime) -> Iterator[None]:
    """While this thread starts a process, have multiprocess prepare the child from
    ``runtime``: its working directory, ``sys.argv[0]``, no ``sys.path`` of the
    supervisor's, and no import of the main script (the worker does it itself, see
    :func:`graceful.code.main_script.import_main_script`). Only the preparation data of this
    thread's spawn changes: ``__main__`` itself is never touched, and other threads'
    processes are started as usual."""
    spawn = multiprocess.spawn
    if not getattr(spawn.get_preparation_data, "graceful_wrapped", False):
        spawn.get_preparation_data = _for_the_runtime(spawn.get_preparation_data)
    _starting.runtime = runtime
    try:
        yield
    finally:
        _starting.runtime = None


def kill_and_reap(process: Any) -> None:
    """Kill and reap a worker whose start failed half-way."""
    _processes.kill_group_or_process(process.pid)
    process.join()
    process.close()


class BytecodeGate:
    """The stale-bytecode check that spawns wait for: run once (in a thread: it may
    compile files) for the spawns that wait together (a generation's workers), and
    again for later ones (a replacement after a crash)."""

    def __init__(self, roots: Callable[[], list[str]] = application_roots) -> None:
        #: the application's directories, where stale bytecode is looked for
        self._roots = roots
        self._check = BytecodeCheck()
        self._running: anyio.Event | None = None
        self._environment: dict[str, str] = {}
        self._budget_warned = False

    async def environment_for(self, generation: int) -> dict[str, str]:
        """The extra environment generation ``generation``'s workers need: empty, or
        a bytecode bypass where stale bytecode could not be recompiled. Never raises."""
        if self._running is not None:
            await self._running.wait()
            return self._environment
        self._running = done = anyio.Event()
        try:
            self._environment = await anyio.to_thread.run_sync(self._in_thread, generation)
        except Exception:
            logger.exception("could not check the application's bytecode")
            self._environment = {}
        finally:
            self._running = None
            done.set()
        return self._environment

    def _in_thread(self, generation: int) -> dict[str, str]:
        # Signals are the main thread's: once the supervisor stops listening, their
        # default actions are back for a moment (SIGUSR2 terminates, SIGTTIN stops),
        # and this thread, which lives on idle, must never take one.
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        return self.check(generation)

    def check(self, generation: int) -> dict[str, str]:
        """Check now, in this thread: stale bytecode in the application's directories
        is recompiled from the source, or, where it cannot be, the generation bypasses
        the bytecode cache. Returns the extra environment, and warns once per check."""
        roots = self._roots()
        stale = self._check.stale_sources(roots)
        if self._check.budget_exhausted and not self._budget_warned:
            self._budget_warned = True
            logger.warning(
                "stale bytecode: only the first %d .py files under %s were checked",
                self._check.budget,
                ", ".join(roots),
            )
        if not stale:
            return {}
        named = ", ".join(stale[:_STALE_FILES_NAMED])
        if len(stale) > _STALE_FILES_NAMED:
            named += f" and {len(stale) - _STALE_FILES_NAMED} more"
        failed = recompile(stale)
        if failed:
            reasons = ", ".join(f"{path} ({why})" for path, why in failed.items())
            what = (
                f"could not recompile {reasons}, so generation {generation} compiles "
                "everything from source"
            )
        else:
            what = "recompiled it"
        logger.warning(
            "stale bytecode: %s changed after its .pyc was written but kept its size and "
            "modification time (a deploy with rsync -a, tar or cp -p?); %s. See "
            "docs/operations/troubleshooting.md (Stale bytecode) to avoid this",
            named,
            what,
        )
        return bypass_environment() if failed else {}
