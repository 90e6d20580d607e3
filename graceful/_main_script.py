"""The script the user ran, as every worker imports it again.

Each worker of each generation re-runs the main script (as ``__mp_main__``) before
any graceful code runs in it. Two things follow: a ``run()`` call at module level
must be guarded by ``if __name__ == "__main__":`` (:func:`check_main_guard`
refuses to start otherwise), and a syntax error in the script kills a worker
without a report (:func:`main_script_syntax_error` names it for the supervisor).
"""

from __future__ import annotations

import ast
import sys
import types

from ._errors import ConfigError, one_line


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
