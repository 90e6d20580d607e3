"""Probation and rollback with real supervisors, real workers and real load.

After a reload the previous generation stays parked (drained, alive, holding no
listener) through the new one's probation. These tests make the new code crash
after it became ready, declare itself broken, or get rolled back by hand, and
check that the parked processes themselves answer again, that nothing is
respawned, and which requests failed: only those the crashing workers held.

The echo services answer ``PREFIX PID: line``, so the load's prefixes say which
process answered every request. A crashing worker records, from its event loop
and just before it exits (so that it accepts nothing after), the client ports of
the connections it holds; every failed request must be on one of them.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from echo_load import Load
from harness import ServiceProcess, graceful_cli, graceful_serve, hup, is_alive, poll_until, running
from http_load import HttpLoad
from services import pid_service, service_source, write_service

from graceful import Control

#: ``before_serve`` code: the answers name the process (``old 1234: ``).
PID_IN_PREFIX = """\
    global PREFIX
    PREFIX = PREFIX[:-2] + f" {os.getpid()}: ".encode()
"""


@pytest.fixture
def kind() -> str:
    """The service's backend: asyncio, unless a test is parametrized with another."""
    return "asyncio"


@pytest.fixture
def script(tmp_path: Path, kind: str) -> Path:
    """``svc.py`` with the old code on ``kind``, whose answers name the process
    (:data:`PID_IN_PREFIX`), and whose supervisor writes its PID to ``svc.pid``."""
    pid_file = tmp_path / "svc.pid"
    return write_service(
        tmp_path / "svc.py", kind, prefix="old", before_serve=PID_IN_PREFIX, pid_file=pid_file
    )


#: Records the client ports of the connections this worker holds on the service's
#: port (``SERVICE_PORT``, known before: a worker told to drain no longer holds the
#: listener), then exits 3. Called from the event loop: nothing is accepted between
#: the record and the exit.
RECORD_AND_CRASH = """\
def record_and_crash():
    import json, psutil
    held = [
        c.raddr.port
        for c in psutil.Process().net_connections("tcp")
        if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == SERVICE_PORT
    ]
    with open(os.path.join(os.environ["CRASH_RECORD"], str(os.getpid())), "w") as record:
        json.dump(held, record)
    os._exit(3)
"""


def crash_after_ready(kind: str, seconds: float = 1.5) -> str:
    """``before_serve`` code: crash ``seconds`` after the worker starts serving."""
    if kind == "trio":
        schedule = f"""\
async def crash_later():
    import trio
    await trio.sleep({seconds})
    record_and_crash()
__import__("trio").lowlevel.spawn_system_task(crash_later)
"""
    else:
        schedule = (
            f'__import__("asyncio").get_running_loop().call_later({seconds}, record_and_crash)\n'
        )
    port = "SERVICE_PORT = ctx.listeners[0].address[1]\n"
    return textwrap.indent(port + RECORD_AND_CRASH + schedule, "    ")


def answering_pids(prefixes: collections.Counter[str]) -> collections.Counter[int]:
    """Answers by the PID that gave them, from the load's prefixes."""
    by_pid: collections.Counter[int] = collections.Counter()
    for prefix, count in prefixes.items():
        by_pid[int(prefix.split()[1].rstrip(":"))] += count
    return by_pid


def assert_answered_by(since: collections.Counter[str], pids: list[int], clients: int) -> None:
    """Every answer in ``since`` came from ``pids``, but for at most one per client:
    an answer the new code wrote before it went, read by the load after it went."""
    by_pid = answering_pids(since)
    assert set(pids) & set(by_pid), by_pid
    strays = {pid: count for pid, count in by_pid.items() if pid not in pids}
    assert sum(strays.values()) <= clients, by_pid
    assert all(prefix.startswith(("old ", "new ")) for prefix in since), since


def held_by_crashed_workers(record: Path) -> set[int]:
    return {port for path in record.iterdir() for port in json.loads(path.read_text())}


def more_answers(load: Load, more: int) -> collections.Counter[str]:
    """Wait for ``more`` answers from now on; the prefixes of those answers."""
    before = collections.Counter(load.tally.prefixes)
    poll_until(lambda: load.tally.ok >= sum(before.values()) + more, 20, f"{more} more answers")
    return collections.Counter(load.tally.prefixes) - before


