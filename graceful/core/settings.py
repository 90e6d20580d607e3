"""Every setting of a service, declared once.

A setting is a field of one of four groups, by who takes it:
:class:`ServiceSettings` (``@graceful.service``, ``serve_asgi``, both commands),
:class:`ServerSettings` (``serve_asgi`` and ``graceful serve``), :class:`Supervision`
(``Service.run()``, ``serve_asgi``, both commands) and :class:`CommandLine` (the
commands alone). Its declaration (:func:`setting`) gives its type and default (the
field's), its :class:`Kind` (how it is checked, shown, and read from the command
line), its flag, its one-line help and its scope.

Derived from it: :data:`SETTINGS` (what the settings reference shows), :func:`checked`
(the validation of every entry point), the decorator's signature (the fields of
:class:`ServiceSettings`), the options of ``graceful serve`` and ``graceful run``,
and :func:`for_status`. Adding a setting is one field here plus its behaviour.

Pure: no I/O; the standard library and :mod:`graceful.base.errors` only.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, Literal, TypeGuard, TypeVar, dataclass_transform

from graceful.base.errors import ConfigError

#: When a setting's value is read: once, when the supervisor starts, or for each
#: generation, from the code it imports (the backend a decorated function names).
Scope = Literal["supervisor", "generation"]
#: The entry points that take settings.
Entry = Literal["@graceful.service", "Service.run", "serve_asgi", "graceful serve", "graceful run"]

Backend = Literal["asyncio", "trio"]
#: how a reload replaces a generation's workers (``graceful.core.machine.Strategy``)
StrategyName = Literal["all-at-once", "rolling"]
Server = Literal["uvicorn", "hypercorn"]
#: what kind of app ``graceful serve`` serves (:mod:`graceful.code.interfaces`)
Interface = Literal["auto", "asgi3", "asgi2", "wsgi"]
INTERFACES: tuple[Interface, ...] = ("auto", "asgi3", "asgi2", "wsgi")
#: threads that run a WSGI app: a2wsgi's own default, and about what gunicorn's
#: gthread users run per worker
DEFAULT_THREADS = 10

G = TypeVar("G")


@dataclass(frozen=True)
class Watch:
    """What ``watch=`` follows.

    Args:
        paths: directories to watch, recursively, or files (each reloads whatever its
            name); empty for the default: the directory of the main script or of the
            app's module (and ``--app-dir``).
        include: glob patterns a changed file's name must match (``*.py``).
        exclude: glob patterns of names (files or directories) to leave out, on
            top of what is always left out (``__pycache__``, ``.git``, editors'
            swap files, ...).
    """

    paths: tuple[str, ...] = ()
    include: tuple[str, ...] = ("*.py",)
    exclude: tuple[str, ...] = ()


# -- kinds: what a setting takes ------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """What a setting takes: how its type is shown, how a value is checked (and
    normalised), and how the command line reads it.

    ``check(name, value)`` returns the value to use, or raises :class:`ConfigError`
    in one line naming ``name=value``. ``parse(text)`` turns a command-line word into
    a value, or raises :class:`ConfigError` in one line naming the word. ``cli`` is
    how a flag takes it: ``"value"`` (one word, or one of ``choices``), ``"switch"``
    (no word: the flag turns the default around), ``"toggle"`` (no word: ``--NAME``
    turns it on, ``--no-NAME`` off, as uvicorn's flags do), ``"repeat"`` (one word
    per use).
    """

    label: str
    check: Callable[[str, Any], Any]
    parse: Callable[[str], Any] = str
    cli: Literal["value", "switch", "toggle", "repeat"] = "value"
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    #: what separates a list's values in an environment variable: None for any
    #: whitespace (as uvicorn's ``UVICORN_*`` variables, read by click, do)
    split: str | None = None


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_whole(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_seconds(value: object) -> TypeGuard[float]:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value) and value > 0
    except OverflowError:  # an int too large for a float
        return False


def _check_whole(name: str, value: object) -> int:
    if not _is_whole(value):
        raise ConfigError(f"{name}={_short(value)} must be a whole number of at least 1")
    return value


def _parse_whole(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{text!r} must be a whole number of at least 1")
    return int(text)


def _check_whole_or_zero(name: str, value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value == 0:
        return 0
    if not _is_whole(value):
        raise ConfigError(f"{name}={_short(value)} must be a whole number (0: off)")
    return value


def _parse_whole_or_zero(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise ConfigError(f"{text!r} must be a whole number (0: off)")
    return int(text)


def _check_seconds(name: str, value: object) -> float:
    if not _is_seconds(value):
        raise ConfigError(f"{name}={_short(value)} must be a finite number of seconds above 0")
    return float(value)


def _parse_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value):
        raise ConfigError(f"{text!r} must be a finite number of seconds above 0")
    if not value > 0:
        raise ConfigError(f"{text!r} must be above 0")
    return value


def _seconds_or_zero(zero_means: str) -> Kind:
    """Seconds, or 0 (which ``zero_means``, as shown after the refusal)."""

    def check(name: str, value: object) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool) and value == 0:
            return 0.0
        if not _is_seconds(value):
            raise ConfigError(
                f"{name}={_short(value)} must be a finite number of seconds{zero_means}"
            )
        return float(value)

    def parse(text: str) -> float:
        try:
            if float(text) == 0:
                return 0.0
        except ValueError:
            pass
        return _parse_seconds(text)

    return Kind("float (seconds; 0: off)" if zero_means else "float (seconds, or 0)", check, parse)


def _check_rate(name: str, value: object) -> float:
    """A share: a number from 0 to 1 (0: off)."""
    # (the range first: an int too large for a float is out of it, and isfinite()
    # would raise on it)
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ConfigError(f"{name}={_short(value)} must be a share from 0 to 1, as 0.05 (0: off)")
    return float(value)


def _parse_rate(text: str) -> float:
    """A share from the command line: ``0.05``, or ``5%``."""
    word = text.strip()
    percent = word.endswith("%")
    try:
        value = float(word[:-1] if percent else word) / (100 if percent else 1)
    except ValueError:
        raise ConfigError(f"{text!r} is not a share, as 0.05 or 5%") from None
    if not math.isfinite(value) or not 0 <= value <= 1:
        raise ConfigError(f"{text!r} must be a share from 0 to 1, as 0.05 or 5% (0: off)")
    return value


def _below(kind: Kind, bound: float, why: str) -> Kind:
    """``kind``, refusing values from ``bound`` up (``why``: what the bound is)."""

    def check(name: str, value: object) -> Any:
        checked = kind.check(name, value)
        if checked >= bound:
            raise ConfigError(f"{name}={_short(value)} must be below {bound:g} ({why})")
        return checked

    def parse(text: str) -> Any:
        parsed = kind.parse(text)
        if parsed >= bound:
            raise ConfigError(f"{text!r} must be below {bound:g} ({why})")
        return parsed

    return dataclasses.replace(kind, check=check, parse=parse)


def _choice(*choices: str, quoted: bool = False, optional: bool = False) -> Kind:
    """One of ``choices`` (or None, if ``optional``: not given), named in the refusal
    as ``'a' or 'b'`` (``quoted``) or as ``one of a, b``."""
    names = [repr(choice) for choice in choices]
    label = ", ".join(names[:-1]) + " or " + names[-1]
    expected = label if quoted else "one of " + ", ".join(choices)

    def check(name: str, value: object) -> object:
        if value is None and optional:
            return None
        if value not in choices:
            raise ConfigError(f"{name}={_short(value)} must be {expected}")
        return value

    return Kind(label, check, choices=choices)


def _check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name}={_short(value)} must be True or False")
    return value


def _check_path(name: str, value: object) -> object:
    """A path: None, or a string or path object naming one (what it names is checked
    where it is used: a PID file's directory, a release link)."""
    if value is None:
        return None
    try:
        text = os.fspath(value) if isinstance(value, str | os.PathLike) else None
    except TypeError:  # a path object that gives neither str nor bytes
        text = None
    if not isinstance(text, str) or "\x00" in text:
        raise ConfigError(f"{name}={_short(value)} must be a path (a string)")
    return value


def _check_listen(name: str, value: object) -> tuple[str | socket.socket, ...]:
    if value is None:
        raise ConfigError("@graceful.service needs listen=[...], as in listen=[':8080']")
    if isinstance(value, str | socket.socket):
        raise ConfigError(f"listen={value!r} must be a list of specs, as in listen=[{value!r}]")
    if not isinstance(value, list | tuple) or not all(
        isinstance(spec, str | socket.socket) for spec in value
    ):
        raise ConfigError(
            f"listen={_short(value)} must be a list of listen specs (strings) or sockets, "
            "as in listen=[':8080']"
        )
    return tuple(value)


def _check_watch(name: str, value: object) -> Watch | None:
    if value is None or value is False:
        return None
    if value is True:
        watch = Watch()
    elif isinstance(value, Watch):
        watch = value
    elif isinstance(value, list | tuple) and all(isinstance(p, str | os.PathLike) for p in value):
        watch = Watch(paths=tuple(os.fspath(p) for p in value))
    else:
        raise ConfigError(
            f"watch={value!r} must be True, a list of directories, or a graceful.Watch"
        )
    for pattern in (*watch.include, *watch.exclude):
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"watch pattern {pattern!r} must be a non-empty glob, as '*.py'")
    return watch


