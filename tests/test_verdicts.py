"""Bad deploys that do not crash, judged by their answers, with real supervisors,
real servers (uvicorn for ASGI, a2wsgi on uvicorn for WSGI), real load and real 500s.

A new generation imports fine, passes readiness and answers 500 to 30% of its
requests. With the judged probation it is rolled back by itself; with a canary the
old generation never stops serving and the reload fails. Every 500 a client saw is
counted by the supervisor, exactly, and came from the new generation's processes.
The rules, event by event, are tested in ``tests/core/test_decisions_verdicts.py``.
"""

from __future__ import annotations

import collections
import re
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from harness import ServiceProcess, graceful_cli, graceful_serve, hup, poll_until, running
from http_load import HttpLoad, HttpTally
from services import pid_service

from graceful.control.client import Control

#: What both apps begin with: their version, and how they fail (``failing()``, called
#: once per request, says whether this one gets a 500).
PRELUDE = """\
import itertools
import os

VERSION = {version!r}
BAD = {bad}  # answers 500 to this many of every 10 requests
# ... once this file exists, if it is given: the code breaks after it was promoted
FAIL_FLAG = os.environ.get("FAIL_FLAG")
answered = itertools.count()


def failing():
    return next(answered) % 10 < BAD and (FAIL_FLAG is None or os.path.exists(FAIL_FLAG))
"""

ASGI_APP = (
    PRELUDE
    + """


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            done = message["type"].replace(".startup", ".startup.complete")
            await send({{"type": done.replace(".shutdown", ".shutdown.complete")}})
            if message["type"] == "lifespan.shutdown":
                return
    status = 500 if failing() else 200
    await send({{"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain")]}})
    await send({{"type": "http.response.body", "body": f"{{VERSION}} {{os.getpid()}}".encode()}})
"""
)

WSGI_APP = (
    PRELUDE
    + """


def app(environ, start_response):
    status = "500 Internal Server Error" if failing() else "200 OK"
    start_response(status, [("Content-Type", "text/plain")])
    return [f"{{VERSION}} {{os.getpid()}}".encode()]
"""
)


def write_app(path: Path, interface: str, version: str, bad: int = 0) -> None:
    template = ASGI_APP if interface == "asgi" else WSGI_APP
    path.write_text(template.format(version=version, bad=bad))


def pid_of(body: str) -> int:
    return int(body.split()[1])


def errors_by_pid(tally: HttpTally) -> collections.Counter[int]:
    """The 500s the clients saw, by the process that answered them."""
    counted: collections.Counter[int] = collections.Counter()
    for (status, body), count in tally.error_bodies.items():
        assert status == 500, (status, body)
        counted[pid_of(body)] += count
    return counted


def answers_of(pid_file: Path, generation: int) -> dict[str, int]:
    counted: dict[str, int] = Control(pid_file).status()["answers"].get(str(generation), {})
    return counted


def wait_until_only(svc: ServiceProcess, pids: list[int]) -> None:
    poll_until(lambda: sorted(svc.worker_pids()) == sorted(pids), 20, f"only workers {pids} left")


@pytest.mark.parametrize("interface", ["asgi", "wsgi"])
def test_a_deploy_that_answers_500s_is_rolled_back_by_itself_and_a_good_one_passes(
    tmp_path: Path, interface: str
) -> None:
    app, pid_file, flag = tmp_path / "app.py", tmp_path / "pid", tmp_path / "failing"
    write_app(app, interface, "v1")
    options = ["--workers", "2", "--probation", "8", "--drain-timeout", "5"]
    env = {"FAIL_FLAG": str(flag)}
    with graceful_serve(app, *options, "--pid-file", str(pid_file), env=env) as svc:
        svc.wait_serving(1)
        old = sorted(svc.worker_pids())
        with HttpLoad(f"http://{svc.address()}/", clients=16) as load:
            poll_until(lambda: load.tally.ok > 200, 15, "answers from generation 1")
            # the new code breaks once it serves (judged as it started, it would fail
            # its reload before the probation: tests/core/test_decisions_verdicts.py)
            write_app(app, interface, "v2", bad=3)
            mark = svc.mark()
            ended: dict[str, subprocess.CompletedProcess[str]] = {}
            waiting = threading.Thread(
                target=lambda: ended.setdefault(
                    "reload",
                    graceful_cli(
                        "reload", "--wait", "--through-probation", "--pid-file", str(pid_file)
                    ),
                )
            )
            waiting.start()
            try:
                svc.wait_serving(2, after=mark)
                flag.touch()
                # within its probation (8 s), by itself: nobody asked for the rollback
                svc.wait_for(r"rolling back: generation 2's 5xx rate", after=mark, timeout=8)
                svc.wait_for(r"rolled back: generation 1 serves again", after=mark)
            finally:
                waiting.join(60)
            waited = ended["reload"]
            wait_until_only(svc, old)  # generation 2 has exited: counted in full
            counted = answers_of(pid_file, 2)
            poll_until(
                lambda: load.tally.failures["HTTP 500"] >= counted["5xx"],
                5,
                "every 500 the supervisor counted to reach its client",
            )
            before = collections.Counter(load.tally.bodies)
            poll_until(lambda: load.tally.ok >= sum(before.values()) + 500, 20, "500 more")
            since = collections.Counter(load.tally.bodies) - before
            # a good deploy under the same load passes its probation
            write_app(app, interface, "v3")
            mark = hup(svc)
            svc.wait_for(r"generation 3 passed its probation", after=mark, timeout=30)
            good = answers_of(pid_file, 3)
            status = Control(pid_file).status()
        tally = load.tally
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0
    # reload --wait --through-probation told the cause
    assert waited.returncode == 1, waited
    assert waited.stderr.startswith("rolled back: generation 2's 5xx rate "), waited.stderr
    assert "generation 1 served 0.0% before the reload" in waited.stderr
    # the 500s: all from generation 2's own processes, and counted exactly
    assert set(tally.failures) == {"HTTP 500"}, tally.as_dict()
    new = {pid_of(body) for body in tally.bodies if body.startswith("v2 ")}
    assert new
    assert not new & set(old)
    by_pid = errors_by_pid(tally)
    assert set(by_pid) <= new, (by_pid, new)
    assert counted["5xx"] == tally.failures["HTTP 500"] > 0
    assert counted["total"] >= 100  # judged on at least rollback_min_requests
    assert all(body.startswith("v2 ") for _, body in tally.error_bodies)
    # after the rollback, every answer from the parked generation's own processes
    assert since
    assert all(pid_of(body) in old for body in since), since
    assert good["5xx"] == 0
    assert good["total"] > 100
    assert status["counters"]["rollbacks"] == 1
    assert status["last_reload"]["outcome"] == "serving"


