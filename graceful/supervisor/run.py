"""Starting and ending a supervisor: the checks before anything runs, the clean-up after.

:func:`run_supervisor` is what ``Service.run()`` and the CLI call. It refuses bad
input with one line and exit status 2 before anything is spawned or left bound
(the entry point, the ``__main__`` guard, the PID file, the listeners, the
descriptor limit), then runs a :class:`~graceful.supervisor.loop.SupervisorLoop`
with the real process factory, and, however that ends, closes the listeners and
releases the PID file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import types
from collections.abc import Callable
from typing import Any

import anyio
import multiprocess

from graceful.base.errors import ConfigError
from graceful.base.log import ensure_visible, logger, written_without_waiting
from graceful.base.processes import become_subreaper
from graceful.child.successor import Inheritance, inherited
from graceful.code.bytecode import application_roots
from graceful.code.entry import entry_ref_for
from graceful.code.main_script import check_main_guard
from graceful.code.release import ReleaseError, ReleaseLayout
from graceful.control.pidfile import PidFile, open_directory
from graceful.control.protocol import control_path
from graceful.control.server import DISOWNED, ControlServer, ControlSocket
from graceful.core.configured import Configured, Reread
from graceful.core.machine import Settings, Strategy
from graceful.core.settings import ServiceSettings, Supervision, Watch
from graceful.dev.terminal import DevTerminal, quiet_reload_narrative
from graceful.dev.watch import SourceWatcher, with_paths
from graceful.sockets.listeners import (
    BoundListener,
    bind_listeners,
    check_descriptor_headroom,
    format_address,
    most_workers,
)
from graceful.spawn.guard import OrphanGuard
from graceful.spawn.spawner import BytecodeGate, Launch, SpawningFactory
from graceful.spawn.successor import Handed, SuccessorProcess, handed_listeners, start_successor
from graceful.spawn.template import TemplateFactory
from graceful.supervisor.loop import SupervisorLoop
from graceful.supervisor.reconfigure import Configurations
from graceful.supervisor.signals import ROLLBACK_SIGNAL, SCALE_SIGNALS
from graceful.supervisor.socket_files import SocketFiles
from graceful.supervisor.succession import Successor
from graceful.supervisor.systemd import Notifier
from graceful.supervisor.upgrade import Upgrades, refusal
from graceful.supervisor.vitals import heartbeat_interval
from graceful.wire.bootstrap import WorkerOptions


def run_supervisor(
    function: Callable[..., Any],
    settings: ServiceSettings,
    supervision: Supervision,
    *,
    caller: types.FrameType | None,
    target: object = None,
    entry_options: dict[str, Any] | None = None,
    backend_options: dict[str, Any] | None = None,
    environment: dict[str, str] | None = None,
    given: dict[str, object] | None = None,
    reread: Reread | None = None,
) -> int:
    """Supervise workers that run ``function`` in this process; return the exit status.

    ``settings`` and ``supervision`` are checked (:mod:`graceful.core.settings`).
    ``target`` is what the entry's name must lead to in a fresh import (the
    ``@graceful.service`` object; ``function`` itself when None); every worker passes
    ``entry_options`` to ``function`` as keyword arguments, and ``backend_options`` to
    ``anyio.run``, and each gets ``environment`` on top of the supervisor's. Each
    reload calls ``reread`` (when given) for the new generation's (see
    :mod:`graceful.supervisor.reconfigure`; ``given`` is every setting the command was
    given). ``caller`` is the frame that started the supervisor (for the
    ``__main__`` guard). Configuration errors are logged as one line and give status 2
    before anything is spawned or left bound.
    """
    ensure_visible("supervisor")
    # A reload, a rollback or a scaling (SIGTTIN and SIGTTOU) requested before the
    # supervisor listens for it, or after it has stopped, has nothing to act on:
    # ignored, rather than its default action killing (or stopping) the process and
    # leaving the PID file behind. They stay ignored when this returns. SIGTERM and
    # SIGINT are ignored from the end of the supervisor's loop to the end of its
    # clean-up, then restored.
    for signum in (signal.SIGHUP, ROLLBACK_SIGNAL, *SCALE_SIGNALS):
        signal.signal(signum, signal.SIG_IGN)
    stop_handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        with written_without_waiting():
            return _supervise(
                function,
                function if target is None else target,
                settings,
                supervision,
                caller=caller,
                first=Configured(
                    settings,
                    dict(entry_options or {}),
                    dict(backend_options or {}),
                    dict(environment or {}),
                    dict(given or {}),
                ),
                reread=reread,
            )
    finally:
        for signum, handler in stop_handlers.items():
            signal.signal(signum, handler)


def _supervise(
    function: Callable[..., Any],
    target: object,
    settings: ServiceSettings,
    supervision: Supervision,
    *,
    caller: types.FrameType | None,
    first: Configured,
    reread: Reread | None,
) -> int:
    claimed: PidFile | None = None
    control: ControlSocket | None = None
    listeners: list[BoundListener] = []
    health_listeners: list[BoundListener] = []
    # handed over by a running supervisor, if this one was started by graceful upgrade
    inheritance = inherited()

    def clean_up() -> None:
        for listener in [*listeners, *health_listeners]:
            listener.close()
        if control is not None:
            control.close()
        if claimed is not None:
            claimed.release()

    try:
        entry = entry_ref_for(target, function)
        check_main_guard(caller)
        release = _adopt_release(
            supervision.release_link
            if supervision.release_link is not None or inheritance is None
            else inheritance.release_link
        )
        if inheritance is not None:
            claimed, control = _succeed(inheritance, supervision.pid_file)
        elif supervision.pid_file is not None:
            claimed = PidFile.claim(supervision.pid_file)
            control = ControlSocket.bind(control_path(claimed.path))
        listeners = bind_listeners(
            list(settings.listen), inheritance.listeners if inheritance is not None else None
        )
        health_listeners = _bind_health(supervision, inheritance)
        check_descriptor_headroom(len(listeners), settings.workers)
        _check_preload(settings)
        watching = settings.watching
        watch = with_paths(watching, [_main_directory()]) if watching is not None else None
    except (ConfigError, ReleaseError) as exc:
        logger.error("%s", exc)
        clean_up()
        return 2
    loop: SupervisorLoop | None = None
    code = 1
    try:
        _announce(listeners, health_listeners, release)
        notifier = _notifier(inheritance)
        decided = _decided(settings, supervision)

        def options_of(configured: Configured) -> WorkerOptions:
            return _worker_options(
                configured,
                development=decided.development,
                heartbeat=heartbeat_interval(decided),
            )

        launch = Launch(entry, listeners, options_of(first), release, standby=settings.standby)
        terminal = _development_terminal(watch)
        loop = SupervisorLoop(
            decided,
            TemplateFactory(launch) if settings.preload else SpawningFactory(launch),
            listeners=listeners,
            bytecode=BytecodeGate(lambda: application_roots(release.application_directories())),
            pid_file=claimed,
            notifier=notifier,
            start_guard=lambda: OrphanGuard.start(decided.drain_timeout, decided.kill_grace),
            control=control.sock if control is not None else None,
            health=health_listeners[0].socket if health_listeners else None,
            # forked workers are adopted: they, and what they leave, are reaped here
            reap_orphans=settings.preload,
            watch=SourceWatcher(watch) if watch is not None else None,
            terminal=terminal,
            upgrades=_upgrades(
                SocketFiles.of(listeners + health_listeners, control, inheritance),
                release,
                claimed,
                notifier,
                (listeners, health_listeners, control),
            ),
            successor=Successor(inheritance) if inheritance is not None else None,
            configurations=Configurations(
                first, reread, options_of, where=lambda: release.resolve().cwd
            ),
        )
        try:
            code = anyio.run(loop.run, backend="asyncio")
        finally:
            notifier.close()
        logger.info("stopped (exit status %d)", code)
        return code
    finally:
        _finish(loop.control if loop is not None else None, code, clean_up)


def _bind_health(supervision: Supervision, inheritance: Inheritance | None) -> list[BoundListener]:
    """The health endpoint's listener, if there is one (see :func:`bind_listeners`)."""
    if supervision.health is None:
        return []
    try:
        return bind_listeners(
            [supervision.health], inheritance.health if inheritance is not None else None
        )
    except ConfigError as exc:
        raise ConfigError(f"health endpoint: {exc}") from None


