"""Release directories: every process graceful starts runs from the release the
service points to *now*.

Deploy tools build each release in a directory of its own, often with its own
virtual environment, and switch a link (``current -> releases/r7``). A process
started through that link sees its target, never the link: the kernel resolves
the working directory, a console script's shebang names the physical interpreter
(``releases/r1/.venv/bin/python3``), and spawn would hand every child the
supervisor's interpreter and ``sys.path``. Left alone, a reload would run the new
release's code on the old release's packages, or the old code altogether, and
once the old release is deleted nothing could start.

So at its start the supervisor finds the *release link* (:meth:`ReleaseLayout.adopt`):
the symbolic link, among the paths it was started through, whose target holds
what the service runs from. Every path a child needs (its interpreter, working
directory, the application's ``sys.path`` entries, the main script) is recorded
relative to that release. Before each start, :meth:`ReleaseLayout.resolve` follows
the link anew and gives the :class:`Runtime` of a process started now: the paths
in the release the link names now, physical, so that a child is never split
between two releases even if the link is switched while it starts. The
interpreter's own directories (the standard library, ``site-packages`` and what
their ``.pth`` files add) are not passed on: the child's interpreter computes its
own (see :func:`interpreter_owned`).

Where graceful cannot see the link (the service started by physical paths alone),
``release_link=`` (``--release-link PATH``) names it.
"""

from __future__ import annotations

import os
import site
import sys
import sysconfig
from dataclasses import dataclass, field

from graceful.base.errors import ConfigError, GracefulError
from graceful.base.log import logger


class ReleaseError(GracefulError):
    """A process cannot be started from the release the service points to (one line
    naming what is missing)."""


@dataclass(frozen=True)
class Anchored:
    """A path the service was started with: ``relative`` to the release directory
    when it lies in one (it follows the link), else the ``path`` as it was."""

    path: str
    relative: str | None = None

    def at(self, release: str | None) -> str:
        if release is None or self.relative is None:
            return self.path
        return os.path.normpath(os.path.join(release, self.relative))


@dataclass(frozen=True)
class Runtime:
    """Where and how a process started now runs: all paths physical, in ``release``
    (None when the service has no release link)."""

    release: str | None
    #: the interpreter it runs
    executable: str
    #: its working directory
    cwd: str
    #: the application's ``sys.path`` entries, in order, before the interpreter's own
    app_path: list[str]
    #: ``sys.argv[0]`` in the child
    argv0: str
    #: the script the user ran, if any (``python app.py``)
    main_path: str | None
    #: multiprocess's ``ORIGINAL_DIR`` in the child
    original_dir: str | None
    #: which interpreter and environment ``executable`` is now (the identities of
    #: the binary it leads to and of its ``pyvenv.cfg``): a release rebuilt in place
    #: with another Python has the same paths and another identity
    identity: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True)
class ReleaseLayout:
    """The paths the service was started with, anchored in its release directory
    (see the module docstring)."""

    #: the release link, absolute and logical (``/srv/app/current``); None for none
    link: str | None
    executable: Anchored
    cwd: Anchored
    app_path: list[Anchored] = field(default_factory=list)
    argv0: Anchored = Anchored("")
    main_path: Anchored | None = None
    original_dir: Anchored | None = None

    @classmethod
    def adopt(cls, release_link: str | os.PathLike[str] | None = None) -> ReleaseLayout:
        """The layout of this process, with ``release_link`` as its link, or the
        link found among the paths it was started through.

        Raises:
            ConfigError: if ``release_link`` is not a symbolic link to a directory.
        """
        cwd = _logical_cwd()
        app_entries = application_entries(sys.path, cwd)
        if release_link is not None:
            link: str | None = os.path.normpath(os.path.join(cwd, os.fspath(release_link)))
            assert link is not None
            if not os.path.islink(link) or not os.path.isdir(link):
                raise ConfigError(
                    f"release link {os.fspath(release_link)!r} is not a symbolic link to a "
                    "directory"
                )
        else:
            link = find_release_link(cwd, app_entries)
        release = os.path.realpath(link) if link is not None else None

        def anchor(path: str) -> Anchored:
            path = os.path.normpath(os.path.join(cwd, path))
            return Anchored(path, _relative_to(path, link, release))

        main = sys.modules.get("__main__")
        main_file = getattr(main, "__file__", None)
        spec_name = getattr(getattr(main, "__spec__", None), "name", None)
        original = _original_dir()
        layout = cls(
            link=link,
            executable=anchor(sys.executable),
            cwd=anchor(cwd),
            app_path=[anchor(entry) for entry in app_entries],
            argv0=anchor(sys.argv[0]) if sys.argv and sys.argv[0] else Anchored(""),
            main_path=anchor(main_file) if main_file and spec_name is None else None,
            original_dir=anchor(original) if original is not None else None,
        )
        own = [layout.cwd, *layout.app_path, *([layout.main_path] if layout.main_path else [])]
        if link is not None and all(path.relative is None for path in own):
            # the service runs from elsewhere (another release, named physically):
            # nothing of it would follow the link
            raise ConfigError(
                f"release link {link} names {release}, but the service runs from "
                f"{os.getcwd()}: start it in the release the link names (its working "
                "directory through the link)"
            )
        return layout

    def release(self) -> str | None:
        """The release directory the link names now (physical); None without a link.

        Raises:
            ReleaseError: if the link is gone or names no directory.
        """
        if self.link is None:
            return None
        release = os.path.realpath(self.link)
        if not os.path.isdir(release):
            target = _readlink(self.link)
            if target is None:
                raise ReleaseError(f"the release link {self.link} no longer exists")
            raise ReleaseError(
                f"the release link {self.link} points to {release}, which is not a directory"
            )
        return release

    def application_directories(self) -> list[str]:
        """The application's ``sys.path`` directories in the release the link names
        now (those that exist); never raises (no release: [])."""
        try:
            release = self.release()
        except ReleaseError:
            return []
        return [entry for entry in self._app_path_at(release) if os.path.isdir(entry)]

    def _app_path_at(self, release: str | None) -> list[str]:
        """The application's ``sys.path`` entries in ``release``, without repeats."""
        return list(dict.fromkeys(entry.at(release) for entry in self.app_path))

    def resolve(self) -> Runtime:
        """The :class:`Runtime` of a process started now.

        Raises:
            ReleaseError: naming what is missing (the link's target, the interpreter,
                the working directory), in one line.
        """
        release = self.release()
        executable = self.executable.at(release)
        now = f"; the service now points to {release}" if release is not None else ""
        if not os.access(executable, os.X_OK):
            if self.executable.relative is None:
                raise ReleaseError(f"the interpreter {executable} no longer exists{now}")
            raise ReleaseError(
                f"the interpreter {executable} does not exist{now} "
                f"(through the release link {self.link})"
            )
        cwd = self.cwd.at(release)
        if not os.path.isdir(cwd):
            raise ReleaseError(f"the working directory {cwd} no longer exists{now}")
        return Runtime(
            release=release,
            executable=executable,
            cwd=cwd,
            app_path=self._app_path_at(release),
            argv0=self.argv0.at(release) if self.argv0.path else "",
            main_path=self.main_path.at(release) if self.main_path is not None else None,
            original_dir=self.original_dir.at(release) if self.original_dir else None,
            identity=_identity(executable),
        )