def env(tmp_path: Path, **more: str) -> dict[str, str]:
    record = tmp_path / "crashes"
    record.mkdir(exist_ok=True)
    return {
        "LISTEN": "127.0.0.1:0",
        "WORKERS": "2",
        "DRAIN_TIMEOUT": "5",
        "PROBATION": "60",
        "CRASH_RECORD": str(record),
        **more,
    }


@contextlib.contextmanager
def started(script: Path, tmp_path: Path, **settings: str) -> Iterator[ServiceProcess]:
    """``script`` run with :func:`env` (``settings`` added); once generation 1 serves
    and the supervisor has written ``svc.pid``."""
    with running(script, env=env(tmp_path, **settings)) as svc:
        svc.wait_serving(1)
        poll_until((tmp_path / "svc.pid").exists, 10, "the PID file")
        yield svc


def killed(svc: ServiceProcess, pid: int, then: str) -> int:
    """SIGKILL worker ``pid``, then wait until the supervisor logs ``then`` (a regular
    expression); the mark of the output from just before the kill."""
    mark = svc.mark()
    os.kill(pid, signal.SIGKILL)
    svc.wait_for(then, after=mark)
    return mark


def wait_until_only(svc: ServiceProcess, pids: list[int]) -> None:
    poll_until(lambda: sorted(svc.worker_pids()) == sorted(pids), 20, f"only workers {pids} left")


@pytest.mark.parametrize("kind", ["asyncio", "trio"])
def test_new_code_that_crashes_after_ready_is_rolled_back_to_the_parked_processes(
    tmp_path: Path, script: Path, kind: str
) -> None:
    with running(script, env=env(tmp_path)) as svc:
        svc.wait_serving(1)
        old = sorted(svc.worker_pids())
        with Load(svc.address(), clients=24) as load:
            more_answers(load, 100)
            script.write_text(
                service_source(
                    kind, prefix="new", before_serve=PID_IN_PREFIX + crash_after_ready(kind)
                )
            )
            mark = hup(svc)
            svc.wait_serving(2, after=mark)
            svc.wait_for(r"rolling back: generation 2 worker \d exited with code 3", after=mark)
            svc.wait_for(r"rolled back: generation 1 serves again", after=mark)
            # the new workers crash (the same code) or drain; then only the parked ones
            # are left
            wait_until_only(svc, old)
            since = more_answers(load, 1000)
        tally = load.tally
        # the old code's own processes answer: nothing was respawned
        # (which of the two takes the new connections is the kernel's choice)
        assert_answered_by(since, old, clients=24)
        assert "starting generation 3" not in svc.output
        # every failure was a request on a connection a crashing worker held
        held = held_by_crashed_workers(tmp_path / "crashes")
        # the first crash rolled back; the other new worker crashed too, or finished
        # its drain first (then it lost nothing)
        assert 1 <= len(list((tmp_path / "crashes").iterdir())) <= 2
        assert set(tally.failed_on) <= held, (tally.as_dict(), sorted(held))
        assert tally.failed <= len(held)
        assert set(tally.failures) <= {"no answer (connection closed)", "ConnectionResetError"}
        assert any(prefix.startswith("new ") for prefix in tally.prefixes)
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


def test_a_worker_that_declares_itself_broken_is_rolled_back_without_a_failed_request(
    tmp_path: Path, script: Path
) -> None:
    # (declared once generation 2 serves: declared while it starts, it fails the
    # reload instead, which a busy machine makes likely with any fixed delay)
    serving = tmp_path / "generation-2-serves"
    broken = PID_IN_PREFIX + textwrap.indent(
        "async def declare():\n"
        f"    while not __import__('os').path.exists({str(serving)!r}):\n"
        "        await anyio.sleep(0.05)\n"
        "    await ctx.declare_broken('the schema is newer than this code')\n"
        "TASK = __import__('asyncio').get_running_loop().create_task(declare())\n",
        "    ",
    )
    with running(script, env=env(tmp_path)) as svc:
        svc.wait_serving(1)
        old = sorted(svc.worker_pids())
        with Load(svc.address(), clients=24) as load:
            more_answers(load, 100)
            script.write_text(service_source(prefix="new", before_serve=broken))
            mark = hup(svc)
            svc.wait_serving(2, after=mark)
            serving.touch()
            svc.wait_for(
                r"rolling back: generation 2 worker \d declared itself broken: "
                r"the schema is newer than this code",
                after=mark,
            )
            svc.wait_for(r"rolled back: generation 1 serves again", after=mark)
            wait_until_only(svc, old)  # generation 2 drained and exited
            since = more_answers(load, 1000)
        assert load.tally.failed == 0, load.tally.as_dict()
        assert_answered_by(since, old, clients=24)
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


