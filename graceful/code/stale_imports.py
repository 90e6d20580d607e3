"""Has what this process imported changed on disk since?

A warm standby (:mod:`graceful.spawn.standby`) imports libraries long before it serves. If one
of them is upgraded meanwhile, a worker made from it would run the old version,
or worse, a mix: the modules it had imported, old, beside those it imports later,
new. :class:`ImportSnapshot` records what the process has imported and answers,
later, whether any of it changed:

* every module loaded from a file: the file's identity (device, inode, size,
  modification and change times). Installers write new files (a new inode) and
  editors replace them; any change to the file's metadata counts;
* any such file whose change time (which no tool can set back) is later than the
  moment the process was started, minus a margin for the kernel's coarse clock:
  it may have changed while the module was being imported, before the snapshot;
* in every ``sys.path`` directory those files came from, the installed
  distributions' metadata (``*.dist-info``, ``*.egg-info``, ``*.pth`` entries):
  an upgrade renames or rewrites it, even when the modules this process loaded
  kept their bytes (the new version changed only modules not imported yet);
* a module that now *shadows* one it imported: a top-level name (``queue``,
  ``anyio``) importable from a ``sys.path`` directory searched before the one it
  was loaded from (a file the user put beside the script, or an ``__init__.py``
  put into a directory there). A new process would import that one instead. The
  directories are listed anew each time (under a millisecond for a typical
  ``sys.path``): a package made from a plain directory does not change its parent.

Anything else (a file that cannot be read any more) counts as changed too: the
answer errs towards a cold start, which is always correct.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
from dataclasses import dataclass

#: Nanoseconds a file's change time may lag behind the wall clock (the kernel
#: stamps files with a coarse clock, a tick or so behind).
CLOCK_MARGIN_NS = 50_000_000

#: Suffixes of the entries in a ``sys.path`` directory that describe what is installed.
_METADATA_SUFFIXES = (".dist-info", ".egg-info", ".egg-link", ".pth")

#: How many changed files a description names.
_NAMED = 3

Identity = tuple[int, int, int, int, int]


def _identity(stat: os.stat_result) -> Identity:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def module_files() -> list[str]:
    """The files the modules imported so far were loaded from (sources, compiled
    extensions), absolute, without duplicates."""
    files = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and os.path.isabs(path):
            files.add(path)
    return sorted(files)


def _roots(files: list[str]) -> list[str]:
    """The ``sys.path`` directories that ``files`` were found under."""
    entries = sorted(
        {os.path.abspath(entry) for entry in sys.path if entry and os.path.isdir(entry)},
        key=len,
        reverse=True,
    )
    roots = set()
    for path in files:
        for entry in entries:
            if path.startswith(entry + os.sep):
                roots.add(entry)
                break
    return sorted(roots)


def top_level_origins() -> dict[str, int]:
    """The top-level modules imported so far from a ``sys.path`` directory: name ->
    the index of the first ``sys.path`` entry that is that directory."""
    index: dict[str, int] = {}
    for position, entry in enumerate(sys.path):
        index.setdefault(os.path.abspath(entry or os.curdir), position)
    found = {}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if "." in name or not isinstance(path, str):
            continue
        directory = os.path.dirname(path)
        if os.path.basename(path).startswith("__init__."):
            directory = os.path.dirname(directory)  # a package: found in its parent
        if directory in index:
            found[name] = index[directory]
    return found


def importable_names(directory: str) -> set[str]:
    """The top-level names a ``sys.path`` entry ``directory`` offers: its modules and
    its regular packages (a directory without ``__init__`` is only a namespace
    portion, which never hides a module found later)."""
    suffixes = importlib.machinery.all_suffixes()
    names = set()
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_dir():
                if any(os.path.exists(os.path.join(entry.path, "__init__" + s)) for s in suffixes):
                    names.add(entry.name)
                continue
            for suffix in suffixes:
                if entry.name.endswith(suffix):
                    names.add(entry.name[: -len(suffix)])
                    break
    return names


def _metadata(root: str) -> dict[str, Identity]:
    found = {}
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.name.endswith(_METADATA_SUFFIXES):
                found[entry.name] = _identity(entry.stat())
    return found


@dataclass(frozen=True)
class ImportSnapshot:
    """What this process had imported when :meth:`take` was called (see the module
    docstring)."""

    #: the wall-clock time (``time.time_ns()``) before this process's first import
    started_ns: int
    files: dict[str, Identity]
    metadata: dict[str, dict[str, Identity]]
    #: top-level module name -> the index of the ``sys.path`` entry it came from
    origins: dict[str, int]
    #: the ``sys.path`` entries searched before some of those, with their index
    searched: list[tuple[str, int]]

    @classmethod
    def take(cls, started_ns: int) -> ImportSnapshot:
        """Record the modules imported so far. ``started_ns``: the wall-clock time
        before any of them was imported (taken before the process was started)."""
        paths = module_files()
        files = {}
        for path in paths:
            try:
                files[path] = _identity(os.stat(path))
            except OSError:
                files[path] = (0, 0, 0, 0, 0)  # gone already: always "changed"
        metadata = {}
        for root in _roots(paths):
            try:
                metadata[root] = _metadata(root)
            except OSError:
                metadata[root] = {}
        origins = top_level_origins()
        last = max(origins.values(), default=0)
        searched = [
            (os.path.abspath(entry or os.curdir), position)
            for position, entry in enumerate(sys.path[:last])
        ]
        return cls(started_ns, files, metadata, origins, searched)

    def shadows(self) -> list[str]:
        """Modules that now shadow one this process imported (see the module
        docstring), as ``path (shadows NAME)``."""
        found = []
        for directory, position in self.searched:
            try:
                names = importable_names(directory)
            except OSError:
                continue  # not a directory (any more): it offers nothing
            for name in sorted(names):
                if self.origins.get(name, -1) > position:
                    found.append(f"{os.path.join(directory, name)} (shadows {name})")
                    if len(found) >= _NAMED:
                        return found
        return found

    def changes(self) -> list[str]:
        """What changed since (one short description per file or directory, at most a
        few): empty if nothing did."""
        changed = []
        since = self.started_ns - CLOCK_MARGIN_NS
        for path, identity in self.files.items():
            try:
                now = _identity(os.stat(path))
            except OSError:
                changed.append(f"{path} (gone)")
            else:
                if now != identity or now[4] >= since:
                    changed.append(path)
            if len(changed) >= _NAMED:
                return changed
        for root, metadata in self.metadata.items():
            try:
                now_metadata = _metadata(root)
            except OSError:
                now_metadata = {}
            if now_metadata != metadata:
                names = sorted(set(now_metadata) ^ set(metadata)) or sorted(
                    name for name in metadata if now_metadata.get(name) != metadata[name]
                )
                changed.append(f"{root} ({', '.join(names[:_NAMED])})")
                if len(changed) >= _NAMED:
                    return changed
        return [*changed, *self.shadows()][:_NAMED]
