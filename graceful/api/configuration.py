"""Where the commands' settings come from, and the one precedence between them.

``graceful serve`` and ``graceful run`` read each setting they take from, in order of
precedence:

1. the command line (its flag, or one of its other spellings);
2. the environment: ``GRACEFUL_<NAME>`` (``GRACEFUL_WORKERS=4``);
3. the configuration file;
4. ``WEB_CONCURRENCY``, for ``workers`` alone (the convention of uvicorn, gunicorn and
   Heroku: it sets the worker count when nothing else does);
5. the setting's default.

The ``env`` setting (the workers' environment variables) is merged name by name
instead: a variable given with ``--env`` wins over the file's.

**The configuration file** is the one ``--config`` (or ``GRACEFUL_CONFIG``) names, or
else ``graceful.toml`` in the working directory, if there is one. It is TOML: each
key is a setting's name as the settings reference lists it (``workers = 4``,
``listen = ["127.0.0.1:8000"]``, ``drain_timeout = 20``), and the table ``[env]``
holds the workers' environment variables. A file named ``pyproject.toml`` is read
from its ``[tool.graceful]`` table (and ``[tool.graceful.env]``). A project's
``pyproject.toml`` is never read unless named: it holds how a project is built and
tested, and it would otherwise become the production configuration of every
release that ships it, silently.

Every value is checked where it is read: an unknown key, a wrong type or a bad value
is one line naming the key, the file and the line (or the environment variable),
and the command exits with status 2 before anything is started.

A reload reads the file again (:func:`read_again`), and the env file: what it
applies, and what needs ``graceful upgrade``, is in docs/guides/configuration.md.
Both must be regular files (a FIFO or a device is refused: each reload reads them
again), and a default file found at the start is required by each reload: gone, it
fails the reload rather than leave the next generation without its configuration.
"""

from __future__ import annotations

import difflib
import io
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from graceful._version import pip_install
from graceful.base.errors import ConfigError
from graceful.core.settings import SETTINGS, Entry, Setting, taken_by

#: the file read when none is named, in the working directory
DEFAULT_FILE = "graceful.toml"
#: the table of a ``pyproject.toml`` that holds graceful's settings
PYPROJECT_TABLE = ("tool", "graceful")


@dataclass(frozen=True)
class Sources:
    """The settings a command was given, by where they came from (each a dict of
    checked values by setting name), and the file they were read from."""

    command_line: dict[str, object]
    environment: dict[str, object]
    file: dict[str, object] = field(default_factory=dict)
    #: the configuration file (as named, or found), or None for none
    path: str | None = None
    #: ``workers`` from ``WEB_CONCURRENCY``, when that is set
    web_concurrency: int | None = None
    #: the file as ``--config`` named it (None: the default file, if there is one)
    named: str | None = None

    def merged(self) -> dict[str, object]:
        """Every setting given, by name, each from the source that wins (see the
        module docstring)."""
        merged: dict[str, object] = {}
        if self.web_concurrency is not None:
            merged["workers"] = self.web_concurrency
        merged.update(self.file)
        merged.update(self.environment)
        merged.update(self.command_line)
        environment = {
            **_mapping(self.file.get("env")),
            **_mapping(self.command_line.get("env")),
        }
        if environment:
            merged["env"] = environment
        return merged

    def origin(self, name: str) -> str:
        """Where setting ``name``'s value comes from, as ``graceful check`` shows it."""
        if name in self.command_line:
            return "command line"
        if name in self.environment:
            return f"${_env_name(name)}"
        if name in self.file:
            return os.path.basename(self.path or "") or "file"
        if name == "workers" and self.web_concurrency is not None:
            return "$WEB_CONCURRENCY"
        return "default"

    def rank(self, name: str) -> int:
        """How strongly ``name`` was given: 3 on the command line, 2 in the
        environment, 1 in the file (or ``WEB_CONCURRENCY``), 0 not at all."""
        if name in self.command_line:
            return 3
        if name in self.environment:
            return 2
        return 1 if name in self.file else 0


def _mapping(value: object) -> dict[str, str]:
    return dict(value) if isinstance(value, Mapping) else {}


def _env_name(name: str) -> str:
    for declared in taken_by("graceful serve") + taken_by("graceful run"):
        if declared.name == name and declared.env:
            return declared.env
    return f"GRACEFUL_{name.upper()}"


def gather(
    entry: Entry, command_line: dict[str, object], environ: Mapping[str, str], cwd: str
) -> Sources:
    """The settings ``entry`` is given: ``command_line`` (checked by its parser),
    ``environ``'s, and the configuration file's (found from ``cwd``).

    Raises:
        ConfigError: one line naming the first bad value and where it is.
    """
    environment = from_environment(entry, environ)
    named = command_line.get("config", environment.get("config"))
    sources = Sources(
        command_line,
        environment,
        web_concurrency=_web_concurrency(entry, environ),
        named=os.fspath(named) if isinstance(named, str | os.PathLike) else None,
    )
    return read_again(sources, entry, cwd)