@pytest.mark.parametrize(("kind", "how"), [("asyncio", "cli"), ("sync", "SIGUSR2")])
def test_a_manual_rollback_brings_the_parked_processes_back(
    tmp_path: Path, script: Path, kind: str, how: str
) -> None:
    pid_file = tmp_path / "svc.pid"
    with started(script, tmp_path) as svc:
        old = sorted(svc.worker_pids())
        with Load(svc.address(), clients=24) as load:
            more_answers(load, 100)
            script.write_text(
                service_source(kind, prefix="new", before_serve=PID_IN_PREFIX, pid_file=pid_file)
            )
            result = graceful_cli("reload", "--wait", "--pid-file", str(pid_file))
            assert result.returncode == 0, result.stderr
            new = sorted(set(svc.worker_pids()) - set(old))
            assert len(new) == 2
            # parked: alive, code loaded, no listener
            assert all(is_alive(pid) for pid in old)
            address = svc.address()
            port = int(address.rpartition(":")[2])
            for pid in old:
                listening = [
                    c
                    for c in psutil.Process(pid).net_connections("tcp")
                    if c.status == psutil.CONN_LISTEN and c.laddr.port == port
                ]
                assert listening == [], f"parked worker {pid} holds the listener"
            # new connections go to the new processes (the parked ones may still be
            # finishing the connections they had)
            assert set(new) <= set(answering_pids(more_answers(load, 300)))
            mark = svc.mark()
            if how == "cli":
                rolled = graceful_cli("rollback", "--pid-file", str(pid_file))
                assert rolled.returncode == 0, rolled.stderr
                assert rolled.stdout.startswith("generation 1 serves again (resumed in ")
                assert "generation 2 rolled back by graceful rollback" in rolled.stdout
            else:
                svc.send(signal.SIGUSR2)
            svc.wait_for(r"rolled back: generation 1 serves again", after=mark)
            wait_until_only(svc, old)
            since = more_answers(load, 1000)
            status = Control(pid_file).status()
        assert load.tally.failed == 0, load.tally.as_dict()
        assert_answered_by(since, old, clients=24)
        assert status["rolled_back"] == {
            "generation": 2,
            "cause": f"generation 2 rolled back by {'graceful rollback' if how == 'cli' else how}",
            "serving_generation": 1,
            "how": "rolled back",
        }
        assert status["last_reload"]["outcome"] == "rolled back"
        assert status["counters"]["rollbacks"] == 1
        # nothing is left to roll back to
        again = graceful_cli("rollback", "--pid-file", str(pid_file))
        assert again.returncode == 1
        assert "nothing to roll back to: no generation is parked" in again.stderr
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


def test_the_parked_generation_exits_when_the_probation_ends_and_a_later_crash_restarts(
    tmp_path: Path, script: Path
) -> None:
    with running(script, env=env(tmp_path, PROBATION="2")) as svc:
        svc.wait_serving(1)
        old = sorted(svc.worker_pids())
        with Load(svc.address(), clients=24) as load:
            script.write_text(service_source(prefix="new", before_serve=PID_IN_PREFIX))
            mark = hup(svc)
            svc.wait_serving(2, after=mark)
            assert all(is_alive(pid) for pid in old)  # parked
            svc.wait_for(r"generation 2 passed its probation \(2s\); parked generation 1 exits")
            # their processes are gone and reaped: the memory is released
            poll_until(lambda: not any(is_alive(pid) for pid in old), 15, "generation 1 to exit")
            new = sorted(svc.worker_pids())
            assert not set(new) & set(old)
            more_answers(load, 300)
            assert load.tally.failed == 0, load.tally.as_dict()
        # a crash now is an ordinary crash: restarted from disk, no rollback
        mark = svc.mark()
        os.kill(new[0], signal.SIGKILL)
        svc.wait_for(r"generation 2 worker \d was killed by signal 9; restarting it in", after=mark)
        svc.wait_for(r"generation 2 worker \d is back in service", after=mark)
        assert "rolling back" not in svc.output
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


