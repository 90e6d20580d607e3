"""uvicorn inside a graceful worker: readiness, keep-alive-aware drain, signals.

Of what this uses, only some is uvicorn's documented API: ``Config`` and its
options (``timeout_graceful_shutdown`` among them), ``Server`` and ``serve()``.
The rest is uvicorn's internals, listed with the reason for each in
:mod:`graceful.base.hooks` and checked by ``tests/test_hooks.py`` against the oldest and the
newest uvicorn that ``pyproject.toml`` allows (``nox -s servers``); uvicorn's own
protocol tests run against these classes too (``nox -s uvicorn_suite``).

* :class:`GracefulUvicornServer` subclasses ``uvicorn.Server``. It reports ready
  once ``startup()`` (internal) has run the lifespan startup and created the
  servers on graceful's listeners. It leaves signals to graceful by overriding
  ``capture_signals`` (internal), and it is stopped by ``should_exit`` (internal,
  though widely used as uvicorn's programmatic stop).
* The HTTP protocol classes (subclasses of uvicorn's internal h11 and httptools
  protocols) are passed as ``Config(http=...)``, which accepts a class. uvicorn's
  own ``shutdown()`` closes idle keep-alive connections at once. A client that
  sends its next request at that moment loses it, which is the loss measured
  against gunicorn's uvicorn worker. uvicorn's h11 protocol also closes a
  connection after an in-flight response without saying ``Connection: close``.
  Our subclasses never close a connection the client may still be using. Once the
  drain begins, every response that has not started yet carries
  ``Connection: close``, and the connection closes after it. A connection that
  stays idle is closed by uvicorn's keep-alive timeout, as it is outside a
  reload, or when the drain deadline cancels what is left.
* Logging: ``Config`` is built with ``log_config=None`` (so that building it
  configures nothing), then given the logging configuration and told to apply it
  with ``configure_logging()`` (a public method, though undocumented), which is
  what ``Config`` itself does. Without a ``log_config`` of the user's, it is
  uvicorn's ``LOGGING_CONFIG`` with graceful's formatters (:func:`logging_config`).
  In the supervisor the options are only checked (:func:`check_options`): the
  user's configuration is never applied there.
* The WebSocket protocol classes (subclasses of uvicorn's internal ones) are
  passed as ``Config(ws=...)``. uvicorn closes every WebSocket at the start of a
  drain. Ours stay open until just before the drain deadline and are then closed
  with code 1012 ("service restart").
"""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import copy
import importlib
import importlib.util
import json
import logging
import os
import re
import socket
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import uvicorn
import uvicorn.config
import uvicorn.logging
from uvicorn.protocols.http.flow_control import CLOSE_HEADER
from uvicorn.protocols.http.h11_impl import H11Protocol

from graceful.base.errors import ConfigError, one_line, shown_path
from graceful.base.log import JsonFormatter, Timestamped, log_format, start_failures_logged
from graceful.base.tasks import run_beside
from graceful.child.context import Context

#: uvicorn options that graceful owns: the listeners, the process model, reloading.
RESERVED_OPTIONS = frozenset(
    {"host", "port", "uds", "fd", "workers", "reload", "reload_dirs", "app", "factory"}
)


class _DrainPolicy:
    """What both draining HTTP protocols do when uvicorn asks a connection to shut
    down: keep it open, and make the next response that starts say
    ``Connection: close``.

    A response that has not started gets the header in its cycle's default headers
    (a list of its own: uvicorn shares the original with every connection), and both
    protocols then close the connection after it. One that already started finishes
    as keep-alive, and the next request on the connection is answered with the
    header.

    A connection upgraded to a WebSocket during the drain missed uvicorn's call to
    ``shutdown()`` on every connection: its WebSocket protocol is told as it takes
    over, so it too is closed at the drain deadline (its handshake goes on). The
    deadline counts from when the drain began, not from the upgrade: a WebSocket
    opened late in the drain must close before the worker's own deadline."""

    _draining = False
    _drain_began = 0.0
    transport: asyncio.Transport
    cycle: Any

    def shutdown(self) -> None:
        if not self._draining:
            self._draining = True
            self._drain_began = asyncio.get_running_loop().time()
        self._announce_close()

    def _announce_close(self) -> None:
        cycle = self.cycle
        if (
            cycle is not None
            and not cycle.response_started
            and CLOSE_HEADER not in cycle.default_headers
        ):
            cycle.default_headers = [*cycle.default_headers, CLOSE_HEADER]

    def _shut_down_upgraded(self) -> None:
        if self._draining:
            upgraded: Any = self.transport.get_protocol()
            if upgraded is not self:
                if hasattr(upgraded, "keep_until_deadline"):
                    upgraded.keep_until_deadline(self._drain_began)
                else:
                    upgraded.shutdown()


