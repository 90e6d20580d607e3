"""Release directories: a service run from ``current -> releases/rN`` follows the
link at every reload, as deploy tools that switch a symlink expect."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass


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
