"""Reloads of real supervisors under real load: zero failed requests is the claim."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from echo_load import Load
from harness import (
    AS_ANOTHER_USER,
    ServiceProcess,
    cannot_act_as_another_user,
    poll_until,
    running,
)
from services import service_source, wait_for_file, write_service

RELOADS = 20


def reload_and_wait(svc: ServiceProcess, generation: int) -> float:
    """SIGHUP, then wait until ``generation`` serves; return the seconds it took."""
    mark = svc.mark()
    started = time.monotonic()
    svc.send(signal.SIGHUP)
    svc.wait_serving(generation, after=mark)
    return time.monotonic() - started


def reload_under_load(
    svc: ServiceProcess, script: Path, target: str, generations: range
) -> dict[str, object]:
    """Reload into each of ``generations`` (editing the prefix first) under load on
    ``target``; return the load's tally after checking it lost nothing."""
    with Load(target, clients=20) as load:
        for generation in generations:
            script.write_text(service_source("asyncio", prefix=f"v{generation}"))
            reload_and_wait(svc, generation)
            wait_for_prefix(load, f"v{generation}: ")
    tally = load.tally
    assert tally.failed == 0, tally.as_dict()
    return tally.as_dict()


def wait_for_prefix(load: Load, prefix: str, timeout: float = 10.0) -> None:
    """Wait until the load has been answered by code that uses ``prefix``."""
    poll_until(
        lambda: load.tally.prefixes.get(prefix, 0) > 0, timeout, f"an answer with prefix {prefix!r}"
    )


@pytest.mark.parametrize(
    ("kind", "workers"), [("asyncio", 1), ("asyncio", 2), ("trio", 1), ("sync", 1)]
)
def test_reloads_under_load_lose_no_request(tmp_path: Path, kind: str, workers: int) -> None:
    script = write_service(tmp_path / "svc.py", kind, prefix="v1")
    env = {"LISTEN": "127.0.0.1:0", "WORKERS": str(workers)}
    with running(script, env=env) as svc:
        svc.wait_serving(1)
        with Load(svc.address(), clients=24) as load:
            wait_for_prefix(load, "v1: ")
            took = []
            for generation in range(2, RELOADS + 2):
                script.write_text(service_source(kind, prefix=f"v{generation}"))
                took.append(reload_and_wait(svc, generation))
                wait_for_prefix(load, f"v{generation}: ")
        tally = load.tally
        print(f"{kind} x{workers}: {tally.as_dict()}; median reload {statistics.median(took):.3f}s")
        assert tally.failed == 0, tally.as_dict()
        assert tally.ok >= 1000
        assert all(tally.prefixes[f"v{g}: "] > 0 for g in range(1, RELOADS + 2))
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


def test_edit_of_an_imported_module_is_live_after_reload(tmp_path: Path) -> None:
    (tmp_path / "handlers.py").write_text('PREFIX = b"one: "\n')
    script = write_service(tmp_path / "svc.py", "asyncio", prefix_from_module=True)
    with running(script, env={"LISTEN": "127.0.0.1:0"}) as svc:
        svc.wait_serving(1)
        with Load(svc.address(), clients=4) as load:
            wait_for_prefix(load, "one: ")
            (tmp_path / "handlers.py").write_text('PREFIX = b"two: "\n')
            reload_and_wait(svc, 2)
            wait_for_prefix(load, "two: ")
        tally = load.tally
        assert tally.failed == 0, tally.as_dict()


def test_reload_over_a_unix_socket_loses_no_request(tmp_path: Path) -> None:
    sock = tmp_path / "echo.sock"
    script = write_service(tmp_path / "svc.py", "asyncio", prefix="v1")
    with running(script, env={"LISTEN": f"unix:{sock}"}) as svc:
        svc.wait_serving(1)
        assert svc.address() == f"unix:{sock}"
        reload_under_load(svc, script, f"unix:{sock}", range(2, 7))
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0
    assert not sock.exists(), "the supervisor removes the socket file it created"