def read_again(sources: Sources, entry: Entry, cwd: str) -> Sources:
    """``sources`` with its configuration file read again (as a reload does), found
    from ``cwd`` as at the start (a relative name, or the default file, from the
    working directory of the release the service points to now); the command line
    and the environment are those the supervisor started with.

    Raises:
        ConfigError: one line naming the file, and the key and line where it can.
    """
    # the default file found at the start is read again as if named: gone (or not
    # a file) at a reload, it fails the reload rather than dropping the configuration
    named = sources.named if sources.named is not None or sources.path is None else DEFAULT_FILE
    path = config_path(named, cwd)
    return Sources(
        sources.command_line,
        sources.environment,
        read_file(path, entry) if path is not None else {},
        path,
        sources.web_concurrency,
        sources.named,
    )


def as_reloaded(given: dict[str, object], first: Mapping[str, object]) -> dict[str, object]:
    """What a reload applies of ``given`` (every setting, as read again): the
    settings of scope ``generation``; those of scope ``supervisor`` stay as
    ``first`` (the reading the supervisor started with) had them, until
    ``graceful upgrade``."""
    supervisor = {declared.name for declared in SETTINGS if declared.scope == "supervisor"}
    applied = {name: value for name, value in given.items() if name not in supervisor}
    applied.update({name: value for name, value in first.items() if name in supervisor})
    return applied


def config_path(named: object, cwd: str) -> str | None:
    """The configuration file: the one ``named`` (``--config``), absolute, or else
    :data:`DEFAULT_FILE` in ``cwd`` if it is there; None for none."""
    if isinstance(named, str | os.PathLike):
        return os.path.join(cwd, os.fspath(named))
    default = os.path.join(cwd, DEFAULT_FILE)
    return default if os.path.isfile(default) else None


def from_environment(entry: Entry, environ: Mapping[str, str]) -> dict[str, object]:
    """The settings of ``entry`` that ``environ`` gives (``GRACEFUL_<NAME>``), checked.

    Raises:
        ConfigError: naming the variable and its value.
    """
    given: dict[str, object] = {}
    for declared in taken_by(entry):
        if declared.env is None or declared.env not in environ:
            continue
        text = environ[declared.env]
        try:
            given[declared.name] = declared.check(declared.from_text(text))
        except ConfigError as exc:
            raise ConfigError(f"environment variable {declared.env}={text!r}: {exc}") from None
    return given


def _web_concurrency(entry: Entry, environ: Mapping[str, str]) -> int | None:
    for declared in taken_by(entry):
        if declared.env_fallback and declared.env_fallback in environ:
            text = environ[declared.env_fallback]
            try:
                value: int = declared.check(declared.from_text(text))
            except ConfigError as exc:
                raise ConfigError(
                    f"environment variable {declared.env_fallback}={text!r}: {exc}"
                ) from None
            return value
    return None


def read_file(path: str, entry: Entry) -> dict[str, object]:
    """The settings of ``entry`` that the configuration file ``path`` gives, checked.

    Raises:
        ConfigError: one line naming the file, and the key and line where it can: a
            file that cannot be read or parsed, an unknown key, a bad value.
    """
    shown = os.path.relpath(path) if not os.path.relpath(path).startswith("..") else path
    if path.endswith(".py"):
        raise ConfigError(
            f"configuration file {shown}: graceful reads TOML, not Python (a gunicorn.conf.py "
            "becomes a graceful.toml of the same settings: docs/guides/coming-from.md)"
        )
    data = _read_regular(path, f"configuration file {shown}")
    if len(data) > _MOST_BYTES:
        raise ConfigError(f"configuration file {shown}: larger than {_MOST_BYTES} bytes")
    try:
        text = data.decode("utf-8")
        table: dict[str, Any] = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"configuration file {shown}: not UTF-8 text ({exc.reason})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {shown}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(
            f"configuration file {shown}: not valid TOML: nested too deeply"
        ) from None
    prefix: tuple[str, ...] = ()
    if os.path.basename(path) == "pyproject.toml":
        prefix = PYPROJECT_TABLE
        for part in PYPROJECT_TABLE:
            table = table.get(part, {})
            if not isinstance(table, dict):
                raise ConfigError(f"{shown}: [{'.'.join(prefix)}] must be a table")
    return _settings_of(table, entry, _Place(shown, text, prefix))


#: The largest configuration file read (a configuration is a page, not a megabyte).
_MOST_BYTES = 1 << 20


def _read_regular(path: str, what: str) -> bytes:
    """Up to :data:`_MOST_BYTES` + 1 bytes of the regular file at ``path``. Anything
    else is refused without waiting for it: a FIFO would block the reading until a
    writer comes, and a reload reads the file again.

    Raises:
        ConfigError: ``what``, and why it cannot be read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read it: {exc.strerror or exc}") from None
    with open(fd, "rb") as file:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ConfigError(f"{what}: cannot read it: not a regular file")
            return file.read(_MOST_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"{what}: cannot read it: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class _Place:
    """Where the file's keys are, to name their lines."""

    shown: str
    text: str
    prefix: tuple[str, ...]

    def of(self, key: str, table: tuple[str, ...] = ()) -> str:
        line = _line_of(self.text, (*self.prefix, *table), key)
        where = f"{self.shown}, line {line}" if line else self.shown
        return f"{where}: {'.'.join((*table, key))}"


