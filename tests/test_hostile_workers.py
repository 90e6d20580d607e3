"""Workers and environments that try to break the supervisor.

A worker that forks, that lies on its control pipe, that blocks its event loop or
makes the shared listener blocking; a supervisor that runs out of descriptors or is
killed. Each test starts a real supervisor and checks that the damage stays with
the process that caused it.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from echo_load import Load
from harness import (
    ServiceProcess,
    ask,
    connect,
    holds_listener,
    hup,
    is_alive,
    poll_until,
    process_state,
    read_line,
    reap,
    reload,
    running,
)
from services import service_source, wait_for_file, write_service

from graceful.wire import messages as _wire


def assert_port_is_free(host: str, port: str) -> None:
    """A successor supervisor can bind the old one's port (SO_REUSEADDR, as graceful
    binds): nothing listens on it any more."""
    with socket.socket() as successor:
        successor.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        successor.bind((host, int(port)))
        successor.listen()


def wait_for_prefix(load: Load, prefix: str, timeout: float = 15.0) -> None:
    poll_until(lambda: load.tally.prefixes.get(prefix, 0) > 0, timeout, f"an answer {prefix!r}")


def answers_of(load: Load, more: int, timeout: float = 15.0) -> None:
    """Wait until the load has had ``more`` successful answers from now on."""
    start = load.tally.ok
    poll_until(lambda: load.tally.ok >= start + more, timeout, f"{more} more answers")


# -- a worker that leaves a process behind ---------------------------------------------


def leaves_a_child(how: str) -> str:
    """Code for the entry: start a long-lived child that inherits the worker's
    descriptors and ignores SIGTERM, and record its PID in the file named by
    $LEFT_BEHIND."""
    if how == "fork":
        start = (
            "pid = os.fork()\n"
            "    if pid == 0:\n"
            "        signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "        time.sleep(3600)\n"
            "        os._exit(0)\n"
        )
    else:
        start = (
            "pid = subprocess.Popen(\n"
            "        ['sh', '-c', 'trap \"\" TERM; exec sleep 3600'], close_fds=False\n"
            "    ).pid\n"
        )
    return (
        "    import signal, subprocess, time\n"
        f"    {start}"
        "    with open(os.environ['LEFT_BEHIND'], 'a') as record:\n"
        "        record.write(f'{pid}\\n')\n"
    )


def leaving_env(record: Path, drain_timeout: str) -> dict[str, str]:
    """The environment of a service whose workers write what they leave behind to
    ``record``; a reload makes its old generation exit (no probation parks it)."""
    return {
        "LISTEN": "127.0.0.1:0",
        "DRAIN_TIMEOUT": drain_timeout,
        "LEFT_BEHIND": str(record),
        "PROBATION": "0",
    }


def left_behind(record: Path) -> list[int]:
    poll_until(record.exists, 15, "the worker to record its child")
    return [int(pid) for pid in record.read_text().split()]


@pytest.mark.parametrize("how", ["fork", "subprocess"])
def test_a_worker_whose_child_outlives_it_is_reaped_after_a_reload(
    tmp_path: Path, how: str
) -> None:
    record = tmp_path / "children"
    script = write_service(tmp_path / "svc.py", prefix="v1", before_serve=leaves_a_child(how))
    env = leaving_env(record, drain_timeout="2")
    with running(script, env=env) as svc:
        svc.wait_serving(1)
        [old_worker] = svc.worker_pids()
        [child] = left_behind(record)
        with Load(svc.address(), clients=8) as load:
            wait_for_prefix(load, "v1: ")
            script.write_text(service_source(prefix="v2"))
            reload(svc, 2)
            wait_for_prefix(load, "v2: ")
            # The old worker drains and exits; its child still holds the worker's
            # descriptors, but the supervisor notices the exit and reaps it.
            poll_until(
                lambda: process_state(old_worker) is None, 15, "generation 1's worker to be reaped"
            )
            # What the worker left in its process group is stopped with it.
            poll_until(lambda: not is_alive(child), 15, "the worker's child to be stopped")
            answers_of(load, 100)
        tally = load.tally
        reap([child])
        assert tally.failed == 0, tally.as_dict()
        svc.wait_for(rf"generation 1 worker 0 left 1 process \({child}\) behind")
        svc.send(signal.SIGTERM)
        assert svc.wait_exit(timeout=20) == 0


@pytest.mark.parametrize("how", ["fork", "subprocess"])
def test_a_stop_finishes_within_its_deadlines_when_a_worker_left_a_child(
    tmp_path: Path, how: str
) -> None:
    record = tmp_path / "children"
    script = write_service(tmp_path / "svc.py", before_serve=leaves_a_child(how))
    env = leaving_env(record, drain_timeout="2")
    with running(script, env=env) as svc:
        svc.wait_serving(1)
        [child] = left_behind(record)
        with connect(svc.address()) as client:
            assert ask(client, "hi") == b"v1: hi\n"
        svc.send(signal.SIGTERM)
        assert svc.wait_exit(timeout=20) == 0
        poll_until(lambda: not is_alive(child), 10, "the worker's child to be stopped")
        reap([child])
        assert svc.processes() == []


# -- running out of file descriptors ---------------------------------------------------


@pytest.mark.parametrize("preload", ["0", "1"])
def test_running_out_of_descriptors_at_a_reload_fails_only_the_reload(
    tmp_path: Path, preload: str
) -> None:
    script = write_service(tmp_path / "svc.py", prefix="v1")
    with running(script, env={"LISTEN": "127.0.0.1:0", "PRELOAD": preload}) as svc:
        svc.wait_serving(1)
        with Load(svc.address(), clients=8) as load:
            wait_for_prefix(load, "v1: ")
            limits = resource.prlimit(svc.pid, resource.RLIMIT_NOFILE)
            in_use = psutil.Process(svc.pid).num_fds()
            # one descriptor left: the reload cannot even make its pipes
            resource.prlimit(svc.pid, resource.RLIMIT_NOFILE, (in_use + 1, limits[1]))
            script.write_text(service_source(prefix="v2"))
            mark = hup(svc)
            failure = svc.wait_for(r"reload failed: generation 2: .*", after=mark).group(0)
            assert "Too many open files" in failure, failure
            assert "generation 1 keeps serving" in failure
            answers_of(load, 200)
            resource.prlimit(svc.pid, resource.RLIMIT_NOFILE, limits)
            reload(svc, 3)
            wait_for_prefix(load, "v2: ")
        tally = load.tally
        assert tally.failed == 0, tally.as_dict()
        assert "Traceback" not in svc.output
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


def test_a_worker_dying_while_the_supervisor_has_no_descriptor_left_costs_nothing_more(
    tmp_path: Path,
) -> None:
    """The worker left a child behind, and the supervisor cannot open anything at
    the moment the worker dies: it still reaps it, sweeps the child, and restarts the
    worker once descriptors are available again."""
    record = tmp_path / "children"
    script = write_service(tmp_path / "svc.py", before_serve=leaves_a_child("fork"))
    env = {"LISTEN": "127.0.0.1:0", "LEFT_BEHIND": str(record)}
    with running(script, env=env) as svc:
        svc.wait_serving(1)
        [worker] = svc.worker_pids()
        [child] = left_behind(record)
        limits = resource.prlimit(svc.pid, resource.RLIMIT_NOFILE)
        resource.prlimit(svc.pid, resource.RLIMIT_NOFILE, (5, limits[1]))
        mark = svc.mark()
        os.kill(worker, signal.SIGKILL)
        svc.wait_for(r"generation 1 worker 0 left processes behind", after=mark)
        poll_until(lambda: not is_alive(child), 15, "the child to be stopped")
        svc.wait_for(r"could not start a worker: .*Too many open files", after=mark)
        resource.prlimit(svc.pid, resource.RLIMIT_NOFILE, limits)
        svc.wait_for("generation 1 worker 0 is back in service", after=mark)
        reap([child])
        assert "Traceback" not in svc.output
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


#: runs the rest of its command line with at most 64 open descriptors
WITH_64_FDS = (
    sys.executable,
    "-c",
    "import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)); "
    "os.execv(sys.argv[1], sys.argv[1:])",
)


@pytest.mark.parametrize(
    ("listeners", "why"),
    [(80, "too many open files"), (50, "leave too few file descriptors")],
)
def test_more_listeners_than_the_descriptor_limit_allows_is_refused_at_start(
    tmp_path: Path, listeners: int, why: str
) -> None:
    script = write_service(tmp_path / "svc.py")
    env = {"LISTEN": ",".join(["127.0.0.1:0"] * listeners)}
    with running(script, env=env, wrapper=WITH_64_FDS) as svc:
        assert svc.wait_exit() == 2, svc.output
        errors = [line for line in svc.lines if "ERROR" in line]
        assert len(errors) == 1, svc.output
        assert why in errors[0]
        assert "limit is 64" in errors[0]
        assert "Traceback" not in svc.output
        assert "starting generation" not in svc.output


def test_a_worker_that_declares_itself_broken_again_and_again_is_logged_once(
    tmp_path: Path,
) -> None:
    """Outside a probation a declaration is only logged: a worker that repeats it (or
    writes it straight on its pipe, past the context) cannot flood the log."""
    flood = (
        "        if line == b'flood':\n"
        '            os.write(CTX._control.fileno(), b\'["broken", "db down"]\\n\' * 500)\n'
    )
    script = write_service(tmp_path / "svc.py", prefix="v1", on_line=flood)
    with running(script, env={"LISTEN": "127.0.0.1:0"}) as svc:
        svc.wait_serving(1)
        with connect(svc.address()) as client:
            assert ask(client, "flood") == b"v1: flood\n"
            assert ask(client, "after") == b"v1: after\n"
        svc.wait_for(r"generation 1 worker 0 declared itself broken \(db down\)")
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0
        assert svc.output.count("declared itself broken") == 1, svc.output


# -- a worker that lies on its control pipe --------------------------------------------

#: bytes a worker writes on its control pipe that are not a control message
LIES = {
    # a well-framed multiprocess message holding a pickle that is not ours
    "pickle": "(lambda p: len(p).to_bytes(4, 'big') + p)(__import__('pickle').dumps(('bogus',)))",
    "junk": "b'\\x00\\xff not a message at all\\n'",
    "endless": "b'[' * 100_000",
    # JSON that parses, or nearly: a number too large for a float, lists nested deeply
    "overflow": "b'[\"shutdown\", 1' + b'0' * 400 + b']\\n'",
    "deep": "b'[' * 3000 + b'\\n'",
}


def lie_on_line(kind: str, record: Path) -> str:
    """Handler code: on the request ``lie``, record this worker's PID, then write a lie
    to the supervisor."""
    return (
        "        if line == b'lie':\n"
        f"            with open({str(record)!r}, 'w') as record:\n"
        "                record.write(str(os.getpid()))\n"
        f"            os.write(CTX._control.fileno(), {LIES[kind]})\n"
    )


def answered_by(address: str, prefix: bytes) -> bool:
    with connect(address) as client:
        return ask(client, "hi").startswith(prefix)


@pytest.mark.parametrize("kind", sorted(LIES))
def test_a_worker_that_lies_on_its_pipe_costs_only_that_worker(tmp_path: Path, kind: str) -> None:
    record = tmp_path / "liar"
    script = write_service(tmp_path / "svc.py", prefix="v1", on_line=lie_on_line(kind, record))
    with running(script, env={"LISTEN": "127.0.0.1:0", "WORKERS": "2"}) as svc:
        svc.wait_serving(1)
        workers = set(svc.worker_pids())
        mark = svc.mark()
        with connect(svc.address()) as client:
            client.sendall(b"lie\n")
            poll_until(record.exists, 10, "the liar to record its PID")
            liar = int(record.read_text())
        svc.wait_for(
            r"generation 1 worker \d sent a malformed control message .*; killing it", after=mark
        )
        svc.wait_for(r"generation 1 worker \d is back in service", after=mark)
        [honest] = workers - {liar}
        assert is_alive(honest), "the other worker was not touched"
        assert liar not in svc.worker_pids()
        # the supervisor still works
        script.write_text(service_source(prefix="v2"))
        reload(svc, 2)
        poll_until(lambda: answered_by(svc.address(), b"v2: "), 10, "generation 2 to answer")
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0
        assert "Traceback" not in svc.output


def test_a_worker_that_floods_its_pipe_with_valid_messages_costs_only_that_worker(
    tmp_path: Path,
) -> None:
    record = tmp_path / "liar"
    flood = (
        "        if line == b'flood':\n"
        f"            with open({str(record)!r}, 'w') as record:\n"
        "                record.write(str(os.getpid()))\n"
        "            def flood():\n"
        "                while True:\n"
        "                    os.write(CTX._control.fileno(), b'[\"ready\"]\\n' * 1000)\n"
        "            __import__('threading').Thread(target=flood, daemon=True).start()\n"
    )
    script = write_service(tmp_path / "svc.py", prefix="v1", on_line=flood)
    with running(script, env={"LISTEN": "127.0.0.1:0", "WORKERS": "2"}) as svc:
        svc.wait_serving(1)
        mark = svc.mark()
        with connect(svc.address()) as client:
            client.sendall(b"flood\n")
            poll_until(record.exists, 10, "the flood to start")
        svc.wait_for(
            rf"sent a malformed control message \(more than {_wire.MAX_MESSAGES} messages\)",
            after=mark,
        )
        svc.wait_for(r"generation 1 worker \d is back in service", after=mark)
        # the supervisor still answers its signals
        script.write_text(service_source(prefix="v2"))
        reload(svc, 2)
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


def test_a_half_written_message_does_not_stall_the_supervisor(tmp_path: Path) -> None:
    half = "        if line == b'lie':\n            os.write(CTX._control.fileno(), b'[')\n"
    script = write_service(tmp_path / "svc.py", prefix="v1", on_line=half)
    with running(script, env={"LISTEN": "127.0.0.1:0", "DRAIN_TIMEOUT": "2"}) as svc:
        svc.wait_serving(1)
        with connect(svc.address()) as client:
            assert ask(client, "lie") == b"v1: lie\n"
        script.write_text(service_source(prefix="v2"))
        reload(svc, 2)
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


def test_a_new_generation_that_lies_before_it_is_ready_fails_the_reload(tmp_path: Path) -> None:
    script = write_service(tmp_path / "svc.py", prefix="good")
    with running(script, env={"LISTEN": "127.0.0.1:0"}) as svc:
        svc.wait_serving(1)
        with Load(svc.address(), clients=8) as load:
            wait_for_prefix(load, "good: ")
            # it lies, then waits: it never accepts a connection, so none is lost
            lie = f"    os.write(ctx._control.fileno(), {LIES['junk']})\n    await anyio.sleep(60)"
            script.write_text(service_source(prefix="bad", before_serve=lie))
            mark = hup(svc)
            failure = svc.wait_for(r"reload failed: generation 2: .*", after=mark).group(0)
            assert "sent a malformed control message" in failure
            assert "generation 1 keeps serving" in failure
            answers_of(load, 100)
        tally = load.tally
        assert tally.failed == 0, tally.as_dict()
        assert tally.prefixes.get("bad: ", 0) == 0


# -- a worker whose event loop is blocked when its supervisor dies ---------------------

BLOCKS = {
    "asyncio": (
        "        if line == b'block':\n"
        "            await stream.send(PREFIX + b'blocking\\n')\n"
        "            __import__('time').sleep(3600)\n"
    ),
    # a catastrophic regular expression: C code that never releases the GIL, so no
    # other thread of the worker runs either
    "asyncio-gil": (
        "        if line == b'block':\n"
        "            await stream.send(PREFIX + b'blocking\\n')\n"
        "            __import__('re').match(r'(a+)+$', 'a' * 64 + 'b')\n"
    ),
    "sync": (
        "            if line == b'block':\n"
        "                self.wfile.write(PREFIX + b'blocking\\n')\n"
        "                time.sleep(3600)\n"
    ),
}


@contextlib.contextmanager
def blocked_worker(svc: ServiceProcess) -> Iterator[tuple[int, socket.socket]]:
    """The service's only worker, blocked by ``block`` sent on a new connection (it
    answers ``blocking`` first): (its PID, the connection). Once the block ends, the
    connection is closed and the worker reaped."""
    [worker] = svc.worker_pids()
    with connect(svc.address()) as client:
        client.sendall(b"block\n")
        yield worker, client
    reap([worker])


@pytest.mark.parametrize("kind", sorted(BLOCKS))
def test_a_blocked_worker_is_gone_soon_after_its_supervisor_is_killed(
    tmp_path: Path, kind: str
) -> None:
    script = write_service(tmp_path / "svc.py", kind.partition("-")[0], on_line=BLOCKS[kind])
    with running(script, env={"LISTEN": "127.0.0.1:0", "DRAIN_TIMEOUT": "1"}) as svc:
        svc.wait_serving(1)
        host, _, port = svc.address().rpartition(":")
        with blocked_worker(svc) as (worker, client):
            assert read_line(client) == b"v1: blocking\n"
            svc.send(signal.SIGKILL)
            # drain_timeout (1 s) plus the worker's own kill grace (2 s), with room to spare
            poll_until(lambda: not is_alive(worker), 15, "the orphaned worker to exit")
        assert_port_is_free(host, port)


def test_what_an_orphaned_worker_left_behind_is_stopped_and_releases_the_port(
    tmp_path: Path,
) -> None:
    """A worker forks a child that inherits the listener and ignores SIGTERM, then the
    supervisor is killed: the worker drains and exits, and its guard stops the child,
    so the port is free again."""
    record = tmp_path / "children"
    script = write_service(tmp_path / "svc.py", before_serve=leaves_a_child("fork"))
    env = leaving_env(record, drain_timeout="1")
    with running(script, env=env) as svc:
        svc.wait_serving(1)
        host, _, port = svc.address().rpartition(":")
        kill_the_supervisor_and_see_the_guard_stop_what_was_left(svc, record)
        assert_port_is_free(host, port)


def kill_the_supervisor_and_see_the_guard_stop_what_was_left(
    svc: ServiceProcess, record: Path
) -> None:
    """SIGKILL the supervisor of one worker that left a child behind: the worker
    drains and exits, and the orphan guard stops the child."""
    [worker] = svc.worker_pids()
    [child] = left_behind(record)
    svc.send(signal.SIGKILL)
    poll_until(lambda: not is_alive(worker), 15, "the orphaned worker to exit")
    poll_until(lambda: not is_alive(child), 15, "what it left behind to be stopped")
    reap([worker, child])


def test_the_guard_outlives_its_supervisor_with_a_drain_timeout_of_weeks(
    tmp_path: Path,
) -> None:
    """``drain_timeout`` takes any finite number of seconds. One of weeks (more than
    ``poll()`` takes in milliseconds) must not crash the orphan guard when the
    supervisor dies: it still stops what an exited worker left behind."""
    record = tmp_path / "children"
    script = write_service(tmp_path / "svc.py", before_serve=leaves_a_child("fork"))
    env = leaving_env(record, drain_timeout=str(30 * 24 * 3600))
    with running(script, env=env) as svc:
        svc.wait_serving(1)
        kill_the_supervisor_and_see_the_guard_stop_what_was_left(svc, record)
        assert "Traceback" not in svc.output


def test_a_worker_hung_while_importing_is_gone_soon_after_its_supervisor_is_killed(
    tmp_path: Path,
) -> None:
    """A worker stuck in the import of the main script (no process group of its own
    yet, no graceful code running in it) when the supervisor is killed."""
    script = write_service(tmp_path / "svc.py", prefix="v1")
    env = {"LISTEN": "127.0.0.1:0", "DRAIN_TIMEOUT": "1"}
    with running(script, env=env) as svc:
        svc.wait_serving(1)
        host, _, port = svc.address().rpartition(":")
        hangs = service_source(prefix="v2").replace(
            "CTX = None",
            "CTX = None\nif __name__ == '__mp_main__':\n    __import__('time').sleep(3600)",
        )
        script.write_text(hangs)
        mark = hup(svc)
        svc.wait_for("starting generation 2", after=mark)
        poll_until(lambda: len(svc.worker_pids()) == 2, 10, "generation 2's worker")
        workers = svc.worker_pids()
        svc.send(signal.SIGKILL)
        poll_until(lambda: not any(is_alive(pid) for pid in workers), 15, "both workers to be gone")
        reap(workers)
        assert_port_is_free(host, port)


def test_what_a_worker_left_is_stopped_even_if_the_supervisor_dies_while_sweeping_it(
    tmp_path: Path,
) -> None:
    record = tmp_path / "children"
    script = write_service(tmp_path / "svc.py", prefix="v1", before_serve=leaves_a_child("fork"))
    env = leaving_env(record, drain_timeout="1")
    with running(script, env=env) as svc:
        svc.wait_serving(1)
        [child] = left_behind(record)
        script.write_text(service_source(prefix="v2"))
        mark = hup(svc)
        # the supervisor starts its 2 s sweep of the child, and dies in the middle of it
        svc.wait_for(rf"generation 1 worker 0 left 1 process \({child}\) behind", after=mark)
        svc.send(signal.SIGKILL)
        poll_until(lambda: not is_alive(child), 15, "the child to be stopped")
        reap([child])


def test_a_killed_orphan_guard_is_replaced(tmp_path: Path) -> None:
    script = write_service(tmp_path / "svc.py", on_line=BLOCKS["asyncio-gil"])
    with running(script, env={"LISTEN": "127.0.0.1:0", "DRAIN_TIMEOUT": "1"}) as svc:
        svc.wait_serving(1)
        [guard] = guards_of(svc)
        os.kill(guard, signal.SIGKILL)
        svc.wait_for(rf"the orphan guard \(PID {guard}\) exited .*; started a new one")
        poll_until(lambda: len(guards_of(svc)) == 1, 10, "the new guard")
        # and the new guard does its job
        with blocked_worker(svc) as (worker, client):
            assert read_line(client) == b"v1: blocking\n"
            svc.send(signal.SIGKILL)
            poll_until(lambda: not is_alive(worker), 15, "the stuck worker to be killed")


def guards_of(svc: ServiceProcess) -> list[int]:
    """The supervisor's live children that are orphan guards."""
    return [pid for pid in svc.children() if is_alive(pid) and _runs_orphan_guard(pid)]