BROKEN = {
    "syntax_error": "    return (\n",
    "raises": "    raise RuntimeError('boom in new code')",
    "exits": "    raise SystemExit(3)",
    "hangs": "    await anyio.sleep(3600)",
    "import_error": "    import no_such_module_anywhere",
}
EXPECTED_CAUSE = {
    "syntax_error": r"worker 0: SyntaxError: .* \(\S*svc\.py, line \d+\)",
    "raises": r"RuntimeError: boom in new code",
    "exits": r"exited with code 3 before it was ready",
    "hangs": r"not ready within ready_timeout=2s",
    "import_error": r"ModuleNotFoundError: No module named 'no_such_module_anywhere'",
}


@pytest.mark.parametrize("breakage", sorted(BROKEN))
def test_failed_reload_keeps_the_old_generation_serving(tmp_path: Path, breakage: str) -> None:
    script = write_service(tmp_path / "svc.py", "asyncio", prefix="good")
    with running(script, env={"LISTEN": "127.0.0.1:0", "READY_TIMEOUT": "2"}) as svc:
        svc.wait_serving(1)
        with Load(svc.address(), clients=20) as load:
            wait_for_prefix(load, "good: ")
            script.write_text(
                service_source("asyncio", prefix="bad", before_serve=BROKEN[breakage])
            )
            mark = svc.mark()
            svc.send(signal.SIGHUP)
            failure = svc.wait_for(r"reload failed: generation 2: (.*)", after=mark)
            assert re.search(EXPECTED_CAUSE[breakage], failure.group(0)), failure.group(0)
            assert "generation 1 keeps serving" in failure.group(0)
            served_before = load.tally.ok
            poll_until(
                lambda: load.tally.ok >= served_before + 200,
                10,
                "the old generation to keep answering",
            )
            script.write_text(service_source("asyncio", prefix="fixed"))
            reload_and_wait(svc, 3)
            wait_for_prefix(load, "fixed: ")
        tally = load.tally
        assert tally.failed == 0, tally.as_dict()
        assert tally.prefixes.get("bad: ", 0) == 0
        # the failed worker was reaped: only generation 3's worker, generation 1's
        # (parked for generation 3's probation), multiprocess's resource tracker, the
        # orphan guard and the standby for the next reload remain
        poll_until(lambda: len(svc.children()) == 5, 10, "only five children left")


def test_sighups_during_a_reload_coalesce_into_one_follow_up(tmp_path: Path) -> None:
    gate = tmp_path / "start-now"
    slow = wait_for_file(gate)
    script = write_service(tmp_path / "svc.py", "asyncio", prefix="v1")
    with running(script, env={"LISTEN": "127.0.0.1:0"}) as svc:
        svc.wait_serving(1)
        with Load(svc.address(), clients=8) as load:
            script.write_text(service_source("asyncio", prefix="v2", before_serve=slow))
            mark = svc.mark()
            svc.send(signal.SIGHUP)
            svc.wait_for("starting generation 2", after=mark)
            for n in (3, 4, 5):
                script.write_text(service_source("asyncio", prefix=f"v{n}", before_serve=slow))
                heard = svc.mark()
                svc.send(signal.SIGHUP)
                svc.wait_for("SIGHUP: reloading", after=heard)
            # generation 2 was still starting (it waits for the gate) all along
            gate.touch()
            svc.wait_serving(2, after=mark)
            svc.wait_serving(3, after=mark)
            # the newest code on disk won
            wait_for_prefix(load, "v5: ")
            # no generation was started for the coalesced SIGHUPs: the next one is 4
            script.write_text(service_source("asyncio", prefix="v6"))
            reload_and_wait(svc, 4)
            wait_for_prefix(load, "v6: ")
        tally = load.tally
        assert tally.failed == 0, tally.as_dict()
        assert svc.output.count("starting generation") == 4


