"""Code identity: naming the entry point so that every generation runs the code on disk.

multiprocess pickles functions from ``__main__`` (and decorated ones) *by value*,
so a worker given the function object would run the old body against freshly
imported globals. graceful therefore sends only an :class:`EntryRef`, the module
name and qualified name, and each worker looks the object up after its own fresh
import. This module decides, in the supervisor, whether that lookup can work,
and performs it in the worker.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import inspect
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from graceful.base.errors import ConfigError, one_line
from graceful.wire.bootstrap import EntryRef

#: The name under which multiprocess's spawn children import the parent's ``__main__``.
SPAWNED_MAIN = "__mp_main__"


def entry_ref_for(obj: Any, function: Any) -> EntryRef:
    """Name ``obj`` (the object at module level, usually a :class:`Service`) by module
    and qualified name, checking in this process that the name leads back to it.

    ``function`` is the user's function, whose ``__module__`` and ``__qualname__``
    give the name.

    Raises:
        ConfigError: for a lambda, a nested function, code typed into a REPL, read
            from stdin or run in a notebook, or a name that leads elsewhere.
    """
    module_name: str = getattr(function, "__module__", None) or "?"
    qualname: str = getattr(function, "__qualname__", None) or "?"
    where = f"{module_name}:{qualname}"
    if "<lambda>" in qualname:
        raise ConfigError(
            f"cannot run entry point {where}: a lambda has no name a new process can import"
        )
    if "<locals>" in qualname:
        raise ConfigError(
            f"cannot run entry point {where}: it is defined inside a function; "
            "define it at module level so a new process can import it"
        )
    module = sys.modules.get(module_name)
    if module is None:
        raise ConfigError(f"cannot run entry point {where}: module {module_name!r} is not imported")
    if module_name == "__main__" and not _main_has_source(module):
        raise ConfigError(
            f"cannot run entry point {where}: it was typed into a REPL, read from stdin "
            "or defined in a notebook; put it in a .py file and run that"
        )
    found = walk(module, qualname)
    if found is not obj and found is not function:
        raise ConfigError(
            f"cannot run entry point {where}: that name does not lead to the service "
            "in a fresh import (was it renamed or replaced after decoration?)"
        )
    return EntryRef(module_name, qualname)


def _main_has_source(module: types.ModuleType) -> bool:
    spec = getattr(module, "__spec__", None)
    if spec is not None and getattr(spec, "name", None):
        return True  # python -m pkg.mod
    path = getattr(module, "__file__", None)
    return bool(path) and not str(path).startswith("<")


def walk(root: Any, qualname: str) -> Any:
    """Follow the dotted ``qualname`` from ``root``; None if a part is missing."""
    obj = root
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def resolve_entry(ref: EntryRef) -> Any:
    """In a worker: import the entry's module (already imported fresh by spawn for
    ``__main__``) and return the object its name leads to.

    Raises:
        ConfigError: if the module cannot be imported or the name is gone. The
            message names the entry and the cause in one line.
    """
    if ref.module == "__main__":
        module = sys.modules.get(SPAWNED_MAIN) or sys.modules["__main__"]
    else:
        module = import_module(ref.module)
    obj = walk(module, ref.qualname)
    if obj is None:
        raise ConfigError(f"entry point {ref} no longer exists in the code on disk")
    return obj


def import_module(name: str, purpose: str = "") -> types.ModuleType:
    """Import module ``name``.

    Raises:
        ConfigError: ``cannot import 'name'{purpose}: <cause>``, in one line, for any
            error the import raises (a missing module, a syntax error, an exception
            at import time).
    """
    try:
        return importlib.import_module(name)
    except Exception as exc:
        raise ConfigError(f"cannot import {name!r}{purpose}: {one_line(exc, where=True)}") from exc


def module_exists(name: str) -> bool:
    """True if module ``name`` can be found, without running any of its code or its
    packages': the top-level name is looked up by the import system's finders, and
    each submodule in its parent package's directories.

    A package whose ``__init__`` computes its ``__path__`` (``pkgutil.extend_path``)
    may hold submodules elsewhere: for such a package only, the lookup imports it, as
    a worker would.

    Raises:
        ConfigError: if importing such a package fails.
    """
    top, _, rest = name.partition(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False
    parent = top
    for part in rest.split(".") if rest else []:
        if spec is None or spec.submodule_search_locations is None:
            return False
        found = importlib.machinery.PathFinder.find_spec(
            part, list(spec.submodule_search_locations)
        )
        if found is None and _computes_its_path(spec):
            try:
                found = importlib.util.find_spec(f"{parent}.{part}")
            except Exception as exc:
                raise ConfigError(f"cannot import {parent!r}: {one_line(exc)}") from exc
        spec, parent = found, f"{parent}.{part}"
    return spec is not None


def _computes_its_path(spec: importlib.machinery.ModuleSpec) -> bool:
    origin = spec.origin
    if not origin or not origin.endswith("__init__.py"):
        return False
    try:
        with open(origin, encoding="utf-8", errors="replace") as file:
            return "__path__" in file.read()
    except OSError:
        return False


@dataclass(frozen=True)
class Runnable:
    """The entry function as found in the fresh code, with how to run it."""

    function: Callable[..., Any]
    backend: str

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.function)


def find_runnable(entry: EntryRef, backend: str) -> Runnable:
    """The entry point ``entry`` in the code imported, with the backend it names
    (``backend`` if it names none).

    Raises:
        ConfigError: if it is missing or not callable.
    """
    target = resolve_entry(entry)
    if isinstance(target, DescribesItsRun):
        function, named = target.__graceful_runnable__()
        return Runnable(function, named)
    if callable(target):
        return Runnable(target, backend)
    raise ConfigError(f"entry point {entry} is not callable in the code on disk")


@runtime_checkable
class DescribesItsRun(Protocol):
    """An entry object that names the function to run and its backend itself (a
    :class:`~graceful.Service` does)."""

    def __graceful_runnable__(self) -> tuple[Callable[..., Any], str]: ...


@dataclass(frozen=True)
class EntryTraits:
    """What one of graceful's own entry points (``graceful serve``'s worker) tells
    the processes that run it, beyond being called. A user's entry has none."""

    #: with ``preload``, called in the generation's template with the entry
    #: options: imports, fresh, what every worker would import first
    preload: Callable[..., None] | None = None
    #: called in a warm standby with the entry options: imports what serving
    #: needs, never the user's code
    warm_up: Callable[..., None] | None = None
    #: the entry imports the user's code itself (and reports it imported), rather
    #: than the main script doing it before the entry is called
    imports_code: bool = False


_TRAITS: dict[object, EntryTraits] = {}


def declare_traits(function: Callable[..., Any], traits: EntryTraits) -> None:
    """Give the entry point ``function`` its :class:`EntryTraits`."""
    _TRAITS[function] = traits


def traits_of(entry: object) -> EntryTraits:
    """The :class:`EntryTraits` of ``entry`` (none for a user's entry)."""
    try:
        return _TRAITS.get(entry, _NONE)
    except TypeError:  # unhashable
        return _NONE


_NONE = EntryTraits()