def _runs_orphan_guard(pid: int) -> bool:
    try:
        return any(arg.endswith("child/guard.py") for arg in psutil.Process(pid).cmdline())
    except psutil.NoSuchProcess:
        return False


def test_a_process_started_while_a_worker_imports_the_script_is_stopped_with_it(
    tmp_path: Path,
) -> None:
    # The worker imports the main script itself, as the leader of its own process
    # group: what the import starts is in that group, and is stopped with the worker.
    # (Before, multiprocess imported it before the worker had a group of its own.)
    record = tmp_path / "children"
    script = write_service(tmp_path / "svc.py", prefix="v1")
    script.write_text(
        script.read_text().replace(
            "CTX = None",
            "CTX = None\n"
            "if __name__ == '__mp_main__':\n"
            "    import subprocess\n"
            "    HELPER = subprocess.Popen(['sleep', '60'])\n"
            "    with open(os.environ['LEFT_BEHIND'], 'a') as record:\n"
            "        record.write(f'{HELPER.pid}\\n')\n",
        )
    )
    env = leaving_env(record, drain_timeout="2")
    with running(script, env=env) as svc:
        svc.wait_serving(1)
        [old_worker] = svc.worker_pids()
        [helper] = left_behind(record)
        assert os.getpgid(helper) == old_worker
        script.write_text(service_source(prefix="v2"))
        reload(svc, 2)
        # the worker's exit sends its group SIGTERM, which ends the helper
        poll_until(lambda: not is_alive(helper), 15, "the helper started at import to stop")
        reap([helper])


