"""Code identity: naming the entry point so that every generation runs the code on disk.

multiprocess pickles functions from ``__main__`` (and decorated ones) *by value*,
so a worker given the function object would run the old body against freshly
imported globals. graceful therefore sends only an :class:`EntryRef`, the module
name and qualified name, and each worker looks the object up after its own fresh
import. This module decides, in the supervisor, whether that lookup can work,
and performs it in the worker.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import os
import sys
import types
from dataclasses import dataclass
from typing import Any

from ._errors import ConfigError, GracefulError

#: The name under which multiprocess's spawn children import the parent's ``__main__``.
SPAWNED_MAIN = "__mp_main__"


@dataclass(frozen=True)
class EntryRef:
    """Where a fresh interpreter finds the entry point: ``module`` and ``qualname``.

    ``module`` is ``"__main__"`` for an entry defined in the script the user ran; a
    spawn child imports that script as ``__mp_main__``.
    """

    module: str
    qualname: str

    def __str__(self) -> str:
        return f"{self.module}:{self.qualname}"


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
        raise ConfigError(f"cannot import {name!r}{purpose}: {one_line(exc)}") from exc


def main_script_syntax_error() -> str | None:
    """If the main script on disk no longer compiles, describe why in one line.

    A worker imports the main script before any graceful code runs in it, so a
    syntax error there kills the worker without a report. The supervisor calls this
    to name the cause of such a silent death.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path:
        return None
    try:
        with open(path, "rb") as source:
            compile(source.read(), path, "exec")
    except SyntaxError as exc:
        return one_line(exc)
    except (OSError, ValueError):
        return None
    return None


def one_line(exc: BaseException) -> str:
    """Describe an exception in one line: its type and the first line of its message
    (graceful's own errors are already one line and need no type)."""
    if isinstance(exc, GracefulError):
        return str(exc)
    if isinstance(exc, SyntaxError):
        where = f"{exc.filename}, line {exc.lineno}" if exc.filename else f"line {exc.lineno}"
        return f"SyntaxError: {exc.msg} ({where})"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def check_main_guard(frame: types.FrameType | None) -> None:
    """Refuse to start a supervisor from unguarded module-level code of ``__main__``.

    Every worker re-runs the main script as ``__mp_main__``; only an
    ``if __name__ == "__main__":`` guard keeps it from calling ``run()`` again.
    ``frame`` is the caller of ``run()``; the check looks for the outermost frame of
    the ``__main__`` module and for a guard around the line it is executing.

    Raises:
        ConfigError: naming the script and line of the unguarded call.
    """
    main = sys.modules.get("__main__")
    main_file = getattr(main, "__file__", None)
    if main is None or not main_file:
        return
    module_frame = None
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals is vars(main):
            module_frame = frame
        frame = frame.f_back
    if module_frame is None:
        return
    line = module_frame.f_lineno
    try:
        with open(main_file, encoding="utf-8") as source:
            tree = ast.parse(source.read(), filename=main_file)
    except (OSError, SyntaxError, ValueError):
        return  # cannot inspect it; the worker-side check still catches a re-entry
    if not _line_is_guarded(tree, line):
        raise ConfigError(
            f"{main_file}, line {line} starts the service at import time: put the call "
            'under `if __name__ == "__main__":` so workers can import the script'
        )


def _line_is_guarded(tree: ast.Module, line: int) -> bool:
    for node in tree.body:
        if not isinstance(node, ast.If) or not _is_main_test(node.test):
            continue
        first, last = node.body[0].lineno, node.body[-1].end_lineno or node.body[-1].lineno
        if first <= line <= last:
            return True
    return False


def _is_main_test(test: ast.expr) -> bool:
    if not isinstance(test, ast.Compare) or len(test.ops) != 1:
        return False
    if not isinstance(test.ops[0], ast.Eq):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s for s in sides if isinstance(s, ast.Name) and s.id == "__name__"]
    consts = [s for s in sides if isinstance(s, ast.Constant) and s.value == "__main__"]
    return len(names) == 1 and len(consts) == 1


@dataclass(frozen=True)
class ReleaseDirectory:
    """A symlinked release directory (``current -> releases/rN``) the service runs from.

    The kernel resolves symlinks in the working directory, and Python resolves
    them in ``sys.path[0]``. Left alone, every worker would be started in, and import
    from, the release that was current when the supervisor started. Its code would
    go stale, and once that release is deleted every reload would fail. graceful
    keeps the symlinked (logical) paths instead. :meth:`enter` is called before each
    spawn, so every generation resolves the symlink anew.
    """

    logical_cwd: str | None

    @classmethod
    def adopt(cls) -> ReleaseDirectory:
        """Rewrite this process's ``sys.path`` (and the main script's path, if it lies
        in the working directory) to their symlinked form, as far as it is known.

        The logical working directory is ``$PWD`` when that names the same
        directory as ``os.getcwd()``, the way shells and ``pwd -L`` use it.
        """
        cwd = os.getcwd()
        logical_cwd = None
        pwd = os.environ.get("PWD")
        if pwd and os.path.isabs(pwd) and os.path.normpath(pwd) != cwd:
            with contextlib.suppress(OSError):
                if os.path.samefile(pwd, cwd):
                    logical_cwd = os.path.normpath(pwd)
        renames: dict[str, str] = {}
        if logical_cwd is not None:
            renames[cwd] = logical_cwd
        main = sys.modules.get("__main__")
        main_file = getattr(main, "__file__", None)
        if main is not None and main_file and os.path.isabs(main_file):
            script_dir = os.path.dirname(main_file)
            if logical_cwd is not None and script_dir == cwd:
                main_file = os.path.join(logical_cwd, os.path.basename(main_file))
                main.__file__ = main_file  # where spawn finds the script to re-run
                script_dir = logical_cwd
            real_dir = os.path.realpath(script_dir)
            if real_dir != script_dir:
                renames[real_dir] = script_dir
        if renames:
            sys.path[:] = [renames.get(entry, entry) for entry in sys.path]
        return cls(logical_cwd)

    def enter(self) -> None:
        """Change into the logical working directory, resolving it to the current release."""
        if self.logical_cwd is not None:
            with contextlib.suppress(OSError):
                os.chdir(self.logical_cwd)