def _identity(executable: str) -> tuple[tuple[int, ...], ...]:
    """The identity of the interpreter ``executable`` leads to, and of the
    ``pyvenv.cfg`` of its environment if it has one."""
    found = []
    for path in (executable, os.path.join(os.path.dirname(executable), os.pardir, "pyvenv.cfg")):
        try:
            info = os.stat(path)
        except OSError:
            continue
        found.append((info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns))
    return tuple(found)


def _logical_cwd() -> str:
    """The working directory, as the shell named it (``$PWD``) when that is the same
    directory, else as the kernel does (physical)."""
    cwd = os.getcwd()
    pwd = os.environ.get("PWD")
    if pwd and os.path.isabs(pwd) and os.path.normpath(pwd) != cwd:
        try:
            if os.path.samefile(pwd, cwd):
                return os.path.normpath(pwd)
        except OSError:
            return cwd
        now = os.path.realpath(pwd)
        if now != cwd and os.path.dirname(now) == os.path.dirname(cwd):
            logger.warning(
                "$PWD=%s names %s now, but the working directory is %s: the link was "
                "switched after the shell entered it, and graceful cannot tell which "
                "release to follow; cd into the link again (or pass --release-link)",
                pwd,
                now,
                cwd,
            )
    return cwd


def _original_dir() -> str | None:
    import multiprocess.process  # noqa: PLC0415 - only the supervisor needs it

    original: str | None = multiprocess.process.ORIGINAL_DIR
    return original


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _relative_to(path: str, link: str | None, release: str | None) -> str | None:
    """``path`` relative to the release directory, whether it is named through the
    link (logical), through the release's physical path, or through other links
    that lead into the release; None when it lies outside."""
    if link is None or release is None:
        return None
    for root in (link, release):
        if _is_within(path, root):
            return os.path.relpath(path, root)
    # named by another route (a link to a parent directory, say): the directory's
    # physical path tells, and the last component is kept as it is (a venv's
    # interpreter is itself a link, which must not be followed)
    parent = os.path.realpath(os.path.dirname(path))
    if _is_within(parent, release):
        return os.path.relpath(os.path.join(parent, os.path.basename(path)), release)
    # outside the release, but reached through a link in it (``.venv -> /srv/venvs/
    # 7f3a``, a virtual environment shared between releases): through that link
    for entry in _links_in(release):
        target = os.path.realpath(entry)
        if _is_within(parent, target):
            inside = os.path.relpath(os.path.join(parent, os.path.basename(path)), target)
            return os.path.normpath(os.path.join(os.path.basename(entry), inside))
    return None


def _links_in(directory: str) -> list[str]:
    """The links to directories at the top of ``directory``."""
    try:
        with os.scandir(directory) as entries:
            return sorted(entry.path for entry in entries if entry.is_symlink() and entry.is_dir())
    except OSError:
        return []


