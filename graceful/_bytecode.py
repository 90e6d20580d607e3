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

A suspect is confirmed by compiling its source and comparing the code with what
the ``.pyc`` holds: one that did not really change (a ``chmod`` or ``chown`` after
the bytecode was written, the same release unpacked again) is left alone, and is
not compiled again while its ctime stays the same.
"""

from __future__ import annotations

import importlib.util
import marshal
import os
import py_compile
import stat
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

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

#: Where a bytecode bypass points the cache: a path below a device, which can never
#: exist, so nothing can be planted there and nothing needs cleaning up.
NOWHERE = "/dev/null/graceful-no-bytecode"


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


@dataclass
class BytecodeCheck:
    """Finds stale bytecode under the application's directories, remembering the
    suspects it has already found unchanged."""

    budget: int = FILE_BUDGET
    #: (path, inode, ctime) of suspects whose bytecode proved to be right
    _unchanged: set[tuple[str, int, int]] = field(default_factory=set)
    #: True once a check stopped at the budget
    budget_exhausted: bool = False

    def stale_sources(self, roots: Iterable[str]) -> list[str]:
        """Source files under ``roots`` whose cached bytecode would be loaded although
        the source changed after it was written (see the module docstring)."""
        found = []
        files = _python_files(roots, self.budget)
        for source in files:
            if self._is_stale(source):
                found.append(source)
        self.budget_exhausted = files.exhausted
        return found

    def _is_stale(self, source: str) -> bool:
        suspect = _suspect(source)
        if suspect is None:
            return False
        key, cached = suspect
        if key in self._unchanged:
            return False
        if _same_code(source, cached):
            if len(self._unchanged) < 4 * self.budget:
                self._unchanged.add(key)
            return False
        return True


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


def bypass_environment() -> dict[str, str]:
    """Environment variables that make a new interpreter ignore every ``.pyc`` file
    and write none: it looks for bytecode only under :data:`NOWHERE`."""
    return {"PYTHONPYCACHEPREFIX": NOWHERE, "PYTHONDONTWRITEBYTECODE": "1"}


class _PythonFiles:
    """The ``.py`` files under some roots, at most ``budget`` of them."""

    def __init__(self, roots: Iterable[str], budget: int) -> None:
        self._roots = list(roots)
        self._budget = budget
        self.exhausted = False

    def __iter__(self) -> Iterator[str]:
        seen = 0
        for root in self._roots:
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
                    if seen > self._budget:
                        self.exhausted = True
                        return
                    yield os.path.join(directory, name)


def _python_files(roots: Iterable[str], budget: int) -> _PythonFiles:
    return _PythonFiles(roots, budget)


def _suspect(source: str) -> tuple[tuple[str, int, int], str] | None:
    """If ``source``'s timestamp bytecode matches its size and mtime but is older than
    its ctime: its key for :class:`BytecodeCheck` and the bytecode's path."""
    try:
        cached = importlib.util.cache_from_source(source)
        source_stat = os.stat(source)
        cached_stat = os.stat(cached)
    except (OSError, ValueError, NotImplementedError):
        return None  # no bytecode for it, or none can be had
    if not stat.S_ISREG(cached_stat.st_mode) or source_stat.st_ctime_ns <= cached_stat.st_mtime_ns:
        return None  # the common case, decided without opening anything
    try:
        with open(cached, "rb") as file:
            header = file.read(_HEADER_SIZE)
    except OSError:
        return None
    if len(header) < _HEADER_SIZE or header[:4] != importlib.util.MAGIC_NUMBER:
        return None
    if int.from_bytes(header[4:8], "little") != 0:
        return None  # hash-based bytecode is checked against the source's content
    mtime = int.from_bytes(header[8:12], "little")
    size = int.from_bytes(header[12:16], "little")
    if mtime != int(source_stat.st_mtime) & 0xFFFFFFFF or size != source_stat.st_size & 0xFFFFFFFF:
        return None  # Python sees the mismatch itself
    return (source, source_stat.st_ino, source_stat.st_ctime_ns), cached


def _same_code(source: str, cached: str) -> bool:
    """True if the bytecode in ``cached`` is what ``source`` compiles to now (code
    objects compare their instructions, constants, names and line numbers, nested
    code included)."""
    try:
        with open(cached, "rb") as file:
            old = marshal.loads(file.read()[_HEADER_SIZE:])
        with open(source, "rb") as file:
            new = compile(file.read(), source, "exec", dont_inherit=True)
    except Exception:
        return False  # unreadable bytecode, or a source that no longer compiles
    return bool(old == new)