def test_a_canary_that_answers_500s_fails_the_reload_while_the_old_generation_serves(
    tmp_path: Path,
) -> None:
    app, pid_file = tmp_path / "app.py", tmp_path / "pid"
    write_app(app, "asgi", "v1")
    options = ["--workers", "4", "--canary", "1", "--canary-seconds", "60", "--probation", "30"]
    with graceful_serve(app, *options, "--pid-file", str(pid_file)) as svc:
        svc.wait_serving(1)
        old = sorted(svc.worker_pids())
        # a new connection per request: a canary only gets the connections made while
        # it accepts (keep-alive ones stay with the workers that accepted them)
        with HttpLoad(f"http://{svc.address()}/", clients=16, keep_alive=False) as load:
            poll_until(lambda: load.tally.ok > 200, 15, "answers from generation 1")
            write_app(app, "asgi", "v2", bad=3)
            mark = svc.mark()
            result = graceful_cli("reload", "--wait", "--pid-file", str(pid_file))
            svc.wait_for(r"canary: generation 2's 1 worker\(s\) serve beside", after=mark)
            failed = svc.wait_for(
                r"canary failed: .*; it had ([0-9.]+)% of the traffic", after=mark
            )
            wait_until_only(svc, old)
            counted = answers_of(pid_file, 2)
            poll_until(
                lambda: load.tally.failures["HTTP 500"] >= counted["5xx"],
                5,
                "every 500 the supervisor counted to reach its client",
            )
            status = Control(pid_file).status()
        tally = load.tally
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0
    assert result.returncode == 1, result
    assert "generation 2 failed: canary failed: 5xx rate" in result.stderr, result.stderr
    assert "generation 1 served 0.0% meanwhile" in result.stderr, result.stderr
    # the old generation never stopped: its four processes served throughout, and
    # no request failed but the canary's 500s
    assert [(g["generation"], g["state"]) for g in status["generations"]] == [(1, "serving")]
    assert [w["pid"] for w in status["generations"][0]["workers"]] == old
    assert set(tally.failures) == {"HTTP 500"}, tally.as_dict()
    # every 500 from the one canary process, counted exactly, and reported
    (canary,) = errors_by_pid(tally)
    assert canary not in old
    assert counted["5xx"] == tally.failures["HTTP 500"] > 0
    # the verdict's count, and what the canary still answered as it drained
    at_verdict = re.search(r"\((\d+) of (\d+) answers; limit 5%\)", result.stderr)
    assert at_verdict is not None, result.stderr
    assert int(at_verdict.group(1)) <= counted["5xx"]
    assert 100 <= int(at_verdict.group(2)) <= counted["total"]
    assert status["counters"]["canaries"] == {"failed": 1}
    # the code on disk is the canary's, rejected: no scale-up runs it
    assert status["rolled_back"]["how"] == "rejected on its answers"
    assert status["last_reload"]["outcome"] == "failed"
    share = float(failed.group(1))
    assert 0 < share < 100
    print(f"the canary's share of the answers: {share}%")


@pytest.mark.parametrize("kind", ["asyncio", "sync"])
def test_a_service_s_answers_are_counted_and_a_handler_that_raised_is_a_failure(
    tmp_path: Path, kind: str
) -> None:
    """``ctx.serve()`` counts each connection (failed when its handler raised); a
    plain ``def`` server counts its own with ``ctx.count_answer``."""
    on_line = (
        "        if line == b'boom':\n            raise RuntimeError('boom')"
        if kind == "asyncio"
        else "            CTX.count_answer(ok=line != b'boom', seconds=0.002)"
    )
    script, pid_file = pid_service(tmp_path, kind, on_line=on_line)
    with running(script, env={"LISTEN": "127.0.0.1:0", "WORKERS": "2"}) as svc:
        svc.wait_serving(1)
        host, port = svc.address().rsplit(":", 1)
        for line in [b"hello"] * 7 + [b"boom"] * 3:
            with socket.create_connection((host, int(port)), timeout=10) as conn:
                conn.sendall(line + b"\n")
                conn.shutdown(socket.SHUT_WR)
                while conn.recv(4096):
                    pass
        poll_until(lambda: answers_of(pid_file, 1).get("total") == 10, 10, "the 10 answers counted")
        counted = answers_of(pid_file, 1)
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0
    assert (counted["2xx"], counted["failed"], counted["5xx"]) == (7, 3, 0), counted
    assert counted["p99"] is not None