def test_reload_on_an_inherited_fd_listener_loses_no_request(tmp_path: Path) -> None:
    """``fd:N``: the listener was bound by whoever started the supervisor."""
    with socket.socket() as inherited:
        inherited.bind(("127.0.0.1", 0))
        inherited.listen()
        host, port = inherited.getsockname()
        fd = inherited.fileno()
        script = write_service(tmp_path / "svc.py", "asyncio", prefix="v1")
        with running(script, env={"LISTEN": f"fd:{fd}"}, pass_fds=(fd,)) as svc:
            svc.wait_serving(1)
            assert svc.address() == f"{host}:{port}"
            reload_under_load(svc, script, f"{host}:{port}", range(2, 5))
            svc.send(signal.SIGTERM)
            assert svc.wait_exit() == 0


def _release(root: Path, name: str) -> Path:
    """A release directory whose answers carry its name in the script and in a module."""
    release = root / "releases" / name
    release.mkdir(parents=True)
    (release / "handlers.py").write_text(f'PREFIX = b"module-{name}: "\n')
    source = service_source("asyncio", prefix_from_module=True)
    (release / "svc.py").write_text(
        source.replace("PREFIX = PREFIX", f'PREFIX = PREFIX + b"script-{name}: "')
    )
    return release


def _switch(current: Path, release: Path) -> None:
    """Point ``current`` at ``release`` atomically, as deploy tools do."""
    staged = current.with_name("current.staged")
    staged.symlink_to(release.relative_to(current.parent))
    staged.replace(current)


@pytest.mark.parametrize("invocation", ["absolute_path", "relative_in_logical_cwd"])
def test_symlinked_release_switch_runs_the_new_release(tmp_path: Path, invocation: str) -> None:
    current = tmp_path / "current"
    current.symlink_to(_release(tmp_path, "r1").relative_to(tmp_path))
    script = current / "svc.py" if invocation == "absolute_path" else Path("svc.py")
    env = {"LISTEN": "127.0.0.1:0", "PWD": str(current)}
    with running(script, env=env, cwd=current) as svc:
        svc.wait_serving(1)
        with Load(svc.address(), clients=8) as load:
            wait_for_prefix(load, "module-r1: script-r1: ")
            _switch(current, _release(tmp_path, "r2"))
            reload_and_wait(svc, 2)
            wait_for_prefix(load, "module-r2: script-r2: ")
            # the first release can go: nothing is pinned to it any more
            shutil.rmtree(tmp_path / "releases" / "r1")
            _switch(current, _release(tmp_path, "r3"))
            reload_and_wait(svc, 3)
            wait_for_prefix(load, "module-r3: script-r3: ")
        tally = load.tally
        assert tally.failed == 0, tally.as_dict()
        assert set(tally.prefixes) == {f"module-{r}: script-{r}: " for r in ("r1", "r2", "r3")}


def test_entry_defined_in_an_imported_module_runs_its_edited_body(tmp_path: Path) -> None:
    """The script only imports the service; the entry's own body changes on disk."""
    module = tmp_path / "echo_app.py"
    write_service(module, "asyncio", prefix="body1")
    script = tmp_path / "run.py"
    script.write_text("from echo_app import main\n\nif __name__ == '__main__':\n    main.run()\n")
    with running(script, env={"LISTEN": "127.0.0.1:0"}) as svc:
        svc.wait_serving(1)
        with Load(svc.address(), clients=8) as load:
            wait_for_prefix(load, "body1: ")
            # rewrite the entry function itself: it now answers with a new prefix
            module.write_text(
                service_source("asyncio", prefix="unused").replace(
                    "    await ctx.serve(echo)",
                    '    global PREFIX\n    PREFIX = b"body2: "\n    await ctx.serve(echo)',
                )
            )
            reload_and_wait(svc, 2)
            wait_for_prefix(load, "body2: ")
        tally = load.tally
        assert tally.failed == 0, tally.as_dict()


def _deploy_keeping_size_and_mtime(module: Path, source: str) -> None:
    """What ``rsync -a`` or ``tar`` do: new content, the old size and mtime."""
    before = module.stat()
    staged = module.with_name(module.name + ".staged")
    staged.write_text(source)
    assert staged.stat().st_size == before.st_size
    os.utime(staged, ns=(before.st_atime_ns, before.st_mtime_ns))
    staged.replace(module)