class DrainingH11Protocol(_DrainPolicy, H11Protocol):
    """uvicorn's h11 protocol, made to drain keep-alive connections without losing a
    request (see the module docstring)."""

    def handle_events(self) -> None:
        super().handle_events()
        if self._draining:
            self._announce_close()

    def handle_websocket_upgrade(self, event: Any) -> None:
        super().handle_websocket_upgrade(event)
        self._shut_down_upgraded()


def _draining_httptools_protocol() -> type[Any] | None:
    """The httptools variant, if httptools is installed."""
    if importlib.util.find_spec("httptools") is None:
        return None
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # noqa: PLC0415

    class DrainingHttpToolsProtocol(_DrainPolicy, HttpToolsProtocol):
        """uvicorn's httptools protocol, draining like :class:`DrainingH11Protocol`."""

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            if self._draining:
                self._announce_close()

        def handle_websocket_upgrade(self) -> None:
            super().handle_websocket_upgrade()
            self._shut_down_upgraded()

    return DrainingHttpToolsProtocol


def draining_protocol(http: str) -> type[Any]:
    """The draining protocol class for uvicorn's ``http`` option ("auto", "h11",
    "httptools")."""
    if http == "h11":
        return DrainingH11Protocol
    httptools = _draining_httptools_protocol()
    if http == "httptools":
        if httptools is None:
            raise ConfigError("http='httptools' needs httptools: pip install httptools")
        return httptools
    if http == "auto":
        return httptools or DrainingH11Protocol
    raise ConfigError(f"uvicorn option http={http!r}: graceful supports 'auto', 'h11', 'httptools'")


_WS_IMPLEMENTATIONS = {
    "websockets": (
        "websockets",
        "uvicorn.protocols.websockets.websockets_impl",
        "WebSocketProtocol",
    ),
    "websockets-sansio": (
        "websockets",
        "uvicorn.protocols.websockets.websockets_sansio_impl",
        "WebSocketsSansIOProtocol",
    ),
    "wsproto": ("wsproto", "uvicorn.protocols.websockets.wsproto_impl", "WSProtocol"),
}


def draining_websocket_protocol(ws: str) -> type[Any] | str:
    """The WebSocket protocol class for uvicorn's ``ws`` option, made to keep open
    WebSockets until the drain deadline.

    uvicorn's own ``shutdown()`` closes every open WebSocket with code 1012 the
    moment the drain starts. Ours keeps an open one until just before the drain
    deadline (``timeout_graceful_shutdown``, which graceful sets to
    ``drain_timeout``), then closes it the same way (1012, "service restart"). What
    is not open is shut down as uvicorn does at once: a handshake still pending is
    answered 500, a connection already closing is closed. Without a deadline
    (``timeout_graceful_shutdown=None``, a plain ``uvicorn.Server``) nothing is kept.

    ``"auto"`` picks what uvicorn's own ``auto`` picks: websockets' sans-I/O
    implementation if websockets is installed, else wsproto.
    """
    if ws == "none":
        return ws
    if ws == "auto":
        available = [
            name for name in ("websockets-sansio", "websockets", "wsproto") if _can_use(name)
        ]
        if not available:
            return "none"
        ws = available[0]
    if ws not in _WS_IMPLEMENTATIONS:
        raise ConfigError(
            f"uvicorn option ws={ws!r}: graceful supports 'auto', 'none', "
            + ", ".join(repr(name) for name in _WS_IMPLEMENTATIONS)
        )
    package, module_name, class_name = _WS_IMPLEMENTATIONS[ws]
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"ws={ws!r} needs {package}: pip install {package}")
    if importlib.util.find_spec(module_name) is None:
        raise ConfigError(f"ws={ws!r} needs a newer uvicorn (this one is {uvicorn.__version__})")
    base = getattr(importlib.import_module(module_name), class_name)

    class DrainingWebSocketProtocol(base):  # type: ignore[misc, valid-type]
        """Keeps an open WebSocket through the drain; closes it at the deadline."""

        _graceful_close: asyncio.TimerHandle | None = None

        def shutdown(self) -> None:
            if _websocket_is_open(self):
                self.keep_until_deadline(asyncio.get_running_loop().time())
            else:
                super().shutdown()

        def keep_until_deadline(self, drain_began: float) -> None:
            """Shut this connection down just before the deadline of the drain that
            began at ``drain_began`` (event-loop time; an open WebSocket is closed
            with 1012), whatever its state now; at once if there is no deadline or
            it is already that late."""
            timeout = self.config.timeout_graceful_shutdown
            if timeout is None:
                super().shutdown()
            elif self._graceful_close is None:
                close_at = drain_began + timeout - min(1.0, timeout * 0.1)
                self._graceful_close = asyncio.get_running_loop().call_at(
                    close_at, self._close_at_deadline
                )

        def _close_at_deadline(self) -> None:
            if not self.transport.is_closing():
                super().shutdown()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._graceful_close is not None:
                self._graceful_close.cancel()
            super().connection_lost(exc)

    DrainingWebSocketProtocol.__name__ = f"Draining{class_name}"
    DrainingWebSocketProtocol.__qualname__ = f"Draining{class_name}"
    return DrainingWebSocketProtocol