# -- a listener made blocking by one generation ----------------------------------------


def test_the_supervisor_hands_a_new_generation_non_blocking_listeners(tmp_path: Path) -> None:
    make_blocking = "    ctx.listeners[0].socket.setblocking(True)"
    script = write_service(tmp_path / "svc.py", prefix="v1", before_serve=make_blocking)
    with running(script, env={"LISTEN": "127.0.0.1:0"}) as svc:
        svc.wait_serving(1)
        with connect(svc.address()) as client:
            assert ask(client, "hi") == b"v1: hi\n"
        # generation 2 records the flag as it received the listener, before serving
        record = (
            "    global BLOCKING\n    BLOCKING = os.get_blocking(ctx.listeners[0].socket.fileno())"
        )
        report = "        if line == b'blocking?':\n            line = repr(BLOCKING).encode()\n"
        script.write_text(
            service_source(prefix="v2", before_serve=record, on_line=report).replace(
                "CTX = None", "CTX = None\nBLOCKING = None"
            )
        )
        reload(svc, 2)
        answers: list[bytes] = []

        def generation_2_answers() -> bool:
            with connect(svc.address()) as client:
                answers.append(ask(client, "blocking?"))
            return answers[-1].startswith(b"v2: ")

        poll_until(generation_2_answers, 10, "generation 2 to answer")
        assert answers[-1] == b"v2: False\n"


