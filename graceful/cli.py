"""The ``graceful`` command line (also ``python -m graceful``).

    graceful serve pkg.module:app --listen 127.0.0.1:8080 [--workers N] [--watch] ...
    graceful check pkg.module:app [serve's options]
    graceful run pkg.module:main [--pid-file PATH] [--watch]
    graceful reload --pid-file PATH [--wait [--through-probation] [--timeout S]]
    graceful rollback --pid-file PATH [--timeout S]
    graceful scale N --pid-file PATH [--wait [--timeout S]]
    graceful upgrade --pid-file PATH [--wait [--through-probation] [--timeout S]]
    graceful stop --pid-file PATH [--wait [--timeout S]]
    graceful status --pid-file PATH [--json]

Usage errors print one line and exit 2; a service that fails to start exits as
:meth:`graceful.Service.run` does.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO

from graceful.api.asgi import asgi_service
from graceful.api.configuration import (
    Sources,
    as_reloaded,
    environment_of,
    gather,
    read_again,
)
from graceful.api.service import Service, service_settings, supervise
from graceful.base.errors import ConfigError, GracefulError
from graceful.base.log import configure, ensure_visible, logger
from graceful.code.entry import import_module, module_exists, walk
from graceful.control.client import Control, NoControlSocket
from graceful.control.pidfile import signal_supervisor
from graceful.core.answers import OUTCOMES
from graceful.core.configured import Configured
from graceful.core.settings import (
    GROUPS,
    SECONDS,
    WHOLE,
    CommandLine,
    Entry,
    Server,
    ServerOptions,
    ServerSettings,
    ServiceSettings,
    Setting,
    Watch,
    checked,
    settings_of,
    shown,
    taken_by,
)
from graceful.dev.watch import with_paths


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors reduced to one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


_SERVICE_MANAGER = "the service manager sets the user, group and umask (systemd's User=, ...)"

#: Options of uvicorn, gunicorn or hypercorn that ``graceful serve`` refuses, and why.
REFUSED_SERVER_OPTIONS = {
    "--check-config": "graceful check APP [options] checks the configuration and loads the app",
    "--reload-delay": "graceful reloads as soon as a change is seen, and a broken save "
    "keeps the running code serving: there is nothing to wait for",
    "--timeout-worker-healthcheck": "the heartbeat comes from each worker's event loop "
    "itself, not from a side thread that still answers while the loop is blocked: "
    "--timeout S",
    "-D": "graceful runs in the foreground; use a service manager (see docs/guides/deployment.md)",
    "--daemon": "graceful runs in the foreground; use a service manager (see "
    "docs/guides/deployment.md)",
    "--backlog": "the supervisor binds the listeners, once, with its own backlog",
    "--reuse-port": "every worker of every generation shares one socket on purpose: a "
    "reload binds nothing",
    "-k": "graceful runs the server itself: choose it with --server uvicorn|hypercorn, "
    "and hypercorn's loop with --backend asyncio|trio",
    "--worker-class": "graceful runs the server itself: choose it with --server "
    "uvicorn|hypercorn, and hypercorn's loop with --backend asyncio|trio",
    "--insecure-bind": "graceful binds every listener (--listen), each served with the "
    "same TLS options",
    "--quic-bind": "graceful does not serve HTTP/3",
    "-u": _SERVICE_MANAGER,
    "--user": _SERVICE_MANAGER,
    "-g": _SERVICE_MANAGER,
    "--group": _SERVICE_MANAGER,
    "-m": _SERVICE_MANAGER,
    "--umask": _SERVICE_MANAGER,
    "--statsd-host": "graceful sets hypercorn's logger itself; the supervisor serves "
    "Prometheus metrics at --health's /metrics",
    "--statsd-prefix": "graceful sets hypercorn's logger itself; the supervisor serves "
    "Prometheus metrics at --health's /metrics",
    "--error-log": "hypercorn's deprecated spelling: use --error-logfile",
}

#: The command-line options of the servers' own commands (uvicorn 0.54, hypercorn
#: 0.18, gunicorn 23: each one's spelling, without ``--help`` and ``--version``), for
#: the tables of what ``graceful serve`` makes of each (docs/guides/coming-from.md).
THEIR_OPTIONS: dict[str, tuple[str, ...]] = {
    "uvicorn": (
        "--host", "--port", "--uds", "--fd", "--reload", "--reload-dir",
        "--reload-include", "--reload-exclude", "--reload-delay", "--workers", "--loop",
        "--http", "--http2", "--ws", "--ws-max-size", "--ws-max-queue", "--ws-ping-interval",
        "--ws-ping-timeout", "--ws-per-message-deflate", "--lifespan", "--interface",
        "--env-file", "--log-config", "--log-level", "--access-log", "--no-access-log",
        "--use-colors", "--proxy-headers", "--no-proxy-headers", "--server-header",
        "--no-server-header", "--date-header", "--no-date-header", "--forwarded-allow-ips",
        "--root-path", "--limit-concurrency", "--backlog", "--limit-max-requests",
        "--limit-max-requests-jitter", "--timeout-keep-alive", "--timeout-graceful-shutdown",
        "--timeout-worker-healthcheck", "--ssl-keyfile", "--ssl-certfile",
        "--ssl-keyfile-password", "--ssl-version", "--ssl-cert-reqs", "--ssl-ca-certs",
        "--ssl-ciphers", "--header", "--app-dir", "--h11-max-incomplete-event-size",
        "--reset-contextvars", "--factory",
    ),
    "hypercorn": (
        "--access-log", "--access-logfile", "--access-logformat", "--backlog", "-b",
        "--bind", "--ca-certs", "--certfile", "--cert-reqs", "--ciphers", "-D", "--daemon",
        "--debug", "--error-log", "--error-logfile", "--log-file", "--graceful-timeout",
        "--read-timeout", "--max-requests", "--max-requests-jitter", "-g", "--group", "-k",
        "--worker-class", "--keep-alive", "--keyfile", "--keyfile-password",
        "--insecure-bind", "--log-config", "--log-level", "-p", "--pid", "--quic-bind",
        "--reload", "--root-path", "--server-name", "--statsd-host", "--statsd-prefix",
        "-m", "--umask", "-u", "--user", "--verify-mode", "--websocket-ping-interval",
        "-w", "--workers",
    ),
    "gunicorn": (
        "-b", "--bind", "--backlog", "-w", "--workers", "-k", "--worker-class",
        "--threads", "--worker-connections", "--max-requests", "--max-requests-jitter",
        "-t", "--timeout", "--graceful-timeout", "--keep-alive", "--reload", "--preload",
        "--reuse-port", "--chdir", "--pythonpath", "-D", "--daemon", "-e", "--env", "-p",
        "--pid", "-u", "--user", "-g", "--group", "-m", "--umask", "--forwarded-allow-ips",
        "--access-logfile", "--access-logformat", "--error-logfile", "--log-file",
        "--log-level", "--log-config", "--certfile", "--keyfile", "--ca-certs",
        "--cert-reqs", "--ciphers", "--ssl-version", "--statsd-host", "--statsd-prefix",
        "-n", "--name", "-c", "--config", "--check-config", "--worker-tmp-dir",
    ),
}  # fmt: skip


class _Refused(argparse.Action):
    """An option ``graceful serve`` knows from another server and refuses, saying why."""

    def __init__(self, *args: Any, why: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.why = why

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        parser.error(f"{option_string} is not supported: {self.why}")


def _argument(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` as an argparse type: its refusal is argparse's one-line usage error."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


#: the ``--timeout`` and ``scale N`` arguments, read as the settings' are
_SECONDS, _WHOLE = _argument(SECONDS.parse), _argument(WHOLE.parse)


def _add_settings(command: argparse.ArgumentParser, entry: Entry) -> None:
    """An option for each setting with a flag that ``entry`` takes, from its declaration
    (:mod:`graceful.core.settings`). Every default is None, for "not given": the
    declared default applies then, or for ``graceful run``, the service's own."""
    overrides = settings_of(ServiceSettings) if entry == "graceful run" else ()
    titled = {group: command.add_argument_group(title) for group, title in GROUPS.items()}
    for group in GROUPS:
        for setting in settings_of(group):
            if entry in setting.entries and setting.flag is not None:
                _add_setting(titled[group], setting, overridden=setting in overrides)


