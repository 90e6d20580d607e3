"""Has what this process imported changed on disk since?

A warm standby (``_standby.py``) imports libraries long before it serves. If one
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
  kept their bytes (the new version changed only modules not imported yet).

Anything else (a file that cannot be read any more) counts as changed too: the
answer errs towards a cold start, which is always correct.
"""

from __future__ import annotations

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
        return cls(started_ns, files, metadata)

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
                continue
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
        return changed
