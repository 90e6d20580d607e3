"""Every name graceful uses from uvicorn, hypercorn and multiprocess beyond their
documented APIs, in one place.

graceful's servers reach into uvicorn's protocol classes and server, and into
hypercorn's configuration and log; its supervisor reads two private attributes of
multiprocess. An upgrade of one of them can remove or change such a name. Each one
is listed here, marked as documented or internal, with what graceful needs it for;
:func:`missing_hooks` checks that each still exists, and ``tests/test_hooks.py``
fails, naming the hook, when one is gone. ``nox -s servers`` runs the server tests
against the oldest and the newest uvicorn and hypercorn that ``pyproject.toml``
allows.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import warnings
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Hook:
    """One name of another library that graceful relies on.

    ``where`` is ``module:attribute.path``; an attribute path ending in ``(name=)``
    names a parameter of that callable, and one followed by ``"text"`` a piece of
    text its source must contain (for an attribute set on instances, the source of
    the method that sets it).
    """

    library: str
    where: str
    documented: bool
    needed_for: str


#: uvicorn's access log call, its arguments in this order (the text a hook looks for)
_ACCESS_LINE = '"' + """'%s - "%s %s HTTP/%s" %d'""" + '"'

HOOKS = (
    # -- uvicorn: the server ------------------------------------------------------------
    Hook("uvicorn", "uvicorn:Config(http=)", True, "our HTTP protocol class (a class is accepted)"),
    Hook("uvicorn", "uvicorn:Config(ws=)", True, "our WebSocket protocol class"),
    Hook("uvicorn", "uvicorn:Config(timeout_graceful_shutdown=)", True, "the drain deadline"),
    Hook("uvicorn", "uvicorn:Server.serve(sockets=)", False, "serving graceful's listeners"),
    Hook("uvicorn", "uvicorn:Server.startup(sockets=)", False, "readiness after startup()"),
    Hook("uvicorn", "uvicorn:Server.capture_signals", False, "keeping uvicorn's signals off"),
    Hook("uvicorn", 'uvicorn:Server.__init__"self.should_exit"', False, "the programmatic stop"),
    Hook("uvicorn", 'uvicorn:Server.__init__"self.started"', False, "readiness"),
    Hook("uvicorn", 'uvicorn:Server.__init__"self.server_state"', False, "the connections"),
    Hook("uvicorn", 'uvicorn.server:ServerState.__init__"self.connections"', False, "connections"),
    Hook("uvicorn", 'uvicorn:Server.startup"self.servers"', False, "closing the listeners"),
    Hook("uvicorn", 'uvicorn:Server._serve"self.lifespan"', False, "resuming: the app's state"),
    Hook("uvicorn", 'uvicorn:Config.load"self.http_protocol_class"', False, "resuming"),
    Hook("uvicorn", 'uvicorn:Config.load"self.ssl"', False, "resuming: the same TLS context"),
    Hook("uvicorn", 'uvicorn:Config.__init__"self.backlog"', False, "resuming: the backlog"),
    Hook("uvicorn", 'uvicorn.server:ServerState.__init__"self.tasks"', False, "parked deadline"),
    Hook(
        "uvicorn",
        'uvicorn.server:ServerState.__init__"self.total_requests"',
        False,
        "the requests served, for max_requests and status",
    ),
    Hook("uvicorn", "uvicorn:Config(log_config=)", True, "building a Config that logs nothing"),
    Hook("uvicorn", 'uvicorn:Config.configure_logging"self.log_config"', False, "logging, later"),
    Hook("uvicorn", "uvicorn.config:LOGGING_CONFIG", False, "its formats, with the time"),
    Hook("uvicorn", "uvicorn.logging:DefaultFormatter", False, "its lines, with the time"),
    Hook("uvicorn", "uvicorn.logging:AccessFormatter", False, "its access lines, with the time"),
    Hook(
        "uvicorn",
        "uvicorn.protocols.http.h11_impl:RequestResponseCycle.send" + _ACCESS_LINE,
        False,
        "an access line's arguments: client, method, path, HTTP version, status (JSON lines)",
    ),
    # -- uvicorn: the HTTP protocols ----------------------------------------------------
    Hook("uvicorn", "uvicorn.protocols.http.flow_control:CLOSE_HEADER", False, "announcing close"),
    Hook("uvicorn", "uvicorn.protocols.http.h11_impl:H11Protocol.shutdown", False, "the drain"),
    Hook(
        "uvicorn", "uvicorn.protocols.http.h11_impl:H11Protocol.handle_events", False, "the drain"
    ),
    Hook(
        "uvicorn",
        "uvicorn.protocols.http.h11_impl:H11Protocol.handle_websocket_upgrade",
        False,
        "a WebSocket upgraded during the drain",
    ),
    Hook(
        "uvicorn",
        'uvicorn.protocols.http.h11_impl:RequestResponseCycle.__init__"self.response_started"',
        False,
        "announcing close before the response starts",
    ),
    Hook(
        "uvicorn",
        'uvicorn.protocols.http.h11_impl:RequestResponseCycle.__init__"self.default_headers"',
        False,
        "announcing close",
    ),
    Hook(
        "uvicorn",
        "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.on_headers_complete",
        False,
        "the drain (httptools)",
    ),
    Hook(
        "uvicorn",
        "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.handle_websocket_upgrade",
        False,
        "a WebSocket upgraded during the drain (httptools)",
    ),
    Hook(
        "uvicorn",
        'uvicorn.protocols.http.httptools_impl:RequestResponseCycle.__init__"self.default_headers"',
        False,
        "announcing close (httptools)",
    ),
    # -- uvicorn: the WebSocket protocols -----------------------------------------------
    Hook(
        "uvicorn",
        "uvicorn.protocols.websockets.websockets_sansio_impl:WebSocketsSansIOProtocol.__init__"
        '"self.handshake_complete"',
        False,
        "is the WebSocket open",
    ),
    Hook(
        "uvicorn",
        "uvicorn.protocols.websockets.websockets_sansio_impl:WebSocketsSansIOProtocol.__init__"
        '"self.close_sent"',
        False,
        "is the WebSocket closing",
    ),
    Hook(
        "uvicorn",
        'uvicorn.protocols.websockets.wsproto_impl:WSProtocol.__init__"self.handshake_complete"',
        False,
        "is the WebSocket open (wsproto)",
    ),
    Hook(
        "uvicorn",
        'uvicorn.protocols.websockets.wsproto_impl:WSProtocol.__init__"self.close_sent"',
        False,
        "is the WebSocket closing (wsproto)",
    ),
    Hook(
        "uvicorn",
        "uvicorn.protocols.websockets.websockets_impl:WebSocketProtocol.open",
        False,
        "is the WebSocket open (legacy websockets)",
    ),
    # -- hypercorn ------------------------------------------------------------------------
    Hook("hypercorn", "hypercorn.config:Config.from_mapping", True, "the options"),
    Hook("hypercorn", "hypercorn.config:Config.graceful_timeout", True, "the drain deadline"),
    Hook("hypercorn", "hypercorn.config:Config.bind", True, "fd:// listeners"),
    Hook("hypercorn", "hypercorn.config:Config.logger_class", False, "readiness on asyncio"),
    Hook("hypercorn", "hypercorn.logging:Logger.info", False, "readiness on asyncio"),
    Hook(
        "hypercorn",
        'hypercorn.asyncio.run:worker_serve"Running on "',
        False,
        "readiness on asyncio: the log line after each listener serves",
    ),
    Hook("hypercorn", "hypercorn.asyncio:serve(shutdown_trigger=)", True, "the drain"),
    Hook("hypercorn", "hypercorn.trio:serve(shutdown_trigger=)", True, "the drain (trio)"),
    Hook("hypercorn", "hypercorn.trio:serve(task_status=)", True, "readiness on trio"),
    # -- multiprocess ---------------------------------------------------------------------
    Hook(
        "multiprocess",
        "multiprocess.resource_tracker:_resource_tracker._pid",
        False,
        "not reaping the resource tracker as an orphan (PID 1)",
    ),
    Hook(
        "multiprocess",
        'multiprocess.spawn:_main"_inheriting = True"',
        False,
        "refusing run() while a worker imports the main script",
    ),
    Hook(
        "multiprocess",
        "multiprocess.spawn:_fixup_main_from_path",
        False,
        "a worker imports the main script itself, to report what it raises",
    ),
    Hook(
        "multiprocess",
        "multiprocess.spawn:_fixup_main_from_name",
        False,
        "the same for a main script run with python -m",
    ),
    Hook(
        "multiprocess",
        'multiprocess.spawn:get_preparation_data"init_main_from_path"',
        False,
        "keeping spawn from importing the main script (dropped from a worker's data)",
    ),
    Hook(
        "multiprocess",
        'multiprocess.popen_spawn_posix:Popen._launch"spawn.get_preparation_data("',
        False,
        "where spawn reads the preparation data (wrapped while a worker starts)",
    ),
    Hook(
        "multiprocess",
        'multiprocess.spawn:get_preparation_data"sys_path="',
        False,
        "a child computes its own sys.path from its release's interpreter (dropped)",
    ),
    Hook(
        "multiprocess",
        "multiprocess.spawn:prepare\"os.chdir(data['dir'])\"",
        False,
        "a child starts in its release's working directory (data['dir'] replaced)",
    ),
    Hook(
        "multiprocess",
        "multiprocess.spawn:prepare\"process.ORIGINAL_DIR = data['orig_dir']\"",
        False,
        "a child's original directory is in its release (data['orig_dir'] replaced)",
    ),
    Hook(
        "multiprocess",
        "multiprocess.spawn:set_executable",
        True,
        "each child runs its release's interpreter",
    ),
    Hook(
        "multiprocess",
        "multiprocess.process:ORIGINAL_DIR",
        False,
        "the supervisor's original directory, anchored in its release",
    ),
)


def missing_hooks(library: str | None = None) -> list[str]:
    """One line for each hook (of ``library``, or all) that is gone, naming it; for
    a library that is not installed, nothing."""
    problems = []
    for hook in HOOKS:
        if library not in (None, hook.library):
            continue
        if importlib.util.find_spec(hook.library) is None:
            continue
        problem = _problem(hook)
        if problem is not None:
            kind = "documented" if hook.documented else "internal"
            problems.append(
                f"{hook.library} {kind} hook {hook.where} ({hook.needed_for}): {problem}"
            )
    return problems


def _problem(hook: Hook) -> str | None:
    module_name, _, path = hook.where.partition(":")
    text = None
    if '"' in path:
        path, _, text = path.partition('"')
        text = text.rstrip('"')
    parameter = None
    if path.endswith("=)"):
        path, _, parameter = path[:-2].partition("(")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # uvicorn's legacy websockets module warns
            target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        return f"module {module_name} cannot be imported ({exc})"
    parts = path.split(".")
    for index, part in enumerate(parts):
        if not hasattr(target, part):
            return f"{'.'.join(parts[: index + 1])} is gone"
        target = getattr(target, part)
    if parameter is not None:
        try:
            parameters = inspect.signature(target).parameters
        except (TypeError, ValueError):
            return "its signature cannot be read"
        if parameter not in parameters:
            return f"it has no parameter {parameter!r}"
    if text is not None:
        try:
            source = inspect.getsource(target)
        except (OSError, TypeError):
            return "its source cannot be read"
        if text not in source:
            return f"its source no longer contains {text!r}"
    return None