def waits_in(pid: int) -> str:
    """Where ``pid``'s main thread sleeps in the kernel (``do_epoll_wait`` for an idle
    event loop, ``inet_csk_accept`` for a blocking accept()), or "" if it runs."""
    # Read from /proc on purpose: the kernel function a process sleeps in is the
    # very thing this test looks at, and psutil does not expose it (its status()
    # says only "sleeping", which an idle event loop is too).
    try:
        return Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return ""


def test_a_listener_made_blocking_by_another_generation_does_not_stall_a_worker(
    tmp_path: Path,
) -> None:
    script = write_service(tmp_path / "svc.py", prefix="v1")
    env = {
        "LISTEN": "127.0.0.1:0",
        "WORKERS": "2",
        "DRAIN_TIMEOUT": "3",
        "PROBATION": "0",
    }
    with running(script, env=env) as svc:
        svc.wait_serving(1)
        address = svc.address()
        generation_1 = svc.worker_pids()
        # Generation 2 makes the shared listener blocking, then takes a while to start.
        started = tmp_path / "started"
        blocking_start = (
            "    ctx.listeners[0].socket.setblocking(True)\n"
            f"    open({str(started)!r}, 'w').close()\n"
            "    await anyio.sleep(3)"
        )
        script.write_text(service_source(prefix="v2", before_serve=blocking_start))
        mark = hup(svc)
        poll_until(started.exists, 15, "generation 2 to make the listener blocking")
        # Both workers of generation 1 wake up for each new connection; the one that
        # loses the race for it must not then block in accept().
        stuck = []
        for _ in range(50):
            with connect(address) as client:
                assert ask(client, "hi") == b"v1: hi\n"
            # Let both workers settle: back in their event loop's wait, or stuck.
            with contextlib.suppress(AssertionError):
                poll_until(
                    lambda: all(waits_in(pid) for pid in generation_1),
                    2,
                    "both workers to wait in the kernel",
                )
            stuck = [pid for pid in generation_1 if waits_in(pid) == "inet_csk_accept"]
            if stuck:
                break
        # With no more traffic, generation 1 drains and exits by itself once
        # generation 2 serves.
        svc.wait_serving(2, after=mark)
        poll_until(
            lambda: not any(is_alive(pid) for pid in generation_1), 20, "generation 1 to exit"
        )
        assert "did not finish draining" not in svc.output
        assert stuck == [], "a worker blocked in accept()"
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