def _can_use(ws: str) -> bool:
    """True if both uvicorn's module for ``ws`` and the library it needs are there."""
    package, module_name, _ = _WS_IMPLEMENTATIONS[ws]
    return (
        importlib.util.find_spec(package) is not None
        and importlib.util.find_spec(module_name) is not None
    )


def _websocket_is_open(protocol: Any) -> bool:
    """True once the handshake is complete and no close frame has been sent."""
    if hasattr(protocol, "handshake_complete"):  # wsproto, websockets-sansio
        return bool(protocol.handshake_complete) and not protocol.close_sent
    return bool(getattr(protocol, "open", False))  # legacy websockets


class GracefulUvicornServer(uvicorn.Server):
    """A ``uvicorn.Server`` that reports readiness to graceful and leaves signals alone."""

    def __init__(self, config: uvicorn.Config, context: Context) -> None:
        super().__init__(config)
        self._context = context

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The worker's signals belong to graceful: SIGTERM drains through the
        # context, SIGINT and SIGHUP are ignored. uvicorn must not install its own.
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            await self._context.ready(parkable=True)

    def stop_accepting(self) -> None:
        """Close the listening servers and start every connection's drain now (see
        the module docstring), the lifespan and the event loop going on."""
        for accepting in getattr(self, "servers", []):
            accepting.close()
        self._context.listeners_closed()
        for connection in list(self.server_state.connections):
            connection.shutdown()

    async def resume(self, sockets: list[socket.socket]) -> None:
        """Accept again, on ``sockets``, after :meth:`stop_accepting` (a parked worker
        resumed by a rollback): new servers, with the protocol and app state that
        ``startup()`` gave the first ones."""
        config, loop = self.config, asyncio.get_running_loop()

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            protocol: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
                config=config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
                _loop=_loop,
            )
            return protocol

        self.servers = [
            await loop.create_server(
                create_protocol, sock=sock, ssl=config.ssl, backlog=config.backlog
            )
            for sock in sockets
        ]
        await self._context.ready(parkable=True)


def warm_up(options: dict[str, Any]) -> None:
    """Import, ahead of any app, what serving with ``options`` imports: the HTTP and
    WebSocket protocols, the lifespan, the event loop (for a warm standby, see
    :mod:`graceful.spawn.standby`). Best effort: what cannot be imported now fails, as before,
    when the worker serves."""
    with contextlib.suppress(Exception):
        draining_protocol(options.get("http", "auto"))
    with contextlib.suppress(Exception):
        draining_websocket_protocol(options.get("ws", "auto"))
    lifespan = uvicorn.config.LIFESPAN.get(options.get("lifespan", "auto"))
    if lifespan is not None:
        with contextlib.suppress(Exception):
            importlib.import_module(lifespan.partition(":")[0])


def uvicorn_config(app: Any, drain_timeout: float, options: dict[str, Any]) -> uvicorn.Config:
    """A uvicorn ``Config`` for one worker, with graceful's draining protocol, its
    logging configured (the user's ``log_config``, else :func:`logging_config`).

    Whatever the user's logging configuration does to existing loggers, graceful's
    stay enabled: its warnings and errors (a failed reload, a worker's crash) are
    never silenced by it.

    Raises:
        ConfigError: for an option uvicorn refuses, or a ``log_config`` it cannot apply.
    """
    log_config = options.get("log_config", _OURS)
    config = _config(app, drain_timeout, {**options, "log_config": None})
    config.log_config = logging_config() if log_config is _OURS else log_config
    try:
        config.configure_logging()
    except Exception as exc:
        raise ConfigError(
            f"uvicorn cannot apply log_config={_shown(log_config)}: {one_line(exc)}"
        ) from None
    finally:
        keep_graceful_loggers_enabled()
    return config