def _check_health(name: str, value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{name}={_short(value)} must be a listen spec, as in '127.0.0.1:9000'")
    return value


def _check_ready_hook(name: str, value: object) -> str | None:
    if value is None:
        return None
    module, sep, function = value.partition(":") if isinstance(value, str) else ("", "", "")
    if not isinstance(value, str) or not sep or not module or not function:
        raise ConfigError(f"ready hook {_short(value)} must look like 'package.module:function'")
    return value


def _check_words(name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ConfigError(f"{name}={_short(value)} must be a list of strings")
    return tuple(str(word) for word in value)


def _check_text(name: str, value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{name}={_short(value)} must be a string")
    return value


def _check_optional_whole(name: str, value: object) -> int | None:
    return None if value is None else _check_whole(name, value)


def _check_port(name: str, value: object) -> int | None:
    if value is not None and not (
        isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535
    ):
        raise ConfigError(f"{name}={_short(value)} must be a port number, 0 to 65535")
    return value


def _parse_port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) > 65535:
        raise ConfigError(f"{text!r} must be a port number, 0 to 65535")
    return int(text)


def _parse_fd(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise ConfigError(f"{text!r} must be a file descriptor number")
    return int(text)


def _check_fd(name: str, value: object) -> int | None:
    if value is not None and not (
        isinstance(value, int) and not isinstance(value, bool) and value >= 0
    ):
        raise ConfigError(f"{name}={_short(value)} must be a file descriptor number")
    return value


def _check_headers(name: str, value: object) -> tuple[str, ...]:
    words = _check_words(name, value)
    for word in words:
        field, sep, _ = word.partition(":")
        if not sep or not field.strip():
            raise ConfigError(f"header {word!r} must look like 'Name: value'")
    return words


def _check_environment(name: str, value: object) -> dict[str, str]:
    """Environment variables: a table (a mapping) of names to strings (or numbers), or
    a list of ``NAME=VALUE`` pairs (the command line's)."""
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, list | tuple) and all(
        isinstance(pair, tuple) and len(pair) == 2 for pair in value
    ):
        pairs = list(value)
    else:
        raise ConfigError(f"{name}={_short(value)} must be a table of NAME = 'value'")
    environment: dict[str, str] = {}
    for variable, text in pairs:
        if not isinstance(variable, str) or not variable or "=" in variable or "\x00" in variable:
            raise ConfigError(f"{name}: {_short(variable)} is not an environment variable's name")
        if isinstance(text, bool) or not isinstance(text, str | int | float):
            raise ConfigError(f"{name}: {variable}={_short(text)} must be a string")
        if isinstance(text, str) and "\x00" in text:
            raise ConfigError(f"{name}: {variable}={_short(text)} holds a NUL character")
        if variable in RESERVED_VARIABLES:
            raise ConfigError(
                f"{name}: {variable} is graceful's to set or keep from the workers "
                f"({RESERVED_VARIABLES[variable]})"
            )
        environment[variable] = str(text)
    return environment


#: Variables the workers' environment (``env``, an env file) may not set, and why.
RESERVED_VARIABLES = {
    "NOTIFY_SOCKET": "the supervisor alone speaks to systemd",
    "LISTEN_FDS": "the supervisor takes systemd's sockets and hands them to the workers",
    "LISTEN_PID": "the supervisor takes systemd's sockets and hands them to the workers",
    "LISTEN_FDNAMES": "the supervisor takes systemd's sockets and hands them to the workers",
    "GRACEFUL_STANDBY_PROCESS": "it marks a warm standby",
}


def _parse_assignment(text: str) -> tuple[str, str]:
    variable, sep, value = text.partition("=")
    if not sep or not variable:
        raise ConfigError(f"{text!r} must look like NAME=VALUE")
    return variable, value


WHOLE = Kind("int (at least 1)", _check_whole, _parse_whole, metavar="N")
WHOLE_OR_ZERO = Kind("int (0: off)", _check_whole_or_zero, _parse_whole_or_zero, metavar="N")
SECONDS = Kind("float (seconds)", _check_seconds, _parse_seconds, metavar="S")
SWITCH = Kind("bool", _check_flag, cli="switch")
PATH = Kind("path", _check_path, metavar="PATH")
LISTEN = Kind("list of listen specs (or sockets)", _check_listen, cli="repeat", metavar="SPEC")
WORDS = Kind("list of strings", _check_words, cli="repeat")
TOGGLE = Kind("bool", _check_flag, cli="toggle")
TEXT = Kind("string", _check_text, metavar="TEXT")
RATE = Kind("float (a share, 0 to 1, or N%; 0: off)", _check_rate, _parse_rate, metavar="R")


# -- the declaration ------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One setting, as declared: what the settings reference shows, and what every
    entry point derives its handling of the setting from."""

    name: str
    #: what it takes, as the reference shows it (``"float (seconds)"``)
    type_label: str
    #: its default, as the reference shows it
    default_label: str
    #: the command-line flag (``"--drain-timeout"``); None: no flag
    flag: str | None
    #: the environment variable that sets it; None: none
    env: str | None
    help: str
    scope: Scope
    default: object
    kind: Kind
    #: the entry points that take it
    entries: tuple[Entry, ...]
    #: the entry points where it has no default (a value must be given)
    required_in: tuple[Entry, ...] = ()
    metavar: str | None = None
    #: shown by ``graceful status`` (:func:`for_status`)
    status: bool = False
    #: other spellings of the flag, as uvicorn, hypercorn or gunicorn name it
    aliases: tuple[str, ...] = ()
    #: an environment variable other tools read for it, which sets it when nothing
    #: else does (``WEB_CONCURRENCY``, the worker count of uvicorn, gunicorn, Heroku)
    env_fallback: str | None = None
    #: a server's option (:class:`ServerOptions`): by server, the attribute of its
    #: ``Config`` it is; a server not named has no such option
    servers: tuple[tuple[Server, str], ...] = ()
    #: by server that has no such option, what to use instead (its refusal says it)
    instead: tuple[tuple[Server, str], ...] = ()

    def server_attribute(self, server: Server) -> str:
        """The attribute of ``server``'s ``Config`` this option is.

        Raises:
            ConfigError: in one line naming the option, if ``server`` has no such option.
        """
        attribute = dict(self.servers).get(server)
        if attribute is None:
            owners = " and ".join(f"{name}'s" for name, _ in self.servers)
            why = f"{self.flag} is {owners}: {server} has no such option"
            advice = dict(self.instead).get(server)
            raise ConfigError(f"{why}; {advice}" if advice else why)
        return attribute

    def check(self, value: object) -> Any:
        """``value``, normalised; raises :class:`ConfigError` in one line naming it."""
        return self.kind.check(self.name, value)

    def parse(self, text: str) -> Any:
        """The value a command-line word gives; raises :class:`ConfigError` in one line."""
        return self.kind.parse(text)

    def from_text(self, text: str) -> Any:
        """The value its environment variable's ``text`` gives (not checked yet): a
        switch's ``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``, a
        list's values separated as its kind says, or what the command line's word
        would give; raises :class:`ConfigError` in one line."""
        kind = self.kind
        if kind.cli in ("switch", "toggle"):
            word = text.strip().lower()
            if word in _TRUE or word in _FALSE:
                return word in _TRUE
            raise ConfigError(f"{text!r} must be one of 1, true, yes, on, 0, false, no, off")
        if kind.cli == "repeat":
            return [kind.parse(word.strip()) for word in text.split(kind.split) if word.strip()]
        return kind.parse(text)


_DECLARED = "graceful.setting"
_NONE: Any = object()  # no default given
_AUTO: Any = object()  # the environment variable named after the setting


def setting(
    kind: Kind,
    help: str,
    *,
    scope: Scope,
    default: Any = _NONE,
    flag: str | None = None,
    env: str | None = _AUTO,
    entries: tuple[Entry, ...] = (),
    required_in: tuple[Entry, ...] = (),
    otherwise: Any = _NONE,
    metavar: str | None = None,
    status: bool = False,
    default_label: str | None = None,
    aliases: tuple[str, ...] = (),
    env_fallback: str | None = None,
    servers: Mapping[Server, str] | None = None,
    instead: Mapping[Server, str] | None = None,
) -> Any:
    """Declare the field it is assigned to as a setting, taken by ``entries`` (its
    group's when empty). A setting that the entry points ``required_in`` require has
    no ``default`` (its field is a required keyword), and the ``otherwise`` default
    of the other entry points. A server's option (:class:`ServerOptions`) names the
    ``Config`` attribute it is for each server that has it (``servers``), and what
    to use instead with the others (``instead``)."""
    if required_in:
        if default is not _NONE or otherwise is _NONE:
            raise TypeError("a required setting has no default, and a default otherwise")
        default = otherwise
    declared = Setting(
        name="",  # the field's, once its group is built (settings_of)
        type_label=kind.label,
        default_label=shown(default) if default_label is None else default_label,
        flag=flag,
        env=env,
        help=help,
        scope=scope,
        default=default,
        kind=kind,
        entries=entries,
        required_in=required_in,
        metavar=metavar or kind.metavar,
        status=status,
        aliases=aliases,
        env_fallback=env_fallback,
        servers=tuple((servers or {}).items()),
        instead=tuple((instead or {}).items()),
    )
    if required_in:
        return dataclasses.field(metadata={_DECLARED: declared})
    return dataclasses.field(default=default, metadata={_DECLARED: declared})


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(setting,))
def _group(cls: type[G]) -> type[G]:
    """A group of settings: a frozen dataclass whose fields are declared by
    :func:`setting`, each a keyword of its constructor."""
    return dataclass(frozen=True, kw_only=True)(cls)


#: the commands that start a supervisor
_COMMANDS: tuple[Entry, ...] = ("graceful serve", "graceful run")


def shown(value: object) -> str:
    """A setting's value as help and the reference show it."""
    if isinstance(value, tuple):
        return ", ".join(map(str, value)) if value else "none"
    return str(value)


@_group
class ServiceSettings:
    """The settings of ``@graceful.service`` (its keyword arguments), checked."""

    ENTRIES: ClassVar[tuple[Entry, ...]] = ("@graceful.service", "serve_asgi", *_COMMANDS)

    listen: Sequence[str | socket.socket] = setting(
        LISTEN,
        "where to listen: HOST:PORT, :PORT, [IPv6]:PORT, unix:PATH or fd:N; bound once, "
        "by the supervisor",
        scope="supervisor",
        required_in=("@graceful.service",),
        otherwise=("127.0.0.1:8000",),
        default_label="127.0.0.1:8000 (required by @graceful.service)",
        flag="--listen",
        aliases=("-b", "--bind"),
    )
    workers: int = setting(
        WHOLE,
        "worker processes per generation, all sharing the listeners",
        scope="supervisor",
        default=1,
        flag="--workers",
        aliases=("-w",),
        env_fallback="WEB_CONCURRENCY",
    )
    ready_timeout: float = setting(
        SECONDS,
        "seconds a new generation has to report ready",
        scope="supervisor",
        default=30.0,
        flag="--ready-timeout",
    )
    drain_timeout: float = setting(
        SECONDS,
        "seconds an old generation has to finish its work before it is killed",
        scope="supervisor",
        default=30.0,
        flag="--drain-timeout",
        aliases=("--timeout-graceful-shutdown", "--graceful-timeout"),
    )
    timeout: float = setting(
        _seconds_or_zero(" (0 to turn it off)"),
        "a ready worker whose event loop misses its heartbeat this long is hung: its "
        "stack is logged, a replacement starts, and it is killed once that is ready",
        scope="supervisor",
        default=30.0,
        flag="--timeout",
        aliases=("-t",),
        metavar="S",
        status=True,
    )
    max_requests: int = setting(
        WHOLE_OR_ZERO,
        "recycle a worker after this many requests: its replacement starts first, and "
        "it drains once that is ready (0: never)",
        scope="supervisor",
        default=0,
        flag="--max-requests",
        aliases=("--limit-max-requests",),
        status=True,
    )
    max_requests_jitter: int = setting(
        WHOLE_OR_ZERO,
        "add 0 to this many requests at random to each worker's max_requests, so that "
        "workers are not recycled together",
        scope="supervisor",
        default=0,
        flag="--max-requests-jitter",
        aliases=("--limit-max-requests-jitter",),
    )
    max_worker_lifetime: float = setting(
        _seconds_or_zero(" (0 to turn it off)"),
        "recycle a worker this many seconds after it became ready",
        scope="supervisor",
        default=0.0,
        flag="--max-worker-lifetime",
        metavar="S",
        status=True,
    )
    max_worker_lifetime_jitter: float = setting(
        _seconds_or_zero(""),
        "add 0 to this many seconds at random to each worker's max_worker_lifetime",
        scope="supervisor",
        default=0.0,
        flag="--max-worker-lifetime-jitter",
        metavar="S",
    )
    max_worker_memory: int = setting(
        WHOLE_OR_ZERO,
        "recycle a worker whose unique memory (USS: what it alone holds) exceeds this "
        "many MiB, sampled every 0.5 s (0: never)",
        scope="supervisor",
        default=0,
        flag="--max-worker-memory",
        metavar="MIB",
        status=True,
    )
    max_recycling: int = setting(
        WHOLE,
        "workers of a generation recycled at the same time, each beside its replacement",
        scope="supervisor",
        default=1,
        flag="--max-recycling",
        metavar="K",
    )
    backend: Backend = setting(
        _choice("asyncio", "trio"),
        "the workers' event loop (trio: with hypercorn); a plain function runs in a thread",
        scope="generation",
        default="asyncio",
        flag="--backend",
        entries=("@graceful.service", "serve_asgi", "graceful serve"),
    )
    probation: float = setting(
        _seconds_or_zero(" (0 for none)"),
        "seconds the previous generation stays parked after a reload, resumed at once "
        "if the new one fails",
        scope="supervisor",
        default=30.0,
        flag="--probation",
        metavar="S",
    )
    rollback_on_error_rate: float = setting(
        RATE,
        "during the probation (and a canary), roll back a new generation whose share of "
        "server errors (5xx, or no answer) is, with 99% confidence, above this and above "
        "the old generation's",
        scope="supervisor",
        default=0.05,
        flag="--rollback-on-error-rate",
        metavar="R",
        status=True,
    )
    rollback_min_requests: int = setting(
        WHOLE,
        "answers a new generation gives before its rates are judged",
        scope="supervisor",
        default=100,
        flag="--rollback-min-requests",
        status=True,
    )
    rollback_on_p99: float = setting(
        # (a p99 is estimated from the duration buckets, the last of which ends at 10 s)
        _below(_seconds_or_zero(" (0 to turn it off)"), 10.0, "the p99 is measured up to 10 s"),
        "during the probation (and a canary), roll back a new generation whose p99 "
        "answer time is above this many seconds",
        scope="supervisor",
        default=0.0,
        flag="--rollback-on-p99",
        metavar="S",
        status=True,
    )
    canary: int = setting(
        WHOLE_OR_ZERO,
        "a reload first starts this many new workers (at most workers) beside the serving "
        "generation, judged for canary_seconds before the rest start (0: no canary)",
        scope="supervisor",
        default=0,
        flag="--canary",
        metavar="K",
        status=True,
    )
    canary_seconds: float = setting(
        SECONDS,
        "how long a canary is judged",
        scope="supervisor",
        default=30.0,
        flag="--canary-seconds",
        metavar="S",
        status=True,
    )
    strategy: StrategyName = setting(
        _choice("all-at-once", "rolling", quoted=True),
        "how a reload replaces the workers: all at once, or rolling, max_surge at a time",
        scope="supervisor",
        default="all-at-once",
        flag="--strategy",
        status=True,
    )
    max_surge: int = setting(
        WHOLE,
        "rolling: new workers started beyond workers at a time",
        scope="supervisor",
        default=1,
        flag="--max-surge",
        metavar="K",
        status=True,
    )
    preload: bool = setting(
        SWITCH,
        "import the code once per generation, in a template process that forks the "
        "workers (shared memory; every worker runs the same code)",
        scope="supervisor",
        default=False,
        flag="--preload",
        status=True,
    )
    standby: bool = setting(
        SWITCH,
        "keep a warm interpreter for the next reload's first worker (one idle "
        "interpreter's memory)",
        scope="supervisor",
        default=True,
        flag="--no-standby",
    )
    watch: bool | Watch | Sequence[str] | None = setting(
        Kind("bool, list of directories, or graceful.Watch", _check_watch, cli="switch"),
        "development mode: reload on each save; a broken save keeps the running code serving",
        scope="supervisor",
        default=False,
        flag="--watch",
        aliases=("--reload",),
    )

    @property
    def watching(self) -> Watch | None:
        """What ``watch`` follows (None: development mode is off)."""
        return _check_watch("watch", self.watch)


@_group
class ServerSettings:
    """The settings of the server ``serve_asgi`` runs in each worker, checked."""

    ENTRIES: ClassVar[tuple[Entry, ...]] = ("serve_asgi", "graceful serve")

    server: Server = setting(
        _choice("uvicorn", "hypercorn", quoted=True),
        "the server each worker runs: uvicorn (asyncio) or hypercorn (asyncio or trio)",
        scope="supervisor",
        default="uvicorn",
        flag="--server",
    )
    factory: bool = setting(
        SWITCH,
        "the app is a factory: call it with no arguments to build the app",
        scope="generation",
        default=False,
        flag="--factory",
    )
    interface: Interface = setting(
        _choice(*INTERFACES),
        "the app's kind; auto recognises WSGI apps (Flask, Django's wsgi.py) too",
        scope="generation",
        default="auto",
        flag="--interface",
    )
    threads: int = setting(
        WHOLE,
        "threads that run a WSGI app, per worker",
        scope="generation",
        default=DEFAULT_THREADS,
        flag="--threads",
    )
    ready_hook: str | None = setting(
        Kind("'module:function'", _check_ready_hook),
        "called in each worker after the app is imported (awaited, or run in a thread), "
        "before it is ready; if it raises, the reload fails",
        scope="generation",
        default=None,
        flag="--ready-hook",
        metavar="MODULE:FUNCTION",
    )
    count_answers: bool = setting(
        TOGGLE,
        "count each answer's status class and duration, for the judged probation, the "
        "canary, status and metrics",
        scope="generation",
        default=True,
        flag="--count-answers",
    )


@_group
class Supervision:
    """The settings of ``Service.run()``: where and how the supervisor runs, checked."""

    ENTRIES: ClassVar[tuple[Entry, ...]] = ("Service.run", "serve_asgi", *_COMMANDS)

    pid_file: str | os.PathLike[str] | None = setting(
        PATH,
        "the supervisor's PID file, written once the first generation is ready; a "
        "control socket beside it answers graceful reload, status and stop",
        scope="supervisor",
        default=None,
        flag="--pid-file",
        aliases=("-p", "--pid"),
    )
    health: str | None = setting(
        Kind("listen spec", _check_health),
        "serve /ready, /live and /metrics over HTTP there (the supervisor)",
        scope="supervisor",
        default=None,
        flag="--health",
        metavar="HOST:PORT",
    )
    stop_delay: float = setting(
        _seconds_or_zero(""),
        "after the first stop request, keep serving this long with /ready at 503, then drain",
        scope="supervisor",
        default=0.0,
        flag="--stop-delay",
        metavar="S",
    )
    release_link: str | os.PathLike[str] | None = setting(
        PATH,
        "the link a deploy switches between release directories: each worker starts "
        "from the release it names then (found by itself when not given)",
        scope="supervisor",
        default=None,
        flag="--release-link",
    )


def _check_optional_seconds(name: str, value: object) -> float | None:
    return None if value is None else _check_seconds(name, value)


#: ``ssl.VerifyMode``'s names, by value, as uvicorn's --ssl-cert-reqs and hypercorn's
#: --verify-mode take them
_CERT_REQS = ("CERT_NONE", "CERT_OPTIONAL", "CERT_REQUIRED")


def _check_cert_reqs(name: str, value: object) -> int | None:
    if value is not None and (
        not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 2
    ):
        raise ConfigError(f"{name}={_short(value)} must be 0, 1 or 2 (CERT_NONE, ...)")
    return value


def _parse_cert_reqs(text: str) -> int:
    if text in _CERT_REQS:
        return _CERT_REQS.index(text)
    if text not in ("0", "1", "2"):
        raise ConfigError(f"{text!r} must be 0, 1 or 2, or {', '.join(_CERT_REQS)}")
    return int(text)


OPTIONAL_WHOLE = Kind("int (at least 1)", _check_optional_whole, _parse_whole, metavar="N")
OPTIONAL_SECONDS = Kind("float (seconds)", _check_optional_seconds, _parse_seconds, metavar="S")

#: what hypercorn has instead of uvicorn's proxy-header trust
_PROXY_FIX = "wrap the app in hypercorn.middleware.ProxyFixMiddleware"


@_group
class ServerOptions:
    """The options of the server each worker runs, for ``graceful serve``, under the
    server's own flags (``serve_asgi`` takes them as keyword arguments of
    ``uvicorn.Config`` or ``hypercorn.Config`` already). Each declares, by server,
    the ``Config`` attribute it reaches (``servers``): an option both servers have
    means the same with either; one that ``--server`` has not is refused in one line.
    Only the options given are passed on: the server's defaults apply otherwise, and
    the defaults shown are the servers'."""

    ENTRIES: ClassVar[tuple[Entry, ...]] = ("graceful serve",)

    proxy_headers: bool = setting(
        TOGGLE,
        "trust X-Forwarded-Proto, X-Forwarded-For from --forwarded-allow-ips (uvicorn)",
        scope="generation",
        default=True,
        flag="--proxy-headers",
        servers={"uvicorn": "proxy_headers"},
        instead={"hypercorn": _PROXY_FIX},
    )
    forwarded_allow_ips: str | None = setting(
        TEXT,
        "comma-separated addresses (or *) whose proxy headers are trusted (uvicorn; "
        "default: $FORWARDED_ALLOW_IPS or 127.0.0.1)",
        scope="generation",
        default=None,
        flag="--forwarded-allow-ips",
        metavar="IPS",
        servers={"uvicorn": "forwarded_allow_ips"},
        instead={"hypercorn": _PROXY_FIX},
    )
    root_path: str | None = setting(
        TEXT,
        "the ASGI root_path, for an app mounted below a path by a proxy",
        scope="generation",
        default=None,
        flag="--root-path",
        metavar="PATH",
        servers={"uvicorn": "root_path", "hypercorn": "root_path"},
    )
    ssl_keyfile: str | None = setting(
        PATH,
        "TLS: the private key file; read by each new generation",
        scope="generation",
        default=None,
        flag="--ssl-keyfile",
        aliases=("--keyfile",),
        servers={"uvicorn": "ssl_keyfile", "hypercorn": "keyfile"},
    )
    ssl_certfile: str | None = setting(
        PATH,
        "TLS: the certificate chain file; read by each new generation",
        scope="generation",
        default=None,
        flag="--ssl-certfile",
        aliases=("--certfile",),
        servers={"uvicorn": "ssl_certfile", "hypercorn": "certfile"},
    )
    ssl_keyfile_password: str | None = setting(
        TEXT,
        "TLS: the private key's password",
        scope="generation",
        default=None,
        flag="--ssl-keyfile-password",
        aliases=("--keyfile-password",),
        servers={"uvicorn": "ssl_keyfile_password", "hypercorn": "keyfile_password"},
    )
    ssl_ca_certs: str | None = setting(
        PATH,
        "TLS: the CA certificates file (to verify clients' certificates)",
        scope="generation",
        default=None,
        flag="--ssl-ca-certs",
        aliases=("--ca-certs",),
        servers={"uvicorn": "ssl_ca_certs", "hypercorn": "ca_certs"},
    )
    ssl_cert_reqs: int | None = setting(
        Kind("0, 1 or 2 (or CERT_NONE, ...)", _check_cert_reqs, _parse_cert_reqs, metavar="MODE"),
        "TLS: whether a client certificate is required: 0, 1, 2 or CERT_NONE, "
        "CERT_OPTIONAL, CERT_REQUIRED (default: none)",
        scope="generation",
        default=None,
        flag="--ssl-cert-reqs",
        aliases=("--cert-reqs", "--verify-mode"),
        servers={"uvicorn": "ssl_cert_reqs", "hypercorn": "verify_mode"},
    )
    ssl_ciphers: str | None = setting(
        TEXT,
        "TLS: the ciphers (uvicorn's default TLSv1, hypercorn's ECDHE+AESGCM)",
        scope="generation",
        default=None,
        flag="--ssl-ciphers",
        aliases=("--ciphers",),
        servers={"uvicorn": "ssl_ciphers", "hypercorn": "ciphers"},
    )
    timeout_keep_alive: int | None = setting(
        Kind("int (seconds, at least 1)", _check_optional_whole, _parse_whole, metavar="S"),
        "close a keep-alive connection idle this long (default 5)",
        scope="generation",
        default=None,
        flag="--timeout-keep-alive",
        aliases=("--keep-alive",),
        servers={"uvicorn": "timeout_keep_alive", "hypercorn": "keep_alive_timeout"},
    )
    read_timeout: int | None = setting(
        Kind("int (seconds, at least 1)", _check_optional_whole, _parse_whole, metavar="S"),
        "close a connection that sends nothing for this long (hypercorn; default: never)",
        scope="generation",
        default=None,
        flag="--read-timeout",
        servers={"hypercorn": "read_timeout"},
    )
    limit_concurrency: int | None = setting(
        OPTIONAL_WHOLE,
        "answer 503 beyond this many connections and tasks, per worker (uvicorn)",
        scope="generation",
        default=None,
        flag="--limit-concurrency",
        servers={"uvicorn": "limit_concurrency"},
    )
    h11_max_incomplete_event_size: int | None = setting(
        Kind("int (bytes, at least 1)", _check_optional_whole, _parse_whole, metavar="BYTES"),
        "HTTP/1.1: the largest request head, in bytes (default 16384)",
        scope="generation",
        default=None,
        flag="--h11-max-incomplete-event-size",
        servers={
            "uvicorn": "h11_max_incomplete_event_size",
            "hypercorn": "h11_max_incomplete_size",
        },
    )
    http: str | None = setting(
        _choice("auto", "h11", "httptools", optional=True),
        "the HTTP protocol implementation (uvicorn; default auto)",
        scope="generation",
        default=None,
        flag="--http",
        servers={"uvicorn": "http"},
    )
    ws: str | None = setting(
        _choice("auto", "none", "websockets", "websockets-sansio", "wsproto", optional=True),
        "the WebSocket protocol implementation (uvicorn; default auto)",
        scope="generation",
        default=None,
        flag="--ws",
        servers={"uvicorn": "ws"},
    )
    ws_max_size: int | None = setting(
        Kind("int (bytes, at least 1)", _check_optional_whole, _parse_whole, metavar="BYTES"),
        "the largest WebSocket message, in bytes (default 16 MiB)",
        scope="generation",
        default=None,
        flag="--ws-max-size",
        servers={"uvicorn": "ws_max_size", "hypercorn": "websocket_max_message_size"},
    )
    ws_ping_interval: float | None = setting(
        OPTIONAL_SECONDS,
        "send a WebSocket ping this often (uvicorn's default 20, hypercorn's: never)",
        scope="generation",
        default=None,
        flag="--ws-ping-interval",
        aliases=("--websocket-ping-interval",),
        servers={"uvicorn": "ws_ping_interval", "hypercorn": "websocket_ping_interval"},
    )
    loop: str | None = setting(
        _choice("auto", "asyncio", "uvloop", optional=True),
        "the event loop (uvicorn; default auto: uvloop if installed)",
        scope="generation",
        default=None,
        flag="--loop",
        servers={"uvicorn": "loop"},
        instead={"hypercorn": "choose its loop with --backend asyncio|trio"},
    )
    lifespan: str | None = setting(
        _choice("auto", "on", "off", optional=True),
        "the ASGI lifespan protocol (uvicorn; default auto)",
        scope="generation",
        default=None,
        flag="--lifespan",
        servers={"uvicorn": "lifespan"},
    )
    headers: tuple[str, ...] = setting(
        Kind(
            "list of 'Name: value'",
            _check_headers,
            cli="repeat",
            metavar="'NAME: VALUE'",
            split="\n",  # a header's value may hold spaces, commas and semicolons
        ),
        "a response header every response gets (uvicorn)",
        scope="generation",
        default=(),
        flag="--header",
        servers={"uvicorn": "headers"},
        instead={"hypercorn": "add the header in the app (or an ASGI middleware)"},
    )
    server_header: bool = setting(
        TOGGLE,
        "send the Server header",
        scope="generation",
        default=True,
        flag="--server-header",
        servers={"uvicorn": "server_header", "hypercorn": "include_server_header"},
    )
    date_header: bool = setting(
        TOGGLE,
        "send the Date header",
        scope="generation",
        default=True,
        flag="--date-header",
        servers={"uvicorn": "date_header", "hypercorn": "include_date_header"},
    )
    server_names: tuple[str, ...] = setting(
        Kind("list of host names", _check_words, cli="repeat", metavar="HOST"),
        "answer only requests for this host name, 404 to others (hypercorn)",
        scope="generation",
        default=(),
        flag="--server-name",
        servers={"hypercorn": "server_names"},
    )
    debug: bool = setting(
        SWITCH,
        "asyncio's debug mode, with hypercorn's own checks (hypercorn)",
        scope="generation",
        default=False,
        flag="--debug",
        servers={"hypercorn": "debug"},
        instead={"uvicorn": "set PYTHONASYNCIODEBUG=1"},
    )
    log_config: str | None = setting(
        PATH,
        "a logging configuration file for the workers: .json, .yaml or .ini (uvicorn), "
        ".json, .toml or .ini (hypercorn)",
        scope="generation",
        default=None,
        flag="--log-config",
        servers={"uvicorn": "log_config", "hypercorn": "logconfig"},
    )
    access_logfile: str | None = setting(
        TEXT,
        "write the access log there, - for standard output (hypercorn; default: none)",
        scope="generation",
        default=None,
        flag="--access-logfile",
        metavar="FILE",
        servers={"hypercorn": "accesslog"},
        instead={"uvicorn": "its access log goes to standard error (see --log-config)"},
    )
    access_log_format: str | None = setting(
        TEXT,
        "the access log's format, in gunicorn's %(h)s notation (hypercorn)",
        scope="generation",
        default=None,
        flag="--access-logformat",
        metavar="FORMAT",
        servers={"hypercorn": "access_log_format"},
        instead={"uvicorn": "use --log-config"},
    )
    error_logfile: str | None = setting(
        TEXT,
        "write the error log there, - for standard error (hypercorn; default -)",
        scope="generation",
        default=None,
        flag="--error-logfile",
        aliases=("--log-file",),
        metavar="FILE",
        servers={"hypercorn": "errorlog"},
        instead={"uvicorn": "use --log-config"},
    )


@_group
class CommandLine:
    """The settings of the ``graceful serve`` and ``graceful run`` commands alone."""

    ENTRIES: ClassVar[tuple[Entry, ...]] = _COMMANDS

    host: str | None = setting(
        TEXT,
        "listen on this address (with --port: the listen spec HOST:PORT, as uvicorn's "
        "--host; default 127.0.0.1)",
        scope="supervisor",
        default=None,
        flag="--host",
        metavar="HOST",
        entries=("graceful serve",),
    )
    port: int | None = setting(
        Kind("port number", _check_port, _parse_port, metavar="PORT"),
        "listen on this port (with --host, as uvicorn's --port; default 8000)",
        scope="supervisor",
        default=None,
        flag="--port",
        entries=("graceful serve",),
    )
    uds: str | None = setting(
        PATH,
        "listen on this unix socket (the listen spec unix:PATH, as uvicorn's --uds)",
        scope="supervisor",
        default=None,
        flag="--uds",
        entries=("graceful serve",),
    )
    fd: int | None = setting(
        Kind("file descriptor", _check_fd, _parse_fd, metavar="N"),
        "listen on this inherited socket (the listen spec fd:N, as uvicorn's --fd)",
        scope="supervisor",
        default=None,
        flag="--fd",
        entries=("graceful serve",),
    )
    config: str | None = setting(
        PATH,
        "the configuration file (TOML): graceful.toml's keys, or pyproject.toml's "
        "[tool.graceful] table (default: ./graceful.toml, if there is one); re-read by "
        "each reload",
        scope="supervisor",
        default=None,
        flag="--config",
        aliases=("-c",),
        metavar="FILE",
    )
    env: dict[str, str] = setting(
        Kind("table of NAME = 'value'", _check_environment, _parse_assignment, cli="repeat"),
        "an environment variable of the workers, over the supervisor's own (the file's "
        "[env] table; gunicorn's --env)",
        scope="generation",
        default=(),
        default_label="none",
        flag="--env",
        aliases=("-e",),
        env=None,
        metavar="NAME=VALUE",
    )
    env_file: str | None = setting(
        PATH,
        "environment variables of the workers, from a .env file, read by each reload: "
        "a variable the supervisor's environment has wins, as with uvicorn",
        scope="generation",
        default=None,
        flag="--env-file",
    )
    chdir: str | None = setting(
        PATH,
        "change to this directory before loading the app, and put it first on sys.path "
        "(gunicorn's --chdir; the workers start there too)",
        scope="supervisor",
        default=None,
        flag="--chdir",
        metavar="DIR",
    )
    app_dir: str = setting(
        PATH,
        "put this directory first on sys.path",
        scope="supervisor",
        default=".",
        flag="--app-dir",
        metavar="DIR",
    )
    access_log: bool = setting(
        TOGGLE,
        "log each request (uvicorn)",
        scope="generation",
        default=True,
        flag="--access-log",
        entries=("graceful serve",),
    )
    log_level: str | None = setting(
        _choice("critical", "error", "warning", "info", "debug", "trace", optional=True),
        "the least severe lines logged: graceful's own, in the supervisor and the "
        "workers, and the server's (uvicorn's, hypercorn's); default info",
        scope="supervisor",
        default=None,
        flag="--log-level",
    )
    log_format: str | None = setting(
        _choice("text", "json", optional=True),
        "the log lines: text (each starting with the time, UTC), or one JSON object "
        "per line; the supervisor's, the workers' and uvicorn's alike (default text)",
        scope="supervisor",
        default=None,
        flag="--log-format",
        env="GRACEFUL_LOG_FORMAT",
    )
    watch_dir: tuple[str, ...] = setting(
        WORDS,
        "watch this directory instead of the app's (implies --watch)",
        scope="supervisor",
        default=(),
        flag="--watch-dir",
        aliases=("--reload-dir",),
        metavar="DIR",
    )
    watch_include: tuple[str, ...] = setting(
        WORDS,
        "names of the files that reload (a glob), with --watch",
        scope="supervisor",
        default=("*.py",),
        flag="--watch-include",
        aliases=("--reload-include",),
        metavar="GLOB",
    )
    watch_exclude: tuple[str, ...] = setting(
        WORDS,
        "names of files or directories to ignore (a glob), with --watch",
        scope="supervisor",
        default=(),
        flag="--watch-exclude",
        aliases=("--reload-exclude",),
        metavar="GLOB",
    )


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def settings_of(group: type[Any]) -> tuple[Setting, ...]:
    """The settings ``group`` declares, in order, each named after its field (and its
    environment variable, unless declared otherwise: ``GRACEFUL_<NAME>`` for a setting
    of the commands)."""
    named = []
    for field in dataclasses.fields(group):
        declared: Setting = field.metadata[_DECLARED]
        entries = declared.entries or group.ENTRIES
        env = declared.env
        if env is _AUTO:
            commands = declared.flag is not None and set(entries) & set(_COMMANDS)
            env = f"GRACEFUL_{field.name.upper()}" if commands else None
        named.append(dataclasses.replace(declared, name=field.name, entries=entries, env=env))
    return tuple(named)


#: The groups, in the order the reference and ``--help`` list them, each with its
#: title there.
GROUPS: dict[type[Any], str] = {
    ServiceSettings: "the service",
    ServerSettings: "the server",
    Supervision: "the supervisor",
    ServerOptions: "the server's options (uvicorn's and hypercorn's, under their own flags)",
    CommandLine: "this command",
}

_BY_GROUP: dict[type[Any], tuple[Setting, ...]] = {group: settings_of(group) for group in GROUPS}

#: Every setting, in the order the reference lists them.
SETTINGS: tuple[Setting, ...] = tuple(
    declared for settings in _BY_GROUP.values() for declared in settings
)


def taken_by(entry: Entry) -> tuple[Setting, ...]:
    """The settings ``entry`` takes, in order."""
    return tuple(setting for setting in SETTINGS if entry in setting.entries)


def checked(group: type[G], given: Mapping[str, object], entry: Entry) -> G:
    """``group`` with the values ``given`` (by name; names of other groups are left
    alone), each checked and normalised, and every other setting at its default.

    Raises:
        ConfigError: naming the first value that can never work, or a setting that
            ``entry`` requires and that is not given.
    """
    values: dict[str, object] = {}
    for declared in _BY_GROUP[group]:
        if declared.name in given:
            value = given[declared.name]
        else:
            value = None if entry in declared.required_in else declared.default
        values[declared.name] = declared.check(value)
    return group(**values)


def overridden(values: G, changes: Mapping[str, object], entry: Entry) -> G:
    """``values`` (a group) with ``changes``, checked as :func:`checked` does."""
    current = {
        declared.name: getattr(values, declared.name) for declared in _BY_GROUP[type(values)]
    }
    return checked(type(values), {**current, **changes}, entry)


def for_status(values: object) -> dict[str, object]:
    """The settings ``graceful status`` shows (those declared with ``status=True``),
    by name, from ``values``: any object with them as attributes (a
    :class:`ServiceSettings`, or the state machine's ``Settings``); an enum is shown
    by its value."""
    shown: dict[str, object] = {}
    for declared in SETTINGS:
        if declared.status:
            value = getattr(values, declared.name)
            shown[declared.name] = value.value if isinstance(value, Enum) else value
    return shown