# -- new connections during a stop -----------------------------------------------------


def refused(address: str) -> bool:
    try:
        connect(address).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_connection_made_during_a_stop_is_refused_at_once(tmp_path: Path) -> None:
    script = write_service(tmp_path / "svc.py")
    with running(script, env={"LISTEN": "127.0.0.1:0"}) as svc:
        svc.wait_serving(1)
        address = svc.address()
        with connect(address) as busy:
            busy.sendall(b"sleep 3\n")
            assert read_line(busy) == b"v1: sleeping\n"
            svc.send(signal.SIGTERM)
            svc.wait_for("stopping: draining")
            # Nothing will accept a new connection any more: it is refused, rather
            # than left waiting in the backlog to be reset when the supervisor exits.
            poll_until(lambda: refused(address), 10, "new connections to be refused")
            busy.settimeout(15)
            assert read_line(busy) == b"v1: sleep 3\n"
        assert svc.wait_exit() == 0


def test_a_stop_during_a_slow_start_refuses_new_connections_and_ends_cleanly(
    tmp_path: Path,
) -> None:
    gate = tmp_path / "never"
    script = write_service(tmp_path / "svc.py", prefix="v1")
    with running(script, env={"LISTEN": "127.0.0.1:0"}) as svc:
        svc.wait_serving(1)
        address = svc.address()
        # generation 2 holds the listeners and will not be ready before the stop
        script.write_text(service_source(prefix="v2", before_serve=wait_for_file(gate)))
        mark = hup(svc)
        svc.wait_for("starting generation 2", after=mark)
        poll_until(lambda: len(svc.worker_pids()) == 2, 10, "generation 2's worker")
        svc.send(signal.SIGTERM)
        svc.wait_for("stopping: draining")
        poll_until(lambda: refused(address), 15, "new connections to be refused")
        assert svc.wait_exit() == 0
        svc.wait_for("generation 2 worker 0 was still starting when the service stopped")
        assert "did not finish draining" not in svc.output