def _add_setting(command: Any, setting: Setting, *, overridden: bool) -> None:
    """The option of ``setting`` (``command``: a parser or an argument group)."""
    flag = setting.flag
    assert flag is not None
    help_text = _help(setting, overridden=overridden).replace("%", "%%")
    kind = setting.kind
    if kind.cli == "toggle":
        for spelling, value, shown_help in (
            ((flag, *setting.aliases), True, help_text),
            (("--no-" + flag.removeprefix("--"),), False, argparse.SUPPRESS),
        ):
            command.add_argument(
                *spelling,
                dest=setting.name,
                default=None,
                action="store_const",
                const=value,
                help=shown_help,
            )
        return
    how: dict[str, Any] = {}
    if kind.cli == "switch":
        how["action"] = "store_false" if setting.default is True else "store_true"
    else:
        how["metavar"] = None if kind.choices else setting.metavar
        how["choices"] = kind.choices or None
        how["type"] = _argument(setting.parse)
        if kind.cli == "repeat":
            how["action"] = "append"
    command.add_argument(
        flag, *setting.aliases, dest=setting.name, default=None, help=help_text, **how
    )


def _help(setting: Setting, *, overridden: bool) -> str:
    text = setting.help
    if setting.kind.cli == "toggle":
        negation = "--no-" + (setting.flag or "").removeprefix("--")
        state = "on" if setting.default is True else "off"
        return f"{text} ({state} by default; {negation} turns it off)"
    if setting.kind.cli == "switch" and setting.default is True:
        text = f"turn off: {text}"
    if setting.kind.cli == "repeat":
        text += "; repeatable"
    if overridden:
        return f"{text} (default: the service's own)"
    if setting.kind.cli == "switch" or setting.default in (None, ()):
        return text
    return f"{text} (default: {shown(setting.default)})"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="graceful", description="Zero-downtime restarts for Python services.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = commands.add_parser("serve", help="serve an ASGI or WSGI app (uvicorn or hypercorn)")
    serve.add_argument("app", help="the app as package.module:attribute")
    _add_settings(serve, "graceful serve")
    for flag, why in REFUSED_SERVER_OPTIONS.items():
        serve.add_argument(flag, nargs="?", action=_Refused, why=why, help=argparse.SUPPRESS)
    check = commands.add_parser(
        "check",
        help="check what graceful serve would run, without starting it: the configuration, "
        "and the app's module, imported as a worker would; exit 0 or 2",
    )
    check.add_argument("app", help="the app as package.module:attribute")
    _add_settings(check, "graceful serve")
    run = commands.add_parser("run", help="run an @graceful.service entry point")
    run.add_argument("entry", help="the service as package.module:name")
    _add_settings(run, "graceful run")

    for name, what, waits_for in (
        ("reload", "reload", "the reload has ended: exit 0 if the new code serves, 1 if not"),
        ("stop", "drain and stop", "the supervisor has exited, and exit with its status"),
    ):
        command = commands.add_parser(name, help=f"{what} the supervisor named by a PID file")
        command.add_argument("--pid-file", required=True, metavar="PATH")
        command.add_argument("--wait", action="store_true", help=f"wait until {waits_for}")
        command.add_argument(
            "--timeout",
            type=_SECONDS,
            metavar="S",
            help="with --wait: give up after S s",
        )
    reload = commands.choices["reload"]
    reload.add_argument(
        "--through-probation",
        action="store_true",
        help="implies --wait: also wait for the new generation's probation; exit 1 if "
        "it was rolled back",
    )
    rollback = commands.add_parser(
        "rollback",
        help="roll back to the parked generation (during a probation); as SIGUSR2",
    )
    rollback.add_argument("--pid-file", required=True, metavar="PATH")
    rollback.add_argument("--timeout", type=_SECONDS, metavar="S", help="give up after S s")
    scale = commands.add_parser(
        "scale", help="run N workers per generation (SIGTTIN / SIGTTOU: one more / less)"
    )
    scale.add_argument("workers", type=_WHOLE, metavar="N")
    scale.add_argument("--pid-file", required=True, metavar="PATH")
    scale.add_argument(
        "--wait",
        action="store_true",
        help="wait until N workers of the serving generation are ready",
    )
    scale.add_argument(
        "--timeout",
        type=_SECONDS,
        metavar="S",
        help="with --wait: give up after S s",
    )
    upgrade = commands.add_parser(
        "upgrade",
        help="replace the supervisor itself by a new one started from the release and "
        "the configuration on disk now, with no connection refused",
    )
    upgrade.add_argument("--pid-file", required=True, metavar="PATH")
    upgrade.add_argument(
        "--wait",
        action="store_true",
        help="wait until the successor serves: exit 0 if it does, 1 if it failed",
    )
    upgrade.add_argument(
        "--through-probation",
        action="store_true",
        help="implies --wait: also wait for the successor's probation; exit 1 if it was "
        "rolled back",
    )
    upgrade.add_argument(
        "--timeout", type=_SECONDS, metavar="S", help="with --wait: give up after S s"
    )
    status = commands.add_parser("status", help="show the state of the supervisor")
    status.add_argument("--pid-file", required=True, metavar="PATH")
    status.add_argument("--json", action="store_true", help="print it as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    if args.command in ("serve", "run"):
        # before the first line: the format goes to every process the supervisor
        # starts through its environment, the level through their bootstrap
        configure(args.log_format, args.log_level)
    # this process is the supervisor for serve and run, a client for the rest
    ensure_visible("supervisor" if args.command in ("serve", "run") else "client")
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "run":
            return _run(args)
        # a client command: a reader that closed its end early (``| head -1``) ends
        # nothing but the printing
        if sys.stdout is not None:
            sys.stdout = _PipeSafe(sys.stdout)
        if args.command == "check":
            return _check(args)
        if args.command == "status":
            return _status(args)
        if args.command == "rollback":
            return _rollback(args)
        if args.command == "scale":
            return _scale(args)
        if args.command == "upgrade":
            return _upgrade(args)
        if args.command == "reload" and args.through_probation:
            args.wait = True
        if args.timeout is not None and not args.wait:
            raise ConfigError("--timeout needs --wait")
        if args.wait:
            return _reload_and_wait(args) if args.command == "reload" else _stop_and_wait(args)
        if args.command == "stop":
            return _stop(args.pid_file)
        return _signal(args.pid_file, signal.SIGHUP)
    except ConfigError as exc:
        logger.error("%s", exc)
        return 2
    except GracefulError as exc:
        logger.error("%s", exc)
        return 1
    except TimeoutError:
        logger.error(
            "the supervisor did not answer in time (busy, or stopped?); what was asked "
            "for may still be carried out"
        )
        return 1


class _PipeSafe:
    """``stream`` (standard output), once its reader is gone, quietly discarding what
    is written, so that the command ends as it would have, with its own status."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._gone = False

    def write(self, text: str) -> int:
        if not self._gone:
            try:
                self._stream.write(text)
            except OSError as exc:
                self._reader_gone(exc)
        return len(text)

    def flush(self) -> None:
        if not self._gone:
            try:
                self._stream.flush()
            except OSError as exc:
                self._reader_gone(exc)

    def _reader_gone(self, exc: OSError) -> None:
        self._gone = True
        if not isinstance(exc, BrokenPipeError):  # a full disk, say: said, once
            logger.error("cannot write the output: %s", exc.strerror or exc)
        # what is still buffered is flushed at exit: into /dev/null, not a traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _use_app_dir(app_dir: str) -> None:
    """Put the app directory first on sys.path. (A symlinked ``$PWD`` is restored
    by the supervisor's ``ReleaseDirectory.adopt``, like any ``sys.path`` entry.)"""
    path = os.path.abspath(app_dir)
    if path not in sys.path:
        sys.path.insert(0, path)


def _enter(directory: str | None) -> None:
    """gunicorn's ``--chdir``: make ``directory`` the working directory (the workers
    start there too) and put it first on sys.path. ``$PWD`` follows, so that a
    release link in its path is still seen as one.

    Raises:
        ConfigError: naming the directory, if it cannot be entered.
    """
    if directory is None:
        return
    here = os.environ.get("PWD", "")
    try:
        if not (os.path.isabs(here) and os.path.samefile(here, ".")):
            here = os.getcwd()
        target = os.path.normpath(os.path.join(here, directory))
        os.chdir(target)
    except OSError as exc:
        raise ConfigError(f"--chdir {directory}: {exc.strerror or exc}") from None
    os.environ["PWD"] = target
    _use_app_dir(target)


def _serve(args: argparse.Namespace) -> int:
    sources = gather("graceful serve", _given(args, "graceful serve"), os.environ, os.getcwd())
    _log_as(sources.merged())
    environ = dict(os.environ)  # as the supervisor started: what each reload compares with
    configured, service = _serve_configured(args.app, sources, environ)
    return supervise(
        service,
        configured.given,
        "graceful serve",
        caller=sys._getframe(),
        environment=configured.environment,
        given=configured.given,
        reread=lambda cwd: _serve_configured(
            args.app,
            read_again(sources, "graceful serve", cwd),
            environ,
            again=cwd,
            first=configured.given,
        )[0],
    )


def _serve_configured(
    app: str,
    sources: Sources,
    environ: dict[str, str],
    *,
    again: str | None = None,
    first: dict[str, object] | None = None,
) -> tuple[Configured, Service[Any]]:
    """How ``graceful serve`` serves ``app`` with the settings of ``sources``: what
    each generation is started with, and the service. Read ``again`` (a reload, from
    that working directory): nothing is changed in this process, and the settings of
    scope ``supervisor`` are applied as ``first`` (the first reading's) gave them.

    Raises:
        ConfigError: for the first setting that can never work.
    """
    given = sources.merged()
    command = checked(CommandLine, given, "graceful serve")
    if again is None:
        _enter(command.chdir)
        _use_app_dir(command.app_dir)
    given["watch"] = _watch(command, given, app.partition(":")[0])
    listen = _listen_of(command)
    if listen is not None:
        named = max(sources.rank(name) for name in ("host", "port", "uds", "fd"))
        if "listen" in given and sources.rank("listen") == named:
            raise ConfigError("give --listen (or --bind), or --host/--port/--uds/--fd, not both")
        if "listen" not in given or sources.rank("listen") < named:
            given["listen"] = [listen]
    # what is read is compared with the first reading; what is applied is only what
    # a reload can apply
    applied = given if first is None else as_reloaded(given, first)
    command = checked(CommandLine, applied, "graceful serve")
    server = checked(ServerSettings, applied, "graceful serve").server
    server_options = _server_options(applied, server)
    if not command.access_log and server == "uvicorn":
        server_options["access_log"] = False
    if command.log_level is not None:
        server_options.update(_server_log_level(command.log_level, server == "uvicorn"))
    service = asgi_service(app, applied, server_options, again=again is not None)
    configured = Configured(
        service.settings,
        service.entry_options,
        service.backend_options,
        environment_of(applied, environ, os.getcwd() if again is None else again),
        given,
    )
    return configured, service


def _check(args: argparse.Namespace) -> int:
    """``graceful check``: the effective settings of ``graceful serve`` with these
    options, each with where it comes from, then the app loaded in a fresh
    interpreter with the workers' environment, as a worker loads it."""
    sources = gather("graceful serve", _given(args, "graceful serve"), os.environ, os.getcwd())
    configured, _ = _serve_configured(args.app, sources, dict(os.environ))
    given = configured.given
    print(f"configuration file: {sources.path or 'none'}")
    rows = []
    for setting in taken_by("graceful serve"):
        value = given.get(setting.name, setting.default)
        if setting.name == "env":
            value = tuple(sorted(configured.environment)) or ()
            rows.append(("environment", shown(value) + " (names only)", "command line, file"))
            continue
        origin = sources.origin(setting.name)
        if setting.name == "listen" and setting.name not in sources.merged():
            derived = [name for name in ("host", "port", "uds", "fd") if name in given]
            if derived:  # (uvicorn's spelling of it)
                origin = sources.origin(derived[0])
        rows.append((setting.name, _shown_value(value), origin))
    width = max(len(name) for name, _, _ in rows)
    for name, value, origin in rows:
        print(f"  {name.ljust(width)} = {value}  ({origin})")
    command = checked(CommandLine, given, "graceful serve")
    server = checked(ServerSettings, given, "graceful serve")
    code = (
        f"import sys; sys.path.insert(0, {os.path.abspath(command.app_dir)!r}); "
        "from graceful.servers.asgi import check_main; check_main(*sys.argv[1:])"
    )
    timeout = configured.settings.ready_timeout
    loader = [sys.executable, "-c", code, args.app, "1" if server.factory else "0"]
    try:
        loaded = subprocess.run(
            [*loader, server.interface, str(server.threads)],
            env={**os.environ, **configured.environment},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ConfigError(
            f"app {args.app!r} did not load within ready_timeout={timeout:g}s"
        ) from None
    said = (loaded.stdout if loaded.returncode == 0 else loaded.stderr).strip().splitlines()
    if loaded.returncode != 0:
        raise ConfigError(said[-1] if said else f"loading the app exited with {loaded.returncode}")
    print(f"app {args.app}: {said[-1] if said else 'loaded'}, imported as a worker imports it")
    return 0


def _shown_value(value: object) -> str:
    if isinstance(value, Watch):
        return ", ".join(value.paths) or "on"
    if value is None:
        return "not set"
    if isinstance(value, list):
        value = tuple(value)
    return shown(value) if not isinstance(value, bool) else str(value).lower()


def _log_as(given: dict[str, object]) -> None:
    """The log format and level the configuration file or the environment gives (the
    command line's were applied before the first line)."""
    log_format, level = given.get("log_format"), given.get("log_level")
    configure(
        log_format if isinstance(log_format, str) else None,
        level if isinstance(level, str) else None,
    )
    ensure_visible("supervisor")


def _listen_of(command: CommandLine) -> str | None:
    """The listen spec that uvicorn's --host, --port, --uds or --fd describe (uvicorn's
    defaults: 127.0.0.1 and 8000), or None if none of them is given."""
    if command.uds is not None and command.fd is not None:
        raise ConfigError("give --uds or --fd, not both")
    if command.uds is not None or command.fd is not None:
        if command.host is not None or command.port is not None:
            raise ConfigError("give --host/--port, or --uds, or --fd: one of them")
        return f"unix:{command.uds}" if command.uds is not None else f"fd:{command.fd}"
    if command.host is None and command.port is None:
        return None
    host = command.host if command.host is not None else "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    return f"{host}:{command.port if command.port is not None else 8000}"


def _server_options(given: dict[str, object], server: Server) -> dict[str, Any]:
    """The server's options given (on the command line, in the environment or in the
    configuration file), as ``server``'s ``Config`` takes them (:class:`ServerOptions`
    tells each option's attribute).

    Raises:
        ConfigError: for an option ``server`` does not have, naming it.
    """
    options = checked(ServerOptions, given, "graceful serve")
    taken: dict[str, Any] = {}
    for setting in settings_of(ServerOptions):
        if setting.name in given:
            value = getattr(options, setting.name)
            if setting.name == "headers":
                value = [[part.strip() for part in header.split(":", 1)] for header in value]
            elif setting.name == "log_config" and server == "hypercorn":
                value = _hypercorn_log_config(value)
            elif isinstance(value, tuple):
                value = list(value)
            taken[setting.server_attribute(server)] = value
    return taken


def _server_log_level(level: str, uvicorn: bool) -> dict[str, str]:
    """``--log-level`` as the server's option: uvicorn's ``log_level``, hypercorn's
    ``loglevel`` (which has no trace: debug)."""
    if uvicorn:
        return {"log_level": level}
    return {"loglevel": "DEBUG" if level == "trace" else level.upper()}


def _hypercorn_log_config(path: str) -> str:
    """A logging configuration file as hypercorn's ``logconfig`` names it: a .json or
    .toml file with its format as a prefix (an .ini file is hypercorn's default)."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix in (".json", ".toml"):
        return f"{suffix[1:]}:{path}"
    if suffix in (".yaml", ".yml"):
        raise ConfigError(f"--log-config {path}: hypercorn reads .ini, .json or .toml, not YAML")
    return path


def _run(args: argparse.Namespace) -> int:
    sources = gather("graceful run", _given(args, "graceful run"), os.environ, os.getcwd())
    given = sources.merged()
    _log_as(given)
    command = checked(CommandLine, given, "graceful run")
    _enter(command.chdir)
    _use_app_dir(command.app_dir)
    module_name, sep, name = args.entry.partition(":")
    if not sep or not module_name or not name:
        raise ConfigError(f"entry {args.entry!r} must look like 'package.module:name'")
    target = walk(import_module(module_name), name)
    if target is None:
        raise ConfigError(f"module {module_name!r} has no {name!r}")
    if not isinstance(target, Service):
        raise ConfigError(f"{args.entry} is not a @graceful.service (got {type(target).__name__})")
    environ = dict(os.environ)  # as the supervisor started: what each reload compares with

    def configured(
        sources: Sources, cwd: str, first: dict[str, object] | None = None
    ) -> Configured:
        read = sources.merged()
        # a reload applies what it can (see as_reloaded), and is compared with the first
        given = read if first is None else as_reloaded(read, first)
        overrides = {s.name: given[s.name] for s in settings_of(ServiceSettings) if s.name in given}
        watch = _watch(checked(CommandLine, given, "graceful run"), given, module_name)
        overrides.pop("watch", None)  # the switch: what it watches is ``watch``
        if watch is not None:
            overrides["watch"] = watch
        settings = service_settings(overrides, "graceful run", base=target.settings)
        return Configured(settings, {}, {}, environment_of(given, environ, cwd), read)

    first = configured(sources, os.getcwd())
    return supervise(
        target,
        given,
        "graceful run",
        caller=sys._getframe(),
        settings=first.settings,
        environment=first.environment,
        given=first.given,
        reread=lambda cwd: configured(
            read_again(sources, "graceful run", cwd), cwd, first=first.given
        ),
    )


def _given(args: argparse.Namespace, entry: Entry) -> dict[str, object]:
    """The settings given on the command line of ``entry``, by name."""
    return {
        setting.name: getattr(args, setting.name)
        for setting in taken_by(entry)
        if getattr(args, setting.name, None) is not None
    }


def _watch(command: CommandLine, given: dict[str, object], module: str) -> Watch | None:
    """``--watch`` and its options, with the default directories: the app's (or the
    entry's) module's, and ``--app-dir`` unless it holds that one."""
    if not given.get("watch") and "watch_dir" not in given:
        if "watch_include" in given or "watch_exclude" in given:
            raise ConfigError("--watch-include and --watch-exclude need --watch")
        return None
    watch = Watch(command.watch_dir, command.watch_include, command.watch_exclude)
    app_dir = os.path.abspath(command.app_dir)
    defaults = [app_dir]
    spec = importlib.util.find_spec(module) if module_exists(module) else None
    if spec is not None and spec.origin:
        directory = os.path.dirname(os.path.abspath(spec.origin))
        if not (directory + os.sep).startswith(app_dir + os.sep):
            defaults.append(directory)
    return with_paths(watch, defaults)


def _stop(pid_file: str) -> int:
    """Ask for a stop through the control socket (a second one only joins the first;
    see docs/operations/control.md), or with SIGTERM where there is none."""
    try:
        Control(pid_file).request("stop", timeout=_CLIENT_TIMEOUT)
    except NoControlSocket:
        return _signal(pid_file, signal.SIGTERM)
    return 0


#: Seconds a client command that does not wait gives the supervisor to answer.
_CLIENT_TIMEOUT = 10.0


def _signal(pid_file: str, signum: signal.Signals) -> int:
    signal_supervisor(pid_file, signum)
    return 0


def _reload_and_wait(args: argparse.Namespace) -> int:
    try:
        outcome = Control(args.pid_file).reload(
            timeout=args.timeout, through_probation=args.through_probation
        )
    except TimeoutError:
        print(f"timed out after {args.timeout:g}s (the reload goes on)", file=sys.stderr)
        return 1
    if outcome.outcome == "rolled back":
        print(f"rolled back: {outcome.cause}", file=sys.stderr)
        return 1
    if outcome.outcome == "serving":
        line = f"generation {outcome.generation} serving (ready in {outcome.seconds:.2f}s)"
        if outcome.probation is not None:
            line += {
                "passed": ", passed its probation",
                "cut short": ", its probation cut short by a newer reload",
            }.get(outcome.probation, f"; probation {outcome.probation}: {outcome.cause}")
        elif args.through_probation:
            line += ", without probation (off, or the previous generation cannot be parked)"
        print(line, file=sys.stdout if outcome.succeeded else sys.stderr)
        return 0 if outcome.succeeded else 1
    where = f"generation {outcome.generation} failed" if outcome.generation else "reload failed"
    print(f"{where}: {outcome.cause}", file=sys.stderr)
    return 1


def _rollback(args: argparse.Namespace) -> int:
    try:
        print(Control(args.pid_file).rollback(timeout=args.timeout))
    except TimeoutError:
        print(f"timed out after {args.timeout:g}s (the rollback goes on)", file=sys.stderr)
        return 1
    return 0


def _rejected_line(rolled: dict[str, Any]) -> str:
    """What ``status`` says of the code on disk after a rollback, or a reload that
    failed on its answers."""
    if rolled.get("how", "rolled back") != "rolled back":
        return (
            f"REJECTED: generation {rolled['generation']}'s reload failed "
            f"({rolled['cause']}); generation {rolled['serving_generation']} serves on. "
            "The code on disk is the rejected code: crashed workers are not restarted "
            "from it, nor is scaling up, until the next reload"
        )
    return (
        f"ROLLED BACK: generation {rolled['serving_generation']} serves again; "
        f"generation {rolled['generation']} was rolled back: {rolled['cause']}. "
        "The code on disk is the rolled-back code: crashed workers are not restarted "
        "from it until the next reload"
    )


def _answer_lines(status: dict[str, Any]) -> list[str]:
    """What the newest generations answered, and the canary being judged."""
    lines = [_answers_line(n, counted) for n, counted in (status.get("answers") or {}).items()]
    canary = status.get("canary")
    return [*lines, _canary_line(canary)] if canary else lines


def _answers_line(number: str, counted: dict[str, Any]) -> str:
    """``generation 4 answered 1,204: 2xx 1,180, 4xx 20, 5xx 4 (0.3% 5xx), p99 0.012s``"""
    outcomes = ", ".join(
        f"{outcome} {counted[outcome]:,}" for outcome in OUTCOMES if counted.get(outcome)
    )
    p99 = counted.get("p99")
    return (
        f"generation {number} answered {counted['total']:,}: {outcomes} "
        f"({counted['error_rate']:.1%} 5xx)" + (f", p99 {p99:.3f}s" if p99 is not None else "")
    )


def _canary_line(canary: dict[str, Any]) -> str:
    """The canary being judged, beside the generation it runs with."""
    line = (
        f"CANARY (a mixed fleet): generation {canary['generation']}, {canary['workers']} "
        f"worker(s) beside generation {canary['beside']}'s"
    )
    if canary["seconds_left"] is None:
        return line + "; starting"
    answers = canary.get("answers") or {}
    beside = canary.get("beside_answers") or {}
    line += (
        f"; {canary['seconds_left']:.0f}s left; {answers.get('total', 0):,} answers, "
        f"{answers.get('error_rate', 0):.1%} 5xx (generation {canary['beside']}: "
        f"{beside.get('error_rate', 0):.1%})"
    )
    if canary.get("share") is not None:
        line += f", {canary['share']:.1%} of the traffic"
    return line


def _upgrade_line(upgrade: dict[str, Any]) -> str:
    """The ``status`` line of an upgrade under way: both supervisors."""
    if upgrade.get("role") == "successor":
        other = upgrade.get("predecessor") or {}
        return (
            f"upgrade: this supervisor is the successor ({upgrade.get('phase')}); "
            f"supervisor {other.get('pid')} (graceful {other.get('graceful')}, Python "
            f"{other.get('python')}) is {other.get('state')}"
        )
    other = upgrade.get("successor") or {}
    return (
        f"upgrade: successor {other.get('pid')} (graceful {other.get('graceful')}, Python "
        f"{other.get('python')}) {upgrade.get('phase')}"
    )


def _upgrade(args: argparse.Namespace) -> int:
    wait = args.wait or args.through_probation
    if args.timeout is not None and not wait:
        raise ConfigError("--timeout needs --wait")
    try:
        ok, detail = Control(args.pid_file).upgrade(
            wait=wait, through_probation=args.through_probation, timeout=args.timeout
        )
    except TimeoutError:
        print(f"timed out after {args.timeout:g}s (the upgrade goes on)", file=sys.stderr)
        return 1
    print(detail, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def _scale(args: argparse.Namespace) -> int:
    if args.timeout is not None and not args.wait:
        raise ConfigError("--timeout needs --wait")
    control = Control(args.pid_file)
    print(control.scale(args.workers))
    if not args.wait:
        return 0
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    crashed_before: dict[str, int] | None = None
    while True:
        status = control.status()
        serving = [g for g in status["generations"] if g["state"] == "serving"]
        ready = [w for g in serving for w in g["workers"] if w["state"] == "ready"]
        crashes = {slot: crash for g in serving for slot, crash in g.get("crashes", {}).items()}
        counts = {slot: crash["count"] for slot, crash in crashes.items()}
        if crashed_before is None:
            crashed_before = counts
        rolled_back = status.get("rolled_back") or {}
        starting = [w for g in serving for w in g["workers"] if w["state"] == "starting"]
        if rolled_back and status.get("empty_slots") and not starting:
            print(
                f"{len(ready)}/{args.workers} workers ready: {status['empty_slots']} "
                "slot(s) stay empty until the next reload (the code on disk was rolled "
                f"back: {rolled_back['cause']})",
                file=sys.stderr,
            )
            return 1
        for slot, count in counts.items():
            if count != crashed_before.get(slot, 0):  # (it changes only at a crash)
                print(
                    f"worker {slot} {crashes[slot]['cause']} (the scaling goes on: the "
                    "slot is restarted with a backoff)",
                    file=sys.stderr,
                )
                return 1
        if status["workers"] != args.workers:
            print(f"scaled to {status['workers']} workers since", file=sys.stderr)
            return 1
        if len(ready) == args.workers and not starting:  # removed ones may still drain
            print(f"{args.workers} workers ready")
            return 0
        if deadline is not None and time.monotonic() >= deadline:
            print(
                f"timed out after {args.timeout:g}s with {len(ready)} workers ready "
                "(the scaling goes on)",
                file=sys.stderr,
            )
            return 1
        time.sleep(0.1)


def _stop_and_wait(args: argparse.Namespace) -> int:
    try:
        code = Control(args.pid_file).stop(timeout=args.timeout)
    except TimeoutError:
        print(f"timed out after {args.timeout:g}s (the stop goes on)", file=sys.stderr)
        return 1
    print(f"stopped (exit status {code})")
    return code


def _status(args: argparse.Namespace) -> int:
    status = Control(args.pid_file).status()
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"supervisor {status['pid']}, up {status['uptime']:.1f}s: {status['status']}")
    if "graceful" in status:
        print(f"supervisor runs graceful {status['graceful']} on Python {status['python']}")
    upgrade = status.get("upgrade")
    if isinstance(upgrade, dict):
        print(_upgrade_line(upgrade))
    if "workers" in status:
        print(
            f"workers: {status['workers']} per generation; reloads {status['strategy']}"
            + (f" (max surge {status['max_surge']})" if status["strategy"] == "rolling" else "")
            + ("; one import per generation (preload)" if status["preload"] else "")
        )
    standby = status.get("standby", {})
    if standby is None:
        print("standby: off (every worker starts cold)")
    elif standby.get("pid") is not None:
        state = "warm" if standby["warm"] else "warming up"
        print(f"standby: {standby['pid']}, {state} (the next worker start is made from it)")
    for generation in status["generations"]:
        if generation.get("graceful") or generation.get("release"):
            runs = [
                f"graceful {generation['graceful']}" if generation.get("graceful") else "",
                f"Python {generation['python']}" if generation.get("python") else "",
                f"release {generation['release']}" if generation.get("release") else "",
            ]
            interpreter = generation.get("interpreter")
            print(
                f"generation {generation['generation']} runs "
                + ", ".join(part for part in runs if part)
                + (f" ({interpreter})" if interpreter else "")
            )
        settings = generation.get("settings")
        if settings:
            print(
                f"generation {generation['generation']} configured with "
                + "; ".join(f"{name} {_shown_value(value)}" for name, value in settings.items())
            )
        if generation.get("may_be_mixed"):
            print(
                f"generation {generation['generation']}: workers started after it imported "
                "the code on disk at their own start: the fleet may be mixed (see --preload)"
            )
    for listener in status["listeners"]:
        state = "listening on" if listener.get("open", True) else "released"
        print(f"{state} {listener['address']}")
    rows = _worker_rows(status["generations"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    if status.get("probation"):
        probation = status["probation"]
        parked = probation["parked_generation"]
        print(
            f"probation: generation {probation['generation']}, "
            f"{probation['seconds_left']:.0f}s left; "
            + (
                f"generation {parked} parked (graceful rollback brings it back)"
                if parked is not None
                else "nothing left to roll back to (the parked workers are gone)"
            )
        )
    for line in _answer_lines(status):
        print(line)
    if status.get("rolled_back"):
        print(_rejected_line(status["rolled_back"]))
    last = status["last_reload"]
    if last is not None:
        print(f"last reload: generation {last['generation']} {last['outcome']}", end="")
        print(f" ({last['cause']})" if last["cause"] else f" in {last['seconds']:.3f}s")
        phases = last.get("phases") or {}
        if phases:
            print(
                "  phases (ms since asked): "
                + ", ".join(f"{phase} {ms:.1f}" for phase, ms in phases.items() if phase != "asked")
            )
    counters = status["counters"]
    recycles = counters.get("recycles") or {}
    print(
        f"reloads: {counters['reloads_serving']} serving, {counters['reloads_failed']} failed; "
        f"worker crashes: {counters['worker_crashes']}; "
        f"rollbacks: {counters.get('rollbacks', 0)}; "
        f"hung workers: {counters.get('workers_hung', 0)}; "
        "recycles: "
        + (", ".join(f"{count} by {limit}" for limit, count in recycles.items()) or "none")
    )
    return 0


def _worker_rows(generations: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """The table of ``status``: a row per worker (a dash row for a generation with none)."""
    rows: list[tuple[str, ...]] = [
        (
            "generation",
            "state",
            "worker",
            "pid",
            "worker state",
            "ready in",
            "restarts",
            "age",
            "heartbeat",
            "requests",
            "rss",
        )
    ]
    for generation in generations:
        for worker in generation["workers"] or [{}]:
            ready_in = worker.get("ready_in")
            vitals = worker.get("vitals") or {}
            state = worker.get("state", "-")
            if worker.get("hung"):
                state += " (hung)"
            elif worker.get("recycling"):
                state += f" (recycling: {worker['recycling']})"
            rows.append(
                (
                    str(generation["generation"]),
                    generation["state"],
                    str(worker.get("worker_id", "-")),
                    str(worker.get("pid") or "-"),
                    state,
                    "-" if ready_in is None else f"{ready_in:.3f}s",
                    str(worker.get("restarts", "-")),
                    _seconds_or_dash(worker.get("age")),
                    _seconds_or_dash(vitals.get("heartbeat_age"), ago=True),
                    str(vitals.get("requests", "-")),
                    f"{vitals['rss_mib']:,.1f} MiB" if "rss_mib" in vitals else "-",
                )
            )
    return rows


def _seconds_or_dash(seconds: float | None, *, ago: bool = False) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f}s ago" if ago else f"{seconds:.0f}s"