def test_after_a_rollback_the_rejected_code_on_disk_is_not_respawned_until_a_reload(
    tmp_path: Path, script: Path
) -> None:
    pid_file = tmp_path / "svc.pid"
    with started(script, tmp_path) as svc:
        old = sorted(svc.worker_pids())
        script.write_text(
            service_source(prefix="rejected", before_serve=PID_IN_PREFIX, pid_file=pid_file)
        )
        assert graceful_cli("reload", "--wait", "--pid-file", str(pid_file)).returncode == 0
        assert graceful_cli("rollback", "--pid-file", str(pid_file)).returncode == 0
        wait_until_only(svc, old)

        # one of the two old workers dies: it is not replaced from the rejected code
        killed(
            svc,
            old[0],
            then=r"not restarting it: the code on disk is generation 2's, which was rolled back "
            r"\(generation 2 rolled back by graceful rollback\)\. Serving with 1/2 workers",
        )
        status = Control(pid_file).status()
        [generation] = status["generations"]
        assert [worker["pid"] for worker in generation["workers"]] == [old[1]]
        assert status["rolled_back"]["generation"] == 2
        human = graceful_cli("status", "--pid-file", str(pid_file)).stdout
        assert "ROLLED BACK: generation 1 serves again; generation 2 was rolled back" in human
        with Load(svc.address(), clients=20) as load:
            assert set(answering_pids(more_answers(load, 300))) == {old[1]}
        assert load.tally.failed == 0, load.tally.as_dict()

        # the last one dies: as the last resort, the code on disk is started, loudly
        mark = killed(
            svc,
            old[1],
            then=r"was the last worker: restarting it from the code on disk, although generation "
            r"2's code was rolled back",
        )
        svc.wait_for(r"generation 1 worker \d is back in service", after=mark)
        status = Control(pid_file).status()
        [worker] = status["generations"][0]["workers"]
        assert worker["runs_rejected_code"] is True

        # a reload deploys what is on disk on purpose: the rule is lifted
        script.write_text(
            service_source(prefix="fixed", before_serve=PID_IN_PREFIX, pid_file=pid_file)
        )
        assert graceful_cli("reload", "--wait", "--pid-file", str(pid_file)).returncode == 0
        status = Control(pid_file).status()
        assert status["rolled_back"] is None
        # the generation that ran the rolled-back code is no rollback target
        assert status["probation"] is None
        svc.wait_for(r"generation 1 is not parked: it runs code that was rolled back")
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