def check_options(app: str, drain_timeout: float, options: dict[str, Any]) -> None:
    """Refuse, in the supervisor, the options a worker's :func:`uvicorn_config` would,
    without configuring the supervisor's logging: a ``log_config`` file must exist and
    parse, but is not applied (it is the workers')."""
    _config(app, drain_timeout, {**options, "log_config": None})
    check_log_config(options.get("log_config"))


def _config(app: Any, drain_timeout: float, options: dict[str, Any]) -> uvicorn.Config:
    clash = sorted(RESERVED_OPTIONS & options.keys())
    if clash:
        raise ConfigError(
            f"uvicorn option {clash[0]!r} is graceful's to set: use listen=, workers= "
            "and SIGHUP instead"
        )
    settings = dict(options)
    settings["http"] = draining_protocol(settings.get("http", "auto"))
    settings["ws"] = draining_websocket_protocol(settings.get("ws", "auto"))
    settings.setdefault("timeout_graceful_shutdown", drain_timeout)
    try:
        return uvicorn.Config(app, **settings)
    except TypeError as exc:
        raise ConfigError(f"uvicorn does not accept these options: {exc}") from None


#: no ``log_config`` given: graceful's (:func:`logging_config`)
_OURS: Any = object()


def _shown(log_config: object) -> str:
    if isinstance(log_config, str | os.PathLike):
        return repr(os.fspath(log_config))
    return f"<{type(log_config).__name__}>"


def logging_config() -> dict[str, Any]:
    """uvicorn's default logging configuration with graceful's formats: in ``text``,
    uvicorn's own lines prefixed with the time as graceful's are; in ``json``, one
    JSON object per line (:class:`graceful.base.log.JsonFormatter`)."""
    config: dict[str, Any] = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    formatters: dict[str, Any] = config["formatters"]
    if log_format() == "json":
        for name in formatters:
            formatters[name] = {"()": JsonFormatter}
        return config
    for name, base in (
        ("default", uvicorn.logging.DefaultFormatter),
        ("access", uvicorn.logging.AccessFormatter),
    ):
        formatters[name]["()"] = type(f"Timestamped{base.__name__}", (Timestamped, base), {})
    return config


def keep_graceful_loggers_enabled() -> None:
    """Enable again the ``graceful`` loggers that a logging configuration disabled
    (``disable_existing_loggers``, true by default in a dictionary configuration):
    their handlers are left as they are."""
    for name in ("graceful", *logging.root.manager.loggerDict):
        if name == "graceful" or name.startswith("graceful."):
            logging.getLogger(name).disabled = False


def check_log_config(log_config: object) -> None:
    """Refuse a ``log_config`` file uvicorn could not read: missing, unreadable, or
    not JSON, YAML or an INI file as its name says (what it configures is checked
    when a worker applies it). Other kinds (a dictionary, a parser) pass.

    Raises:
        ConfigError: naming the file and why.
    """
    if not isinstance(log_config, str | os.PathLike):
        return
    path = os.fspath(log_config)
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"log_config {path!r}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        if path.endswith(".json"):
            loaded = json.loads(text)
        elif path.endswith((".yaml", ".yml")):
            try:
                yaml = importlib.import_module("yaml")  # only for a YAML file
            except ImportError:
                raise ConfigError(
                    f"log_config {path!r} is YAML: it needs PyYAML (pip install pyyaml)"
                ) from None
            loaded = yaml.safe_load(text)
        else:
            parser = configparser.ConfigParser()
            parser.read_string(text, source=path)
            loaded = dict.fromkeys(parser.sections(), True)
            missing = [key for key in ("formatters", "handlers", "loggers") if key not in loaded]
            if missing:
                raise ConfigError(f"log_config {path!r} has no [{missing[0]}] section")
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"log_config {path!r} cannot be read: {one_line(exc)}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"log_config {path!r} must hold a mapping (a logging dictConfig)")