def _notifier(inheritance: Inheritance | None) -> Notifier:
    """sd_notify; a successor's tells nothing until it takes over
    (:mod:`graceful.supervisor.succession`)."""
    if inheritance is None:
        return Notifier.from_environment()
    notifier = Notifier(inheritance.notify_socket)
    notifier.muted = True
    return notifier


def _succeed(
    inheritance: Inheritance, pid_file: str | os.PathLike[str] | None
) -> tuple[PidFile | None, ControlSocket | None]:
    """A successor's PID file (staged, to replace its predecessor's) and control
    socket (the predecessor's, handed over).

    Raises:
        ConfigError: if the configuration names another PID file than the running
            supervisor's (the control socket lives beside it).
    """
    given = os.path.abspath(os.fspath(pid_file)) if pid_file is not None else None
    if given != inheritance.pid_file:
        raise ConfigError(
            f"graceful upgrade cannot change the PID file (the running supervisor's is "
            f"{inheritance.pid_file!r}, the configuration now names {given!r}): stop and "
            "start the service to change it"
        )
    if given is None:
        return None, None
    claimed = PidFile.succeed(given)
    control = None
    if inheritance.control is not None:
        # its file is the predecessor's until this one takes over (SocketFiles)
        control = ControlSocket(
            control_path(given),
            inheritance.control,
            DISOWNED,
            open_directory(os.path.dirname(given)),
        )
    return claimed, control