def test_reload_wait_through_probation_reports_the_rollback_or_the_pass(tmp_path: Path) -> None:
    script, pid_file = pid_service(tmp_path, prefix="old")
    with started(script, tmp_path, PROBATION="4") as svc:
        script.write_text(
            service_source(
                prefix="new", before_serve=crash_after_ready("asyncio"), pid_file=pid_file
            )
        )
        result = graceful_cli(
            "reload", "--wait", "--through-probation", "--pid-file", str(pid_file)
        )
        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr.startswith(
            "rolled back: generation 2 worker 0 exited with code 3"
        ) or result.stderr.startswith("rolled back: generation 2 worker 1 exited with code 3")
        assert "into its probation" in result.stderr
        assert "Traceback" not in result.stderr

        script.write_text(service_source(prefix="fixed", pid_file=pid_file))
        result = graceful_cli(
            "reload", "--wait", "--through-probation", "--pid-file", str(pid_file)
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("generation 3 serving (ready in ")
        assert result.stdout.rstrip().endswith(", passed its probation")
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


ASGI_APP = """\
import asyncio
import os

MESSAGE = {message!r}
CRASH = {crash!r}
SERVICE_PORT = None
{record_and_crash}

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if CRASH:
                    import psutil
                    global SERVICE_PORT
                    SERVICE_PORT = next(
                        c.laddr.port
                        for c in psutil.Process().net_connections("tcp")
                        if c.status == psutil.CONN_LISTEN
                    )
                    asyncio.get_running_loop().call_later(1.5, record_and_crash)
                await send({{"type": "lifespan.startup.complete"}})
            elif message["type"] == "lifespan.shutdown":
                await send({{"type": "lifespan.shutdown.complete"}})
                return
    elif scope["type"] == "http":
        await send(
            {{"type": "http.response.start", "status": 200,
              "headers": [(b"content-type", b"text/plain")]}}
        )
        body = f"{{MESSAGE}} {{os.getpid()}}".encode()
        await send({{"type": "http.response.body", "body": body}})
"""


def test_uvicorn_new_code_that_crashes_after_its_lifespan_startup_is_rolled_back(
    tmp_path: Path,
) -> None:
    app = tmp_path / "app.py"
    app.write_text(ASGI_APP.format(message="old", crash=False, record_and_crash=RECORD_AND_CRASH))
    record = tmp_path / "crashes"
    record.mkdir()
    options = ["--workers", "2", "--drain-timeout", "5", "--probation", "60"]
    with graceful_serve(app, *options, env={"CRASH_RECORD": str(record)}) as svc:
        svc.wait_serving(1)
        old = sorted(svc.worker_pids())
        with HttpLoad(f"http://{svc.address()}/", clients=24) as load:
            poll_until(lambda: load.tally.ok > 100, 15, "answers from generation 1")
            app.write_text(
                ASGI_APP.format(message="new", crash=True, record_and_crash=RECORD_AND_CRASH)
            )
            mark = hup(svc)
            svc.wait_serving(2, after=mark)
            svc.wait_for(r"rolled back: generation 1 serves again", after=mark)
            wait_until_only(svc, old)
            before = collections.Counter(load.tally.bodies)
            poll_until(
                lambda: load.tally.ok >= sum(before.values()) + 1000, 20, "1000 more answers"
            )
            since = collections.Counter(load.tally.bodies) - before
        tally = load.tally
        # as with the echo load: at most one answer per client from before the switch
        strays = sum(count for body, count in since.items() if int(body.split()[1]) not in old)
        assert strays <= 24, since
        assert any(int(body.split()[1]) in old for body in since), since
        assert any(body.startswith("new ") for body in tally.bodies)
        held = sum(len(json.loads(path.read_text())) for path in record.iterdir())
        assert tally.failed <= held, (tally.as_dict(), held)
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


@pytest.mark.parametrize("kind", ["asyncio", "sync"])
def test_new_code_that_crashes_as_soon_as_it_is_ready_is_rolled_back_too(
    tmp_path: Path, script: Path, kind: str
) -> None:
    """The park and the resume reach the old worker back to back (see
    tests/test_context_park.py): it must still resume."""
    crash_at_once = (
        PID_IN_PREFIX + "    __import__('threading').Timer(0.05, os._exit, (3,)).start()\n"
    )
    with running(script, env=env(tmp_path, WORKERS="1")) as svc:
        svc.wait_serving(1)
        [old] = svc.worker_pids()
        with Load(svc.address(), clients=20) as load:
            more_answers(load, 100)
            script.write_text(service_source(kind, prefix="new", before_serve=crash_at_once))
            mark = hup(svc)
            svc.wait_for(r"rolled back: generation 1 serves again", after=mark)
            wait_until_only(svc, [old])
            since = more_answers(load, 500)
        assert_answered_by(since, [old], clients=20)
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


@pytest.mark.parametrize("preload", ["0", "1"])
def test_a_rolling_reload_with_probation_keeps_its_parked_workers_for_the_rollback(
    tmp_path: Path, script: Path, preload: str
) -> None:
    """Each old worker the rollout parked stays parked through the probation, and a
    rollback resumes them all (it drained them all before, and could not roll back)."""
    pid_file = tmp_path / "svc.pid"
    with started(script, tmp_path, STRATEGY="rolling", PRELOAD=preload) as svc:
        old = sorted(w["pid"] for w in Control(pid_file).status()["generations"][0]["workers"])
        with Load(svc.address(), clients=16) as load:
            more_answers(load, 100)
            script.write_text(
                service_source(prefix="new", before_serve=PID_IN_PREFIX, pid_file=pid_file)
            )
            result = graceful_cli("reload", "--wait", "--pid-file", str(pid_file))
            assert result.returncode == 0, result.stderr
            status = Control(pid_file).status()
            [parked] = [g for g in status["generations"] if g["generation"] == 1]
            assert parked["state"] == "parked"
            assert [w["state"] for w in parked["workers"]] == ["parked", "parked"]
            assert sorted(w["pid"] for w in parked["workers"]) == old
            [serving] = [g for g in status["generations"] if g["generation"] == 2]
            new_pids = [w["pid"] for w in serving["workers"]]
            mark = svc.mark()
            rolled = graceful_cli("rollback", "--pid-file", str(pid_file))
            assert rolled.returncode == 0, rolled.stderr
            svc.wait_for(r"rolled back: generation 1 serves again", after=mark)
            poll_until(lambda: not any(is_alive(pid) for pid in new_pids), 20, "generation 2 gone")
            since = more_answers(load, 500)
        assert load.tally.failed == 0, load.tally.as_dict()
        assert_answered_by(since, old, clients=16)
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


def test_a_stopped_parked_worker_costs_a_rollback_its_resume_timeout_not_ready_timeout(
    tmp_path: Path,
) -> None:
    """The parked worker is SIGSTOPped and the new code crashes during its probation:
    the rollback gives the parked worker resume_timeout (3 s) instead of ready_timeout
    (30 s), then the crashed slot is refilled; no request waits anywhere near 30 s."""
    script, pid_file = pid_service(tmp_path, prefix="old")
    with started(script, tmp_path, WORKERS="1", READY_TIMEOUT="30") as svc:
        [parked] = [w["pid"] for w in Control(pid_file).status()["generations"][0]["workers"]]
        script.write_text(
            service_source(
                prefix="new", before_serve=crash_after_ready("asyncio", 4.0), pid_file=pid_file
            )
        )
        result = graceful_cli("reload", "--wait", "--pid-file", str(pid_file))
        assert result.returncode == 0, result.stderr
        os.kill(parked, signal.SIGSTOP)
        try:
            with Load(svc.address(), clients=8) as load:
                mark = svc.mark()
                svc.wait_for(r"rolling back: generation 2 worker 0 exited", after=mark)
                svc.wait_for(r"did not resume within 3s; killing it", after=mark, timeout=15)
                answered = load.tally.ok
                poll_until(lambda: load.tally.ok > answered + 50, 20, "answers after it")
            print(f"worst wait during the rollback: {load.tally.max_latency:.2f}s")
            assert load.tally.max_latency < 10, load.tally.as_dict()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(parked, signal.SIGCONT)
        svc.send(signal.SIGTERM)
        svc.wait_exit()


def test_after_a_rollback_the_slots_scaled_up_during_the_probation_are_said_empty(
    tmp_path: Path,
) -> None:
    script, pid_file = pid_service(tmp_path, prefix="old")
    with started(script, tmp_path) as svc:
        script.write_text(service_source(prefix="new", pid_file=pid_file))
        assert graceful_cli("reload", "--wait", "--pid-file", str(pid_file)).returncode == 0
        scaled = graceful_cli("scale", "4", "--wait", "--pid-file", str(pid_file))
        assert scaled.returncode == 0, scaled.stderr
        mark = svc.mark()
        assert graceful_cli("rollback", "--pid-file", str(pid_file)).returncode == 0
        svc.wait_for(r"generation 1 serves with 2/4 workers: 2 slot\(s\)", after=mark)
        shown = graceful_cli("status", "--pid-file", str(pid_file)).stdout
        assert "2/4 workers ready" in shown
        assert "2 slot(s) empty until the next reload" in shown
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


def test_scale_wait_during_a_probation_ends_when_a_rollback_leaves_slots_empty(
    tmp_path: Path,
) -> None:
    """``scale 3 --wait`` while the added worker starts slowly, then a rollback: the
    slot stays empty until the next reload, and the waiting client says so (it waited
    for ever)."""
    script, pid_file = pid_service(tmp_path, prefix="old")
    with started(script, tmp_path) as svc:
        script.write_text(service_source(prefix="new", pid_file=pid_file))
        assert graceful_cli("reload", "--wait", "--pid-file", str(pid_file)).returncode == 0
        importing = tmp_path / "importing"
        script.write_text(
            f"import time\nopen({str(importing)!r}, 'w').close()\ntime.sleep(3)\n"
            + service_source(prefix="new", pid_file=pid_file)
        )
        results: list[subprocess.CompletedProcess[str]] = []
        scaling = threading.Thread(
            target=lambda: results.append(
                graceful_cli("scale", "3", "--wait", "--pid-file", str(pid_file))
            )
        )
        scaling.start()
        poll_until(importing.exists, 20, "the added worker importing")
        assert graceful_cli("rollback", "--pid-file", str(pid_file)).returncode == 0
        scaling.join(40)
        [result] = results
        assert result.returncode == 1, result
        assert "slot(s) stay empty until the next reload" in result.stderr
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0