async def serve_uvicorn(
    context: Context, app: Any, drain_timeout: float, options: dict[str, Any]
) -> None:
    """Serve ``app`` with uvicorn on the context's listeners until shutdown is requested.

    Raises:
        ConfigError: if the lifespan startup fails (uvicorn logs the app's error).
    """
    config = uvicorn_config(app, drain_timeout, options)
    server = GracefulUvicornServer(config, context)
    # uvicorn counts every request it reads (for its own --limit-max-requests)
    context.count_requests_with(lambda: server.server_state.total_requests)
    if not start_failures_logged() and "log_level" not in options:
        # development mode: the supervisor's one line per reload replaces uvicorn's
        # start and stop narrative (its warnings, errors and access log stay)
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)

    async def follow_turns() -> None:
        while True:
            await context.wait_shutdown()
            # Stop accepting and start the drain now rather than at uvicorn's next
            # 0.1 s tick, so that new connections go to the new generation at once
            # and every response that starts from now on announces its close.
            # (uvicorn's own shutdown does both again; closing a server and our
            # protocols' shutdown() are idempotent.) Open WebSockets close
            # themselves at the drain deadline.
            server.stop_accepting()
            if not context.parking:
                break
            # Parked: the event loop, the lifespan and the connections go on; the
            # drain deadline is ours to enforce until a resume or the final stop.
            async with anyio.create_task_group() as parked:
                parked.start_soon(give_up_at_deadline, context.drain_deadline)
                resumed = await context.wait_resume()
                parked.cancel_scope.cancel()
            if not resumed:
                break
            await server.resume([listener.socket for listener in context.listeners])
        server.should_exit = True

    async def give_up_at_deadline(deadline: float | None) -> None:
        # Requests still running when a parked worker's drain ends would have to be
        # cancelled, and a WSGI app's thread cannot be: such a worker is not kept for
        # a rollback. It says why and exits as a drained worker does.
        if deadline is not None:
            await anyio.sleep_until(deadline)
            if server.server_state.tasks:
                await context.cannot_resume(
                    f"{len(server.server_state.tasks)} request(s) still running at its "
                    "drain deadline"
                )

    async def serve() -> None:
        # uvicorn logs a failed lifespan startup (and exits) rather than raising it:
        # keep the error to report it in one line, and in development mode (where
        # the supervisor prints that line) keep it out of uvicorn's own log
        failure = LifespanFailure(lambda: server.started)
        uvicorn_logger = logging.getLogger("uvicorn.error")
        uvicorn_logger.addHandler(failure)
        quiet = not start_failures_logged()
        if quiet:
            uvicorn_logger.addFilter(failure.hide_until_started)
        try:
            await server.serve(sockets=[listener.socket for listener in context.listeners])
        except SystemExit:
            if server.started:
                raise
            raise ConfigError(
                f"the ASGI app's lifespan startup failed: {failure.describe()}"
            ) from None
        finally:
            uvicorn_logger.removeHandler(failure)
            uvicorn_logger.removeFilter(failure.hide_until_started)

    await run_beside(serve, follow_turns)


class LifespanFailure(logging.Handler):
    """Keeps the errors uvicorn logs while it starts (a failed lifespan startup is
    logged, not raised), to name the failure in one line. Once the server has
    started it keeps nothing: a record holds its traceback, and with it the frames'
    variables, and a server logs an error per failed request."""

    def __init__(self, started: Callable[[], bool]) -> None:
        super().__init__(logging.ERROR)
        self.started = started
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self._keep(record)

    def _keep(self, record: logging.LogRecord) -> None:
        if not self.started() and len(self.records) < _KEPT_AT_MOST:
            self.records.append(record)

    def hide_until_started(self, record: logging.LogRecord) -> bool:
        """A logger filter: until the server has started, keep the errors (they are
        reported) and let only lesser records through."""
        if record.levelno >= logging.ERROR and not self.started():
            self._keep(record)
            return False
        return True

    def describe(self) -> str:
        """The error as one line, with the file and line it was raised at when known
        (its error is logged above in full)."""
        for record in self.records:
            if record.exc_info and record.exc_info[1] is not None:
                return one_line(record.exc_info[1], where=True)
        # an app that reports the failure itself (Starlette) sends its traceback as
        # the message; uvicorn's own "Application startup failed" follows it
        traced = [record for record in self.records if "Traceback" in record.getMessage()]
        records = traced or self.records
        text = records[0].getMessage() if records else ""
        lines = [line for line in text.strip().splitlines() if line.strip()]
        if not lines:
            return "(its error is logged above)"
        frames = _TRACEBACK_FRAME.findall(text)
        where = f" ({shown_path(frames[-1][0])}, line {frames[-1][1]})" if frames else ""
        return lines[-1].strip() + where


#: The start-up errors a :class:`LifespanFailure` keeps.
_KEPT_AT_MOST = 8

#: ``File "app.py", line 12`` in a formatted traceback.
_TRACEBACK_FRAME = re.compile(r'File "([^"]+)", line (\d+)')