def _settings_of(table: dict[str, Any], entry: Entry, place: _Place) -> dict[str, object]:
    declared_by_name: dict[str, Setting] = {declared.name: declared for declared in taken_by(entry)}
    given: dict[str, object] = {}
    for key, value in table.items():
        declared = declared_by_name.get(key)
        if declared is None:
            raise ConfigError(f"{place.of(key)}: {_unknown(key, declared_by_name, entry)}")
        if key == "config":
            raise ConfigError(f"{place.of(key)}: a configuration file cannot name another")
        try:
            given[key] = declared.check(value)
        except ConfigError as exc:
            if isinstance(value, dict):  # a table: name the entry, at its line
                for name, item in value.items():
                    try:
                        declared.check({name: item})
                    except ConfigError as item_exc:
                        said = str(item_exc).removeprefix(f"{key}: ")
                        raise ConfigError(f"{place.of(name, (key,))}: {said}") from None
            raise ConfigError(f"{place.of(key)}: {exc}") from None
    return given


def _unknown(key: str, known: Mapping[str, Setting], entry: Entry) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    for declared in taken_by("graceful serve") + taken_by("graceful run"):
        if declared.name == key:  # a setting, of the other command
            return f"not a setting of {entry}"
    flags = {
        spelling: declared
        for declared in known.values()
        for spelling in (declared.flag, *declared.aliases)
        if spelling
    }
    for spelling, declared in flags.items():
        if spelling.lstrip("-") == key:
            return f"unknown setting (the file names settings: {declared.name!r})"
    if close:
        return f"unknown setting (did you mean {close[0]!r}?)"
    return "unknown setting (docs/reference/settings.md lists them)"


_TABLE_HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")


def _line_of(text: str, table: tuple[str, ...], key: str) -> int | None:
    """The line (from 1) where ``key`` is set in ``table`` (dotted names of the
    tables it is in), found by reading the file's lines: None if it is set in a
    way this does not follow (an inline table, a dotted key)."""
    current: tuple[str, ...] = ()
    key_line = re.compile(
        rf"""^\s*(?:{re.escape(key)}|"{re.escape(key)}"|'{re.escape(key)}')\s*="""
    )
    for number, line in enumerate(io.StringIO(text), start=1):
        header = _TABLE_HEADER.match(line)
        if header:
            current = tuple(part.strip().strip("\"'") for part in header.group(1).split("."))
            continue
        if current == table and key_line.match(line):
            return number
    return None


def read_env_file(path: str | os.PathLike[str], cwd: str) -> dict[str, str]:
    """The variables a ``.env`` file sets (as python-dotenv reads it, ``${VAR}``
    expanded), checked whole.

    Raises:
        ConfigError: one line naming the file (and the line) that cannot be read or
            parsed, or python-dotenv missing.
    """
    try:
        import dotenv  # noqa: PLC0415 - optional: only an env file needs it
        import dotenv.parser  # noqa: PLC0415
    except ImportError:
        raise ConfigError(f"--env-file needs python-dotenv: {pip_install('dotenv')}") from None
    shown = os.fspath(path)
    data = _read_regular(os.path.join(cwd, path), f"env file {shown}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"env file {shown}: cannot read it: not UTF-8 text") from None
    if len(data) > _MOST_BYTES:
        raise ConfigError(f"env file {shown}: larger than {_MOST_BYTES} bytes")
    lines: dict[str, int] = {}
    for binding in dotenv.parser.parse_stream(io.StringIO(text)):
        if binding.error:
            line = binding.original.string.strip()
            raise ConfigError(
                f"env file {shown}, line {binding.original.line}: cannot parse {line[:60]!r}"
            )
        if binding.key is not None:
            lines.setdefault(binding.key, binding.original.line)
    values = dotenv.dotenv_values(stream=io.StringIO(text))
    environment = {name: value for name, value in values.items() if value is not None}
    [env] = [declared for declared in SETTINGS if declared.name == "env"]
    for name, value in environment.items():
        try:  # what the workers' environment can hold, as for [env]
            env.check({name: value})
        except ConfigError as exc:
            said = str(exc).removeprefix("env: ")
            raise ConfigError(f"env file {shown}, line {lines.get(name, '?')}: {said}") from None
    return environment


def environment_of(
    values: Mapping[str, object], environ: Mapping[str, str], cwd: str
) -> dict[str, str]:
    """The environment variables a generation's workers get on top of the
    supervisor's (``environ``): the env file's (a relative path from ``cwd``) that
    ``environ`` does not set (as uvicorn loads it), then ``env``'s, over everything.

    Raises:
        ConfigError: for an env file that cannot be read.
    """
    environment: dict[str, str] = {}
    env_file = values.get("env_file")
    if isinstance(env_file, str | os.PathLike):
        from_file = read_env_file(env_file, cwd)
        environment.update(
            {name: value for name, value in from_file.items() if name not in environ}
        )
    environment.update(_mapping(values.get("env")))
    return environment
