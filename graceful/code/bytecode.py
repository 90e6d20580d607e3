"""Stale bytecode: when a deploy keeps sizes and modification times, ``.pyc`` lies.

Python trusts a timestamp-based ``.pyc`` file whose header records the source's
size and modification time (in whole seconds). Deploy tools that keep modification
times (``rsync -a``, ``tar``, ``cp -p``, some CI caches) can deliver a new source
file of the same size with the old time: its header still matches, and every
process imports the *old* code from the cache, silently. A ``.pyc`` built with
``--invalidation-mode unchecked-hash`` is never checked at all.

A source is *suspect* when its timestamp ``.pyc`` header matches and either

* its change time (ctime, which the kernel sets whenever a file is written or
  renamed into place, and which no deploy tool can keep) is later than the
  ``.pyc``, or
* it is not the file it was at the previous check (another inode or ctime), which
  also catches a ``__pycache__`` restored from a cache after the deploy.

A suspect is confirmed by compiling its source and comparing the code with what
the ``.pyc`` holds (code objects compare their instructions, constants, names and
line numbers, nested code included): a file that did not really change (a
``chmod``, the same release unpacked again) is left alone, and not compiled again
while it stays the same. An unchecked-hash ``.pyc`` is stale when its recorded hash
is not the source's.

:class:`BytecodeCheck` finds stale bytecode in the application's own directories;
:func:`recompile` writes it again from the source, in the same place and mode, as
Python itself does for bytecode it knows to be out of date. Where that is not
possible (a read-only tree, another user's files), the supervisor starts the
generation with the bytecode cache out of the way (:func:`bypass_environment`).
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

#: The ``.pyc`` header: magic (4 bytes), flags (4), then source mtime (4) and size
#: (4), or the source's hash (8).
_HEADER_SIZE = 16
_TIMESTAMP = 0b00
_UNCHECKED_HASH = 0b01

#: Where a bytecode bypass points the cache: a path below a device, which can never
#: exist, so nothing can be planted there and nothing needs cleaning up.
NOWHERE = "/dev/null/graceful-no-bytecode"


def application_roots(entries: list[str] | None = None) -> list[str]:
    """The directories the application's own code comes from: the entries of
    ``entries`` (default ``sys.path``) that are not part of Python or of an
    installed environment."""
    installed = {
        os.path.realpath(path)
        for path in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)
    }
    roots: list[str] = []
    for entry in sys.path if entries is None else entries:
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
    """Finds stale bytecode under the application's directories (see the module
    docstring). Keeps what it learnt between checks; one check at a time."""

    budget: int = FILE_BUDGET
    #: True once a check stopped at the budget
    budget_exhausted: bool = False
    #: path -> (inode, ctime) at the previous check
    _seen: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: (path, inode, ctime, .pyc mtime) of suspects whose bytecode proved right
    _unchanged: set[tuple[str, int, int, int]] = field(default_factory=set)

    def stale_sources(self, roots: Iterable[str]) -> list[str]:
        """Source files under ``roots`` whose cached bytecode would be loaded although
        the source changed after it was written."""
        found = []
        seen: dict[str, tuple[int, int]] = {}
        files = _PythonFiles(roots, self.budget)
        for source in files:
            if self._is_stale(source, seen):
                found.append(source)
        self._seen = seen
        self.budget_exhausted = files.exhausted
        return found

    def _is_stale(self, source: str, seen: dict[str, tuple[int, int]]) -> bool:
        try:
            cached = importlib.util.cache_from_source(source)
            source_stat = os.stat(source)
            cached_stat = os.stat(cached)
        except (OSError, ValueError, NotImplementedError):
            return False  # no bytecode for it, or none can be had
        identity = (source_stat.st_ino, source_stat.st_ctime_ns)
        seen[source] = identity
        if not stat.S_ISREG(cached_stat.st_mode):
            return False
        newer = source_stat.st_ctime_ns > cached_stat.st_mtime_ns
        replaced = self._seen.get(source, identity) != identity
        header = _header(cached)
        if header is None:
            return False
        flags = int.from_bytes(header[4:8], "little")
        if flags == _UNCHECKED_HASH:
            return (newer or replaced or source not in self._seen) and _hash_differs(source, header)
        if flags != _TIMESTAMP or not _header_matches(header, source_stat):
            return False  # checked-hash bytecode, or a mismatch Python sees itself
        if not (newer or replaced):
            return False  # the common case, decided without compiling anything
        key = (source, *identity, cached_stat.st_mtime_ns)
        if key in self._unchanged:
            return False
        if _same_code(source, cached):
            if len(self._unchanged) < 4 * self.budget:
                self._unchanged.add(key)
            return False
        return True


def recompile(sources: Iterable[str]) -> dict[str, str]:
    """Write the bytecode of each of ``sources`` again from the source, keeping its
    invalidation mode; return why, for each one that could not be."""
    failed = {}
    for source in sources:
        header = _header(importlib.util.cache_from_source(source)) or b""
        unchecked = int.from_bytes(header[4:8], "little") == _UNCHECKED_HASH
        mode = (
            py_compile.PycInvalidationMode.UNCHECKED_HASH
            if unchecked
            else py_compile.PycInvalidationMode.TIMESTAMP
        )
        try:
            py_compile.compile(source, doraise=True, invalidation_mode=mode)
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


def _header(cached: str) -> bytes | None:
    try:
        with open(cached, "rb") as file:
            header = file.read(_HEADER_SIZE)
    except OSError:
        return None
    if len(header) < _HEADER_SIZE or header[:4] != importlib.util.MAGIC_NUMBER:
        return None
    return header


def _header_matches(header: bytes, source_stat: os.stat_result) -> bool:
    mtime = int.from_bytes(header[8:12], "little")
    size = int.from_bytes(header[12:16], "little")
    return mtime == int(source_stat.st_mtime) & 0xFFFFFFFF and (
        size == source_stat.st_size & 0xFFFFFFFF
    )


def _hash_differs(source: str, header: bytes) -> bool:
    try:
        with open(source, "rb") as file:
            return importlib.util.source_hash(file.read()) != header[8:16]
    except OSError:
        return False


def _same_code(source: str, cached: str) -> bool:
    """True if the bytecode in ``cached`` is what ``source`` compiles to now."""
    try:
        with open(cached, "rb") as file:
            old = marshal.loads(file.read()[_HEADER_SIZE:])
        with open(source, "rb") as file:
            new = compile(file.read(), source, "exec", dont_inherit=True)
    except Exception:
        return False  # unreadable bytecode, or a source that no longer compiles
    return bool(old == new)