def _upgrades(
    files: SocketFiles,
    release: ReleaseLayout,
    pid_file: PidFile | None,
    notifier: Notifier,
    sockets: tuple[list[BoundListener], list[BoundListener], ControlSocket | None],
) -> Upgrades:
    """How this supervisor starts a successor (``graceful upgrade``), handing it
    ``sockets``: the listeners, the health endpoint's, the control socket."""
    listeners, health, control = sockets

    def start() -> SuccessorProcess:
        handed = handed_listeners(listeners, "listener") + handed_listeners(health, "health")
        if control is not None:
            owned = (control.path, *files.control_identity)
            handed.append(Handed("control", control.path, control.sock, owned))
        return start_successor(
            release,
            handed,
            pid_file=pid_file.path if pid_file is not None else None,
            notify_socket=notifier.address,
            log_level=logger.getEffectiveLevel(),
        )

    return Upgrades(
        start,
        files,
        refusal(pid_file=pid_file.path if pid_file else None, notify_socket=notifier.address),
    )


def _decided(settings: ServiceSettings, supervision: Supervision) -> Settings:
    """What the state machine is told: each checked setting that it has a field of
    the same name for, and what is computed here (after the listeners are bound: the
    descriptor limit's reckoning counts them)."""
    return Settings(
        **_by_name(
            Settings,
            (settings, supervision),
            strategy=Strategy(settings.strategy),
            max_workers=most_workers(),
            development=settings.watching is not None,
        )
    )


def _worker_options(
    configured: Configured, *, development: bool, heartbeat: float
) -> WorkerOptions:
    """What every worker of a generation ``configured`` so is told: each setting
    that it has a field of the same name for, and the entry's and backend's options."""
    return WorkerOptions(
        **_by_name(
            WorkerOptions,
            (configured.settings,),
            entry_options=configured.entry_options,
            backend_options=configured.backend_options,
            report_only=development,
            heartbeat=heartbeat,
        )
    )


def _by_name(receiver: type[Any], groups: tuple[Any, ...], **computed: Any) -> dict[str, Any]:
    """The keyword arguments of ``receiver``: each setting of ``groups`` that it has a
    field of the same name for, then ``computed``."""
    fields = {field.name for field in dataclasses.fields(receiver)}
    named = {
        field.name: getattr(group, field.name)
        for group in groups
        for field in dataclasses.fields(group)
        if field.name in fields
    }
    return {**named, **computed}


def _finish(control: ControlServer | None, code: int, clean_up: Callable[[], None]) -> None:
    """The supervisor's last steps, however it ended: answer the control socket's
    backlog, release what was bound and claimed, kill any child left, and tell the
    ``stop --wait`` clients the exit status."""
    if control is not None:
        control.last_words()
    clean_up()
    _end_leftover_children()
    if control is not None:
        control.tell_exit(code)


def _adopt_release(release_link: str | os.PathLike[str] | None) -> ReleaseLayout:
    """The release layout, checked: its interpreter and working directory are there.

    Raises:
        ConfigError: for a ``release_link`` that is not a link to a directory.
        ReleaseError: for what is missing.
    """
    release = ReleaseLayout.adopt(release_link)
    release.resolve()
    return release


def _check_preload(settings: ServiceSettings) -> None:
    if settings.preload and not become_subreaper():
        raise ConfigError(
            "preload=True needs this process to become a child subreaper "
            "(prctl PR_SET_CHILD_SUBREAPER, Linux 3.4 and later), and it could not"
        )


def _announce(
    listeners: list[BoundListener], health: list[BoundListener], release: ReleaseLayout
) -> None:
    """Log where the service listens, its health endpoint and its release link."""
    for listener in listeners:
        logger.info(
            "listening on %s (listen spec %r)", format_address(listener.address), listener.spec
        )
    for listener in health:
        logger.info("health endpoint on http://%s/ready", format_address(listener.address))
    if release.link is not None:
        logger.info(
            "release link %s: each worker starts from the release it names then (now %s)",
            release.link,
            release.release(),
        )


def _end_leftover_children() -> None:
    """Kill and reap whatever multiprocess child is still alive: nothing this
    supervisor started may hold its exit (multiprocess joins its children at
    interpreter exit). Each kind of child is stopped by its owner first; this is the
    net under them, and says so when it catches anything."""
    for child in multiprocess.active_children():
        logger.warning("killing %s (PID %s), left running at the stop", child.name, child.pid)
        with contextlib.suppress(Exception):
            child.kill()
            child.join(5)


def _development_terminal(watch: Watch | None) -> DevTerminal | None:
    """With ``watch``: the terminal that reports each reload in one line (and the
    supervisor's own account of reloads left out of its log)."""
    if watch is None:
        return None
    terminal = DevTerminal()
    terminal.watching(watch)
    quiet_reload_narrative()
    return terminal


def _main_directory() -> str:
    """The directory of the script (or ``-m`` module) the user ran: what ``watch``
    follows by default."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return os.path.dirname(os.path.abspath(path)) if path else os.getcwd()
