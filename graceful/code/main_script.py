"""The script the user ran, as every worker imports it again.

Each worker of each generation re-runs the main script (as ``__mp_main__``), so a
``run()`` call at module level must be guarded by ``if __name__ == "__main__":``
(:func:`check_main_guard` refuses to start otherwise). What the import raises,
a syntax error included, the worker reports itself (:mod:`graceful.child.worker`).
"""

from __future__ import annotations

import ast
import sys
import types

import multiprocess
import multiprocess.spawn

from graceful.base.errors import ConfigError
from graceful.code.release import Runtime, child_sys_path
from graceful.wire.bootstrap import MainScript


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


def main_script_for(runtime: Runtime) -> MainScript:
    """How a worker started from ``runtime`` finds the script the user ran (as
    multiprocess would), and the application's ``sys.path`` entries."""
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name is not None:
        return MainScript(module=name, path=None, sys_path=runtime.app_path)
    return MainScript(module=None, path=runtime.main_path, sys_path=runtime.app_path)


def import_main_script(main: MainScript) -> None:
    """Import the script the user ran, fresh from disk, as ``__mp_main__`` (also
    ``__main__``), the way multiprocess's spawn would have, with the application's
    ``sys.path`` entries first. While it runs, ``Service.run()`` refuses to start a
    supervisor (an unguarded call)."""
    sys.path[:] = child_sys_path(main.sys_path, sys.path)
    current = multiprocess.current_process()
    current._inheriting = True
    try:
        if main.module is not None:
            multiprocess.spawn._fixup_main_from_name(main.module)
        elif main.path is not None:
            multiprocess.spawn._fixup_main_from_path(main.path)
    finally:
        del current._inheriting