def test_a_connection_made_during_a_stop_waits_on_an_inherited_listener(tmp_path: Path) -> None:
    """``fd:N`` belongs to whoever started the supervisor (systemd, a wrapper): it
    stays open, so a connection made during the stop waits for the next supervisor."""
    with socket.socket() as inherited:
        inherited.bind(("127.0.0.1", 0))
        inherited.listen()
        host, port = inherited.getsockname()
        fd = inherited.fileno()
        script = write_service(tmp_path / "svc.py")
        env = {"LISTEN": f"fd:{fd}"}
        with running(script, env=env, pass_fds=(fd,)) as first:
            first.wait_serving(1)
            [worker] = first.worker_pids()
            with connect(f"{host}:{port}") as busy:
                busy.sendall(b"sleep 1\n")
                assert read_line(busy) == b"v1: sleeping\n"
                first.send(signal.SIGTERM)
                # once the draining worker has closed its copy, nothing of this
                # supervisor accepts any more
                poll_until(
                    lambda: not holds_listener(worker, f"{host}:{port}"),
                    10,
                    "the worker to stop accepting",
                )
                waiting = connect(f"{host}:{port}")
                busy.settimeout(15)
                assert read_line(busy) == b"v1: sleep 1\n"
            assert first.wait_exit() == 0
        script.write_text(service_source(prefix="next"))
        with running(script, env=env, pass_fds=(fd,)) as second:
            second.wait_serving(1)
            waiting.settimeout(15)
            assert ask(waiting, "hi") == b"next: hi\n"
            waiting.close()
            second.send(signal.SIGTERM)
            assert second.wait_exit() == 0


