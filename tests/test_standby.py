"""The warm standby, with real supervisors, real signals and real files.

A standby is an interpreter spawned while the service is quiet, with graceful,
anyio and the event loop imported and never the user's code. The next reload's
first worker (or, with preload, template) is made from it. These tests check that
it is used, that the code it runs is the code on disk (and the libraries too,
upgraded between two reloads), that it can be turned off, and that a standby that
dies or hangs costs only a cold start.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import psutil
import pytest
from echo_load import Load
from harness import ServiceProcess, ask, connect, poll_until, reload
from services import service_source

from graceful import Control
from graceful.code.release import Runtime
from graceful.code.stale_imports import CLOCK_MARGIN_NS, ImportSnapshot
from graceful.spawn import standby as _standby
from graceful.testing import is_alive, process_name
from graceful.wire.bootstrap import Assignment

#: ``before_serve`` code: the answers name the process (``v1 1234: ``).
PID_IN_PREFIX = """\
    global PREFIX
    PREFIX = PREFIX[:-2] + f" {os.getpid()}: ".encode()
"""


def write_handlers(tmp_path: Path, prefix: str) -> None:
    """``handlers.py``, which the service imports for its prefix; each import of it
    is logged (with the importing process's PID) in ``imports.log``."""
    log = tmp_path / "imports.log"
    (tmp_path / "handlers.py").write_text(
        textwrap.dedent(f"""\
            import os
            with open({str(log)!r}, "a") as log:
                log.write(f"{{os.getpid()}}\\n")
            PREFIX = {f"{prefix}: ".encode()!r}
        """)
    )


def importers(tmp_path: Path) -> set[int]:
    """The PIDs that imported the user's code so far."""
    log = tmp_path / "imports.log"
    return {int(line) for line in log.read_text().split()} if log.exists() else set()


def start(tmp_path: Path, *, env: dict[str, str] | None = None) -> ServiceProcess:
    script = tmp_path / "svc.py"
    script.write_text(service_source(prefix_from_module=True, before_serve=PID_IN_PREFIX))
    settings = {
        "LISTEN": "127.0.0.1:0",
        "DRAIN_TIMEOUT": "5",
        "PROBATION": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        **(env or {}),
    }
    return ServiceProcess(script, env=settings)


def answer(svc: ServiceProcess) -> tuple[str, int]:
    """One answer on a new connection: the version and the PID that answered."""
    with connect(svc.address()) as client:
        text = ask(client, "hello").decode()
    version, pid = text.split(":")[0].split()
    return version, int(pid)


def answers_only(svc: ServiceProcess, version: str) -> int:
    """Wait until new connections get only ``version``; the PID that answers."""
    seen: list[int] = []

    def only_new() -> bool:
        got = [answer(svc) for _ in range(5)]
        seen[:] = [pid for v, pid in got]
        return all(v == version for v, _ in got)

    poll_until(only_new, 30, f"only {version} answering")
    return seen[-1]


@contextlib.contextmanager
def warm(
    tmp_path: Path, *, env: dict[str, str] | None = None
) -> Iterator[tuple[ServiceProcess, int]]:
    """:func:`start` on handlers ``v1``; once generation 1 serves and the standby is
    warm, (svc, the standby's PID)."""
    write_handlers(tmp_path, "v1")
    with start(tmp_path, env=env) as svc:
        svc.wait_serving(1)
        yield svc, svc.warm_standby()


def test_a_reload_is_served_by_the_standby_which_never_held_the_users_code(
    tmp_path: Path,
) -> None:
    with warm(tmp_path) as (svc, standby):
        assert standby not in importers(tmp_path)
        assert standby not in svc.worker_pids()
        with Load(svc.address(), clients=8) as load:
            poll_until(lambda: load.tally.ok > 100, 20, "answers")
            write_handlers(tmp_path, "v2")
            reload(svc, 2)
            # the standby became generation 2's worker: it imported the new code
            assert answers_only(svc, "v2") == standby
            assert standby in importers(tmp_path)
            assert standby in svc.worker_pids()
            served = load.tally.ok
            poll_until(lambda: load.tally.ok > served + 100, 20, "answers from v2")
        assert load.tally.failed == 0, load.tally
        # a new standby is prepared once the service is quiet, again without the code
        poll_until(lambda: svc.warm_standby() != standby, 30, "a new standby")
        assert svc.warm_standby() not in importers(tmp_path)


@pytest.mark.parametrize("how", ["default", "standby=False", "--no-standby"])
def test_standby_false_or_no_standby_keeps_none(tmp_path: Path, how: str) -> None:
    write_handlers(tmp_path, "v1")
    script = tmp_path / "svc.py"
    pid_file = tmp_path / "svc.pid"
    script.write_text(service_source(prefix_from_module=True, before_serve=PID_IN_PREFIX))
    env = {"LISTEN": "127.0.0.1:0", "DRAIN_TIMEOUT": "5", "PROBATION": "0"}
    if how == "standby=False":
        env["STANDBY"] = "0"
    args = ["run", "svc:main", "--pid-file", str(pid_file)]
    if how == "--no-standby":
        args.append("--no-standby")
    with ServiceProcess(script, module="graceful", args=args, env=env, cwd=tmp_path) as svc:
        svc.wait_serving(1)
        poll_until(pid_file.exists, 10, "the PID file")
        write_handlers(tmp_path, "v2")
        reload(svc, 2)
        answers_only(svc, "v2")
        if how == "default":
            svc.warm_standby()
            return
        # turned off: the supervisor keeps none (it says so), and none ever ran
        assert Control(pid_file).status()["standby"] is None
        assert svc.standby_pids() == []
        assert "standby" not in svc.output


def test_a_killed_standby_is_replaced_and_costs_nothing(tmp_path: Path) -> None:
    with warm(tmp_path) as (svc, standby):
        os.kill(standby, signal.SIGKILL)
        svc.wait_for(rf"the standby \(PID {standby}\) exited")
        # replaced while the service is quiet, without waiting for a reload
        poll_until(lambda: svc.warm_standby() != standby, 30, "a new standby")
        replacement = svc.warm_standby()
        with Load(svc.address(), clients=8) as load:
            poll_until(lambda: load.tally.ok > 100, 20, "answers")
            write_handlers(tmp_path, "v2")
            reload(svc, 2)
            assert answers_only(svc, "v2") == replacement
        assert load.tally.failed == 0, load.tally


def test_a_hung_standby_is_given_up_and_the_reload_starts_cold(tmp_path: Path) -> None:
    with warm(tmp_path) as (svc, standby):
        os.kill(standby, signal.SIGSTOP)
        write_handlers(tmp_path, "v2")
        reload(svc, 2)
        svc.wait_for(rf"the standby \(PID {standby}\) was not used: it did not answer")
        assert answers_only(svc, "v2") != standby
        poll_until(lambda: not is_alive(standby), 10, "the hung standby killed and reaped")


def test_with_preload_the_standby_becomes_the_template(tmp_path: Path) -> None:
    with warm(tmp_path, env={"PRELOAD": "1", "WORKERS": "2"}) as (svc, standby):
        assert standby not in importers(tmp_path)
        write_handlers(tmp_path, "v2")
        reload(svc, 2)
        answers_only(svc, "v2")
        # the template imported the new code once; its workers were forked from it
        assert standby in importers(tmp_path)
        assert process_name(standby) == "graceful-tmpl"
        workers = [pid for pid in svc.worker_pids() if process_name(pid) == "graceful-worker"]
        assert workers
        assert all(psutil.Process(pid).ppid() == svc.pid for pid in workers)
        assert not importers(tmp_path) & set(workers)


SHADOW_QUEUE = """\
import os, sysconfig
with open({log!r}, "a") as log:
    log.write(f"{{os.getpid()}}\\n")
# the standard library's queue, with a mark: this file shadows it
_path = os.path.join(sysconfig.get_path("stdlib"), "queue.py")
exec(compile(open(_path).read(), _path, "exec"))
USER_SHADOW = True
"""

#: ``before_serve`` code: the answers say whether ``queue`` is the service's own.
SHADOW_IN_PREFIX = """\
    import queue
    PREFIX = PREFIX[:-2] + f" shadow={getattr(queue, 'USER_SHADOW', False)}: ".encode()
"""


def test_a_module_beside_the_script_that_shadows_a_library_is_never_missed_nor_run_early(
    tmp_path: Path,
) -> None:
    """``queue.py`` beside the script shadows the standard library's for a new
    process. A standby imported the library's before the file appeared: the next
    reload starts cold and runs the service's own. The standbys prepared while the
    file is there never import it, and give up; once it is gone, one is warm again."""
    shadow_log = tmp_path / "shadow.log"
    write_handlers(tmp_path, "v1")
    script = tmp_path / "svc.py"
    script.write_text(
        service_source(prefix_from_module=True, before_serve=PID_IN_PREFIX + SHADOW_IN_PREFIX)
    )
    env = {"LISTEN": "127.0.0.1:0", "DRAIN_TIMEOUT": "5", "PROBATION": "0"}
    with ServiceProcess(script, env=env) as svc:
        svc.wait_serving(1)
        standby = svc.warm_standby()
        (tmp_path / "queue.py").write_text(SHADOW_QUEUE.format(log=str(shadow_log)))
        reload(svc, 2)
        svc.wait_for(rf"the standby \(PID {standby}\) was not used: .*shadows queue")
        poll_until(lambda: b"shadow=True" in ask_one(svc), 30, "the service's own queue")
        # the next standbys refuse, without having imported the file
        svc.wait_for(r"could not warm up: the service's own modules shadow .*queue")
        importers_of_shadow = {int(pid) for pid in shadow_log.read_text().split()}
        assert not importers_of_shadow & set(svc.standby_pids())
        assert standby not in importers_of_shadow
        (tmp_path / "queue.py").unlink()
        fresh = svc.warm_standby()
        assert fresh not in importers_of_shadow


def ask_one(svc: ServiceProcess) -> bytes:
    with connect(svc.address()) as client:
        return ask(client, "hello")


# --- a library upgraded between two reloads ------------------------------------------


def copy_anyio(site: Path) -> Path:
    """A copy of the installed anyio (package and metadata) in ``site``; the
    package's directory."""
    package = Path(anyio.__file__).parent
    shutil.copytree(package, site / "anyio", ignore=shutil.ignore_patterns("__pycache__"))
    [metadata] = [path for path in package.parent.glob("anyio-*.dist-info") if path.is_dir()]
    shutil.copytree(metadata, site / metadata.name)
    return site / "anyio"


def install_mark(package: Path, mark: str) -> None:
    """Rewrite ``anyio/__init__.py`` with ``MARK = mark`` appended, as an installer
    does (a new file renamed into place)."""
    init = package / "__init__.py"
    source = init.read_text().split("\nGRACEFUL_TEST_MARK")[0]
    new = init.with_suffix(".new")
    new.write_text(f"{source}\nGRACEFUL_TEST_MARK = {mark!r}\n")
    os.replace(new, init)


def bump_version(site: Path, version: str) -> None:
    """Rename the copy's dist-info to ``version``, as an upgrade does."""
    [old] = list(site.glob("anyio-*.dist-info"))
    new = site / f"anyio-{version}.dist-info"
    old.rename(new)


@pytest.mark.parametrize("upgrade", ["imported module", "metadata only"])
def test_a_library_upgraded_between_two_reloads_is_run_in_its_new_version(
    tmp_path: Path, upgrade: str
) -> None:
    """anyio, which the standby imports before any user code, is upgraded on disk
    between two reloads: the new generation runs the new version, never the
    standby's old one (nor a mix)."""
    site = tmp_path / "site"
    site.mkdir()
    package = copy_anyio(site)
    install_mark(package, "anyio-v1")
    write_handlers(tmp_path, "v1")
    script = tmp_path / "svc.py"
    script.write_text(
        service_source(
            prefix_from_module=True,
            before_serve=PID_IN_PREFIX
            + "    PREFIX = PREFIX[:-2] + f' {anyio.GRACEFUL_TEST_MARK}: '.encode()\n",
        )
    )
    env = {
        "LISTEN": "127.0.0.1:0",
        "DRAIN_TIMEOUT": "5",
        "PROBATION": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
    }
    with ServiceProcess(script, env=env) as svc:
        svc.wait_serving(1)
        with connect(svc.address()) as client:
            assert b" anyio-v1: " in ask(client, "hello")
        [first] = svc.worker_pids()
        standby = svc.warm_standby()
        if upgrade == "imported module":
            install_mark(package, "anyio-v2")
            expected = b" anyio-v2: "
        else:
            # only a module the standby had not imported changed (and the metadata)
            (package / "graceful_extra.py").write_text("NEW = True\n")
            expected = b" anyio-v1: "
        bump_version(site, "99.0.0")
        reload(svc, 2)

        def new_version() -> bool:
            with connect(svc.address()) as client:
                text = ask(client, "hello")
            pid = int(text.split(b":")[0].split()[1])
            return expected in text and pid not in (first, standby)

        poll_until(new_version, 30, "the new generation, started cold")
        svc.wait_for(
            rf"the standby \(PID {standby}\) was not used: what it imported changed on disk"
        )
        assert not is_alive(standby)


# --- the snapshot of what a process imported (pure, in this process) -----------------


def test_an_import_snapshot_notices_a_changed_module_and_new_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "site"
    root.mkdir()
    (root / "snapshot_probe.py").write_text("X = 1\n")
    (root / "probe-1.0.dist-info").mkdir()
    monkeypatch.syspath_prepend(str(root))
    # as if this process had started after the files were written (the rule for
    # files changed after the start is checked below)
    started = time.time_ns() + 2 * CLOCK_MARGIN_NS
    snapshot_probe = importlib.import_module("snapshot_probe")
    try:
        snapshot = ImportSnapshot.take(started)
        assert snapshot.changes() == []
        (root / "probe-1.0.dist-info").rename(root / "probe-2.0.dist-info")
        assert snapshot.changes() == [f"{root} (probe-1.0.dist-info, probe-2.0.dist-info)"]
        snapshot = ImportSnapshot.take(started)
        assert snapshot.changes() == []
        replacement = root / "snapshot_probe.new"
        replacement.write_text("X = 2\n")
        os.replace(replacement, root / "snapshot_probe.py")
        assert str(root / "snapshot_probe.py") in snapshot.changes()
        # a file changed after the process started counts, even before the snapshot
        late = ImportSnapshot.take(os.stat(root / "snapshot_probe.py").st_ctime_ns)
        assert str(root / "snapshot_probe.py") in late.changes()
    finally:
        sys.modules.pop(snapshot_probe.__name__, None)


def test_an_import_snapshot_names_at_most_a_few_deleted_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release deleted under a standby: what it says stays one short line."""
    root = tmp_path / "site"
    root.mkdir()
    names = [f"deleted_probe_{index}" for index in range(40)]
    for name in names:
        (root / f"{name}.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(root))
    started = time.time_ns() + 2 * CLOCK_MARGIN_NS
    for name in names:
        importlib.import_module(name)
    try:
        snapshot = ImportSnapshot.take(started)
        shutil.rmtree(root)
        changes = snapshot.changes()
        assert len(changes) == 3, changes
        assert all(change.endswith(" (gone)") for change in changes)
    finally:
        for name in names:
            sys.modules.pop(name, None)


@pytest.mark.parametrize("standby", [True, False])
def test_status_shows_the_standby_and_the_last_reloads_phases_in_order(
    tmp_path: Path, standby: bool
) -> None:
    write_handlers(tmp_path, "v1")
    script = tmp_path / "svc.py"
    pid_file = tmp_path / "svc.pid"
    script.write_text(
        service_source(prefix_from_module=True, before_serve=PID_IN_PREFIX, pid_file=pid_file)
    )
    env = {"LISTEN": "127.0.0.1:0", "PROBATION": "0", "STANDBY": "1" if standby else "0"}
    with ServiceProcess(script, env=env) as svc:
        svc.wait_serving(1)
        poll_until(pid_file.exists, 10, "the PID file")
        control = Control(pid_file)
        if standby:
            pid = svc.warm_standby()
            assert control.status()["standby"] == {"pid": pid, "warm": True}
        else:
            assert control.status()["standby"] is None
        write_handlers(tmp_path, "v2")
        reload(svc, 2)
        answers_only(svc, "v2")

        def closed() -> bool:
            return "closed" in control.status()["last_reload"]["phases"]

        poll_until(closed, 10, "generation 1 to report its listeners closed")
        phases = control.status()["last_reload"]["phases"]
        # made from the standby, the worker had its interpreter and graceful already
        cold = ["interpreter", "graceful"]
        expected = ["asked", "spawn", "started", *([] if standby else cold)]
        expected += ["code", "loop", "ready", "serving", "closed"]
        assert list(phases) == expected, phases
        times = list(phases.values())
        assert times == sorted(times), phases
        assert times[0] == 0
        text = subprocess.run(
            [sys.executable, "-m", "graceful", "status", "--pid-file", str(pid_file)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "phases (ms since asked): spawn " in text, text
        assert ("standby: off" in text) == (not standby), text


def test_an_import_snapshot_notices_a_plain_directory_becoming_a_package_that_shadows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain directory earlier on ``sys.path`` is only a namespace portion: the
    module found later wins. An ``__init__.py`` put into it makes it the package a
    new process imports, without changing the directory on ``sys.path``."""
    early, late = tmp_path / "early", tmp_path / "late"
    (early / "shadow_probe").mkdir(parents=True)
    late.mkdir()
    (late / "shadow_probe.py").write_text("WHERE = 'late'\n")
    monkeypatch.syspath_prepend(str(late))
    monkeypatch.syspath_prepend(str(early))
    probe = importlib.import_module("shadow_probe")
    try:
        assert probe.WHERE == "late"
        snapshot = ImportSnapshot.take(time.time_ns())
        assert snapshot.shadows() == []
        (early / "shadow_probe" / "__init__.py").write_text("WHERE = 'early'\n")
        assert snapshot.shadows() == [f"{early / 'shadow_probe'} (shadows shadow_probe)"]
    finally:
        sys.modules.pop("shadow_probe", None)


@pytest.mark.parametrize(
    ("standby_does", "why"),
    [
        ("takes", None),
        ("exits", "it exited before it answered"),
        ("hangs", "it did not answer within 0.2s"),
        ("lies", "it answered {'garbage': \"b'not json'\"}"),
    ],
)
def test_an_assignment_says_why_a_standby_did_not_take_it(
    monkeypatch: pytest.MonkeyPatch, standby_does: str, why: str | None
) -> None:
    """The supervisor's side of the exchange, against a socket it cannot trust."""
    monkeypatch.setattr(_standby, "ASSIGN_TIMEOUT", 0.2)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)

    class Process:
        pid = os.getpid()

    runtime = Runtime(
        release=None,
        executable=sys.executable,
        cwd=os.getcwd(),
        app_path=[],
        argv0="",
        main_path=None,
        original_dir=None,
    )
    standby = _standby.Standby(Process(), ours, None, None, runtime=runtime)

    def play() -> None:
        theirs.recv(65536)
        if standby_does == "takes":
            theirs.send(b'{"taken": true}')
        elif standby_does == "exits":
            theirs.close()
        elif standby_does == "lies":
            theirs.send(b"not json")

    peer = threading.Thread(target=play)
    peer.start()
    try:
        assert anyio.run(standby.assign, Assignment(cwd=str(Path.cwd()))) == why
    finally:
        peer.join(5)
        ours.close()
        theirs.close()