def _answers(address: str, expected: bytes) -> bool:
    with socket.create_connection(_host_port(address), timeout=10) as client:
        client.sendall(b"hi\n")
        return client.recv(100) == expected


@contextlib.contextmanager
def _serving_cached_handlers(
    tmp_path: Path, wrapper: tuple[str, ...] = ()
) -> Iterator[tuple[ServiceProcess, Path]]:
    """A service whose answers come from ``handlers.py`` ("one: "), with bytecode
    caching on, as on a production host (the test machines turn it off), once that
    module's bytecode has been written."""
    handlers = tmp_path / "handlers.py"
    handlers.write_text('PREFIX = b"one: "\n')
    script = write_service(tmp_path / "svc.py", "asyncio", prefix_from_module=True)
    env = {"LISTEN": "127.0.0.1:0", "PYTHONDONTWRITEBYTECODE": ""}
    with running(script, env=env, wrapper=wrapper) as svc:
        svc.wait_serving(1)
        cached = Path(importlib.util.cache_from_source(str(handlers)))
        poll_until(cached.exists, 10, "the bytecode of handlers.py")
        yield svc, handlers


def test_a_deploy_that_keeps_size_and_mtime_does_not_serve_stale_bytecode(tmp_path: Path) -> None:
    """``rsync -a`` and ``tar`` keep a file's modification time. A new ``handlers.py``
    of the same size then matches the header of the old ``.pyc``, and Python would
    load the old code. The supervisor notices, recompiles it, and says so."""
    with _serving_cached_handlers(tmp_path) as (svc, handlers):
        assert _answers(svc.address(), b"one: hi\n")
        _deploy_keeping_size_and_mtime(handlers, 'PREFIX = b"two: "\n')
        reload_and_wait(svc, 2)
        poll_until(lambda: _answers(svc.address(), b"two: hi\n"), 10, "the new handlers.py")
        svc.wait_for(rf"stale bytecode: {re.escape(str(handlers))} changed .*; recompiled it")
        # the bytecode is right again: the next reload has nothing to say about it
        reload_and_wait(svc, 3)
        poll_until(lambda: _answers(svc.address(), b"two: hi\n"), 10, "generation 3")
        assert svc.output.count("stale bytecode:") == 1


def test_a_worker_restarted_after_such_a_deploy_runs_the_new_code(tmp_path: Path) -> None:
    """No reload: the deploy happens, then a worker crashes; its replacement imports
    from disk, and must not get the stale bytecode either."""
    with _serving_cached_handlers(tmp_path) as (svc, handlers):
        _deploy_keeping_size_and_mtime(handlers, 'PREFIX = b"two: "\n')
        mark = svc.mark()
        [worker] = svc.worker_pids()
        os.kill(worker, signal.SIGKILL)
        svc.wait_for("generation 1 worker 0 is back in service", after=mark)
        poll_until(lambda: _answers(svc.address(), b"two: hi\n"), 10, "the new handlers.py")
        svc.wait_for(rf"stale bytecode: {re.escape(str(handlers))} changed", after=mark)


def test_stale_bytecode_that_cannot_be_rewritten_is_bypassed(tmp_path: Path) -> None:
    """The same deploy, but the supervisor may not write the ``__pycache__`` (another
    user's, as a read-only release would be): the new generation compiles from
    source instead."""
    why_not = cannot_act_as_another_user()
    if why_not:
        pytest.skip(why_not)
    with _serving_cached_handlers(tmp_path, wrapper=AS_ANOTHER_USER) as (svc, handlers):
        cached = Path(importlib.util.cache_from_source(str(handlers)))
        for path in (cached.parent, *cached.parent.iterdir()):
            os.chown(path, 65533, 65533)
        _deploy_keeping_size_and_mtime(handlers, 'PREFIX = b"two: "\n')
        reload_and_wait(svc, 2)
        poll_until(lambda: _answers(svc.address(), b"two: hi\n"), 10, "the new handlers.py")
        svc.wait_for(
            rf"stale bytecode: {re.escape(str(handlers))} changed .*; could not recompile "
            r".*, so generation 2 compiles everything from source"
        )


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)