# -- an ASGI app that is not callable ----------------------------------------------------


@pytest.mark.parametrize("value", ["42", "object()"])
def test_a_reload_to_an_app_that_is_not_callable_fails(tmp_path: Path, value: str) -> None:
    app = tmp_path / "app.py"
    app.write_text(
        "async def app(scope, receive, send):\n"
        "    if scope['type'] == 'http':\n"
        "        headers = [(b'content-length', b'2')]\n"
        "        await send({'type': 'http.response.start', 'status': 200, 'headers': headers})\n"
        "        await send({'type': 'http.response.body', 'body': b'v1'})\n"
    )
    args = ["serve", "app:app", "--listen", "127.0.0.1:0", "--no-access-log"]
    with running(app, module="graceful", args=args, cwd=tmp_path) as svc:
        svc.wait_serving(1)
        app.write_text(f"app = {value}\n")
        mark = hup(svc)
        failure = svc.wait_for(r"reload failed: generation 2: .*", after=mark).group(0)
        assert "is not an ASGI application" in failure, failure
        assert "generation 1 keeps serving" in failure
        with connect(svc.address()) as client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            response = b""
            while not response.endswith(b"v1") and (chunk := client.recv(1000)):
                response += chunk
            assert response.startswith(b"HTTP/1.1 200"), response
            assert response.endswith(b"v1"), response


def test_the_guard_signals_only_group_members_that_started_before_the_worker_exited() -> None:
    """A process that reuses a dead worker's number as its own group (a new session
    leader, once the worker has been reaped) started after the worker exited; the
    guard's selection leaves it alone."""
    from graceful.child import guard as _orphan_guard  # noqa: PLC0415 - the guard's own helpers

    before = _orphan_guard._ticks()
    newcomer = subprocess.Popen(["sleep", "30"], process_group=0)
    try:
        poll_until(lambda: _orphan_guard._identity(newcomer.pid) is not None, 10, "sleep")
        after = _orphan_guard._ticks() + 1
        assert _orphan_guard._leftovers(newcomer.pid, exited_at=before) == []
        [pidfd] = _orphan_guard._leftovers(newcomer.pid, exited_at=after)
        os.close(pidfd)
    finally:
        newcomer.kill()
        newcomer.wait()