def _is_within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def find_release_link(cwd: str, app_entries: list[str] | None = None) -> str | None:
    """The release link among the paths this process was started through: a
    symbolic link to a directory that holds the application (the working directory,
    the main script's directory, the application's ``sys.path`` directories; not
    the interpreter's environment, which may be a link of its own, shared between
    releases, nor the interpreter: ``/bin -> usr/bin`` is no release).

    The paths the user named (the logical working directory, ``sys.argv[0]``, the
    main script, the application's entries) are looked at first, the interpreter's
    path (a console script's shebang names a release physically) only if they give
    nothing. Among the links found, the deepest wins (``/srv -> /data/srv`` holds
    ``/srv/app/current`` too). None when there is none. ``app_entries`` are the
    application's ``sys.path`` entries (see :func:`application_entries`), if known."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    named = [cwd, *(path for path in (main_file,) if path)]
    if sys.argv and sys.argv[0]:
        named.append(sys.argv[0])
    if app_entries is None:
        app_entries = application_entries(sys.path, cwd)
    named.extend(app_entries)
    environment = os.path.realpath(sys.prefix)
    held = [os.getcwd()]
    if main_file:
        held.append(os.path.realpath(os.path.dirname(os.path.join(cwd, main_file))))
    held += [os.path.realpath(entry) for entry in app_entries]
    # a console script's directory is the environment's, not the application's
    held = [item for item in held if not _is_within(item, environment)] or [os.getcwd()]
    for candidates in (named, [sys.executable]):
        found = _links_holding(candidates, cwd, held)
        if found:
            return max(found, key=lambda link: (link.count(os.sep), link))
    return None


def _links_holding(candidates: list[str], cwd: str, held: list[str]) -> set[str]:
    """The links to directories among the ancestors of ``candidates`` whose target
    holds one of ``held``."""
    found: set[str] = set()
    for candidate in candidates:
        path = os.path.normpath(os.path.join(cwd, candidate))
        while True:
            if os.path.islink(path) and os.path.isdir(path):
                target = os.path.realpath(path)
                if target != os.sep and any(_is_within(item, target) for item in held):
                    found.add(path)
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
    return found


def application_entries(path: list[str], cwd: str) -> list[str]:
    """The entries of ``path`` (a ``sys.path``) that belong to the application, made
    absolute against ``cwd``: every entry but the interpreter's own (see
    :func:`interpreter_owned`), in order, without repeats."""
    owned = interpreter_owned()
    entries: list[str] = []
    for entry in path:
        absolute = os.path.normpath(os.path.join(cwd, entry or os.curdir))
        if not _owned(absolute, owned) and absolute not in entries:
            entries.append(absolute)
    return entries


def interpreter_owned() -> tuple[set[str], list[str]]:
    """What this interpreter puts on ``sys.path`` by itself, for a child of another
    interpreter to compute anew: the directories of its installation schemes
    (standard library, ``site-packages``, for its environment and its base), its
    site directories, what their ``.pth`` files add (read, never executed); and the
    standard library directories whose subdirectories are its own too
    (``lib-dynload``, the zipped standard library)."""
    owned: set[str] = set()
    stdlib: list[str] = []
    prefixes = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix}
    for prefix in prefixes:
        scheme_vars = {
            "base": prefix,
            "platbase": prefix,
            "installed_base": prefix,
            "installed_platbase": prefix,
        }
        paths = sysconfig.get_paths(vars=scheme_vars)
        for key in ("purelib", "platlib"):
            owned.add(os.path.normpath(paths[key]))
        for key in ("stdlib", "platstdlib"):
            stdlib.append(os.path.normpath(paths[key]))
        version = f"{sys.version_info.major}{sys.version_info.minor}"
        owned.add(os.path.join(prefix, "lib", f"python{version}.zip"))
    site_dirs = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
    if site.ENABLE_USER_SITE:
        site_dirs.append(site.getusersitepackages())
    for site_dir in site_dirs:
        directory = os.path.normpath(site_dir)
        owned.add(directory)
        owned.update(_pth_entries(directory))
    return owned, stdlib


def _owned(path: str, owned: tuple[set[str], list[str]]) -> bool:
    exact, stdlib = owned
    return path in exact or any(_is_within(path, directory) for directory in stdlib)


def _pth_entries(directory: str) -> list[str]:
    """The directories the ``.pth`` files of site directory ``directory`` add."""
    try:
        names = sorted(name for name in os.listdir(directory) if name.endswith(".pth"))
    except OSError:
        return []
    entries: list[str] = []
    for name in names:
        try:
            with open(os.path.join(directory, name), encoding="utf-8") as pth:
                lines = pth.read().splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith(("#", "import ", "import\t")):
                continue
            entries.append(os.path.normpath(os.path.join(directory, line)))
    return entries


def child_sys_path(app_path: list[str], natural: list[str]) -> list[str]:
    """A child's ``sys.path``: the application's entries ``app_path`` first, then
    those its own interpreter computed (``natural``), without the working directory
    that ``python -c`` puts first (the application's entries say where its code
    is) and without repeats."""
    return [*app_path, *(entry for entry in natural if entry and entry not in app_path)]
