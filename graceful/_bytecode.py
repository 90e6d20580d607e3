"""Stale bytecode: when a deploy keeps sizes and modification times, ``.pyc`` lies.

Python trusts a timestamp-based ``.pyc`` file whose header records the source's
size and modification time (in whole seconds). Deploy tools that keep modification
times (``rsync -a``, ``tar``, ``cp -p``, some CI caches) can deliver a new source
file of the same size with the old time: its header still matches, and every
process imports the *old* code from the cache, silently.

The one thing such a deploy cannot keep is the file's change time (ctime), which
the kernel sets whenever a file is written or renamed into place. A source whose
``.pyc`` header matches but whose ctime is later than the ``.pyc`` was written is
therefore suspect. :func:`stale_sources` finds them in the application's own
directories. The supervisor names them, and :func:`recompile` writes their
bytecode again from the source, as Python itself does for bytecode it knows to be
out of date (atomically, in the same place, with the same header rules), so that
the new generation and every later one import the new code. Where that is not
possible (a read-only tree, another user's files), the supervisor starts the
generation with the bytecode cache out of the way (:func:`bypass_environment`),
so it compiles everything from source.

A suspect that did not really change (a ``chmod`` or ``chown`` after the bytecode
was written) is recompiled too: harmless, and it is not suspect again.
"""

from __future__ import annotations

import importlib.util
import os
import py_compile
import stat
import sys
from collections.abc import Iterable, Iterator

#: Directory names never searched: version control, caches, virtual environments
#: and installed packages (which their installer compiles).
_SKIPPED_DIRECTORIES = frozenset(
    {"__pycache__", "node_modules", "site-packages", "dist-packages", ".git", ".hg", ".tox"}
)

#: At most this many ``.py`` files are examined per check, so that an application
#: directory that turns out to be a home directory costs milliseconds, not seconds.
FILE_BUDGET = 10_000

#: The ``.pyc`` header: magic (4 bytes), flags (4), source mtime (4), source size (4).
_HEADER_SIZE = 16


def application_roots() -> list[str]:
    """The directories the application's own code comes from: the entries of
    ``sys.path`` that are not part of Python or of an installed environment."""
    installed = {
        os.path.realpath(path)
        for path in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)
    }
    roots: list[str] = []
    for entry in sys.path:
        path = os.path.abspath(entry or os.curdir)
        real = os.path.realpath(path)
        if not os.path.isdir(path) or any(
            real == prefix or real.startswith(prefix + os.sep) for prefix in installed
        ):
            continue
        if path not in roots:
            roots.append(path)
    return roots


def stale_sources(roots: Iterable[str], budget: int = FILE_BUDGET) -> list[str]:
    """Source files under ``roots`` whose cached bytecode would be loaded although
    the source changed after it was written (see the module docstring)."""
    found = []
    for source in _python_files(roots, budget):
        if _bytecode_is_stale(source):
            found.append(source)
    return found


def recompile(sources: Iterable[str]) -> dict[str, str]:
    """Write the bytecode of each of ``sources`` again from the source; return why,
    for each one that could not be."""
    failed = {}
    for source in sources:
        try:
            py_compile.compile(
                source, doraise=True, invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP
            )
        except py_compile.PyCompileError as exc:
            failed[source] = exc.exc_type_name  # a syntax error: the worker will name it
        except OSError as exc:
            failed[source] = exc.strerror or str(exc)
    return failed


def bypass_environment(empty_directory: str) -> dict[str, str]:
    """Environment variables that make a new interpreter ignore every ``.pyc`` file
    and write none: it looks for bytecode only under ``empty_directory``."""
    return {"PYTHONPYCACHEPREFIX": empty_directory, "PYTHONDONTWRITEBYTECODE": "1"}


def _python_files(roots: Iterable[str], budget: int) -> Iterator[str]:
    seen = 0
    for root in roots:
        for directory, subdirectories, files in os.walk(root):
            subdirectories[:] = [
                name
                for name in subdirectories
                if name not in _SKIPPED_DIRECTORIES
                and not name.startswith(".")
                and not os.path.exists(os.path.join(directory, name, "pyvenv.cfg"))
            ]
            for name in files:
                if not name.endswith(".py"):
                    continue
                seen += 1
                if seen > budget:
                    return
                yield os.path.join(directory, name)


def _bytecode_is_stale(source: str) -> bool:
    try:
        cached = importlib.util.cache_from_source(source)
        source_stat = os.stat(source)
        cached_stat = os.stat(cached)
    except (OSError, ValueError, NotImplementedError):
        return False  # no bytecode for it, or none can be had
    if not stat.S_ISREG(cached_stat.st_mode) or source_stat.st_ctime_ns <= cached_stat.st_mtime_ns:
        return False  # the common case, decided without opening anything
    try:
        with open(cached, "rb") as file:
            header = file.read(_HEADER_SIZE)
    except OSError:
        return False
    if len(header) < _HEADER_SIZE or header[:4] != importlib.util.MAGIC_NUMBER:
        return False
    flags = int.from_bytes(header[4:8], "little")
    if flags != 0:
        return False  # hash-based bytecode is checked against the source's content
    mtime = int.from_bytes(header[8:12], "little")
    size = int.from_bytes(header[12:16], "little")
    return (
        mtime == int(source_stat.st_mtime) & 0xFFFFFFFF and size == source_stat.st_size & 0xFFFFFFFF
    )
