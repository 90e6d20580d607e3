"""Hung workers (``--timeout``): a worker whose event loop blocks is found by its
stopped heartbeat, its stack is logged, a replacement starts, and it is killed once
the replacement is ready. For each server graceful runs: a raw ``ctx.serve()``
service on asyncio and on trio, an ASGI app on uvicorn, a WSGI app on uvicorn.

Each test runs 2 workers under keep-alive load, then one request blocks its
worker's loop for an hour. Every client remembers which worker (PID) its connection
was served by, so that each failed request is charged to the worker that held its
connection: only the hung worker's may fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import ServiceProcess, graceful_cli, graceful_serve, is_alive, poll_until

#: the function every app blocks in, which the logged stack must name
BLOCKER = "block_the_loop_for_an_hour"

#: Blocks for an hour. ``time.sleep`` releases the GIL (the event loop's thread is
#: blocked, the others run); the WSGI app's handler runs in a thread, so it must
#: hold the GIL to block the loop: a C call through ``ctypes.PyDLL`` does.
BLOCKERS = {
    "loop": f"""
import time

def {BLOCKER}():
    time.sleep(3600)
""",
    "gil": f"""
import ctypes

_LIBC = ctypes.PyDLL(None)

def {BLOCKER}():
    while True:  # (a signal ends sleep() early)
        _LIBC.sleep(3600)
""",
}

SERVICE = """
import os
import graceful
{blocker}

async def answer(stream, request):
    if b"/hang" in request.split(b"\\r\\n", 1)[0]:
        {blocker_name}()
    body = f"{{os.getpid()}}".encode()
    await stream.send(
        b"HTTP/1.1 200 OK\\r\\ncontent-length: %d\\r\\n\\r\\n%s" % (len(body), body)
    )

async def keep_alive(stream):
    data = b""
    while True:
        while b"\\r\\n\\r\\n" not in data:
            chunk = await stream.receive()
            data += chunk
        request, _, data = data.partition(b"\\r\\n\\r\\n")
        await answer(stream, request)

@graceful.service(listen=["127.0.0.1:0"], workers=2, timeout=2, backend={backend!r})
async def main(ctx):
    await ctx.serve(keep_alive)

if __name__ == "__main__":
    main.run(pid_file={pid_file!r})
"""

#: answers ``VERSION`` (given as ``version``, empty by default) then its PID
ASGI = """
import os
{blocker}

VERSION = {version!r}

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/hang":
        {blocker_name}()
    body = f"{{VERSION}}{{os.getpid()}}".encode()
    await send({{"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]}})
    await send({{"type": "http.response.body", "body": body}})
"""

WSGI = """
import os
{blocker}

def app(environ, start_response):
    if environ["PATH_INFO"] == "/hang":
        {blocker_name}()
    body = f"{{os.getpid()}}".encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"""


class ChargedLoad:
    """``clients`` keep-alive HTTP clients in a thread; each failed request is charged
    to the PID that last answered on its client's connection (None: a connection
    that had not been answered yet)."""

    def __init__(self, url: str, clients: int = 16) -> None:
        self.url = url
        self.clients = clients
        self.ok = 0
        self.answered_by: Counter[str] = Counter()
        self.failed_on: Counter[str | None] = Counter()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> ChargedLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        self._thread.join(30)

    async def _run(self) -> None:
        await asyncio.gather(*(self._client() for _ in range(self.clients)))

    async def _client(self) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(limits=limits, timeout=15.0) as client:
            held_by: str | None = None
            while not self._stopping.is_set():
                try:
                    response = await client.get(self.url)
                except httpx.HTTPError:
                    self.failed_on[held_by] += 1
                    held_by = None  # the next request opens a new connection
                    continue
                held_by = response.text.strip()
                self.ok += 1
                self.answered_by[held_by] += 1

    def served(self, at_least: int, timeout: float = 30.0) -> None:
        target = self.ok + at_least
        poll_until(lambda: self.ok >= target, timeout, f"{at_least} more answers")


def hang_one(address: str) -> socket.socket:
    """Send the request that blocks its worker's loop; the socket stays open."""
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(b"GET /hang HTTP/1.1\r\nhost: test\r\n\r\n")
    return sock


def check_hung_worker_replaced(svc: ServiceProcess, pid_file: Path) -> None:
    address = svc.address()
    with ChargedLoad(f"http://{address}/") as load:
        load.served(200)
        workers = {str(pid) for pid in svc.worker_pids()}
        assert len(workers) == 2, workers
        mark = svc.mark()
        started = time.monotonic()
        with hang_one(address):
            hung = svc.wait_for(
                r"worker \d is hung: its event loop has not beaten for [\d.]+s \(timeout=2s\)",
                after=mark,
                timeout=20,
            )
            found_in = time.monotonic() - started
            stack = svc.wait_for(r"\(PID (\d+)\) hung here:", after=mark, timeout=5)
            hung_pid = int(stack.group(1))
            # the logged stack names the function the loop is blocked in
            svc.wait_for(rf"File .*, line \d+ in {BLOCKER}$", after=mark, timeout=5)
            poll_until(lambda: not is_alive(hung_pid), 15, f"hung worker {hung_pid} killed")
            load.served(300)
            # the keep-alive clients stay where they are: new connections find the
            # replacement beside the other worker
            poll_until(
                lambda: httpx.get(f"http://{address}/", timeout=5).text not in workers,
                15,
                "an answer from the replacement",
            )
    print(
        f"found hung {found_in:.2f}s after the blocking request; {load.ok} answers; failed "
        f"requests by the worker that held their connection: {dict(load.failed_on)}"
    )
    # found within --timeout, plus a heartbeat, the supervisor's tick and a busy machine
    assert found_in < 2 + 3, (found_in, hung.group(0))
    assert str(hung_pid) in workers
    # every failed request was on a connection the hung worker held
    assert set(load.failed_on) <= {str(hung_pid)}, load.failed_on
    assert load.ok > 500
    status = json.loads(graceful_cli("status", "--json", "--pid-file", str(pid_file)).stdout)
    assert status["counters"]["workers_hung"] == 1
    svc.send(signal.SIGTERM)
    assert svc.wait_exit() == 0


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_service_whose_loop_blocks_is_replaced_and_killed(tmp_path: Path, backend: str) -> None:
    app = tmp_path / "app.py"
    pid_file = tmp_path / "app.pid"
    app.write_text(
        SERVICE.format(
            blocker=textwrap.dedent(BLOCKERS["loop"]),
            blocker_name=BLOCKER,
            backend=backend,
            pid_file=str(pid_file),
        )
    )
    with ServiceProcess(app) as svc:
        svc.wait_serving(1)
        check_hung_worker_replaced(svc, pid_file)


@pytest.mark.parametrize(
    ("server", "interface", "source", "blocker"),
    [
        ("uvicorn", "asgi3", ASGI, "loop"),
        ("uvicorn", "wsgi", WSGI, "gil"),
        ("hypercorn", "asgi3", ASGI, "loop"),
    ],
    ids=["asgi-uvicorn", "wsgi-uvicorn", "asgi-hypercorn"],
)
def test_an_app_whose_loop_blocks_is_replaced_and_killed(
    tmp_path: Path, server: str, interface: str, source: str, blocker: str
) -> None:
    app = tmp_path / "app.py"
    app.write_text(source.format(blocker=BLOCKERS[blocker], blocker_name=BLOCKER, version=""))
    options = ["--workers", "2", "--timeout", "2", "--interface", interface, "--server", server]
    pid_file = tmp_path / "app.pid"
    with graceful_serve(app, *options, "--pid-file", str(pid_file)) as svc:
        svc.wait_serving(1)
        check_hung_worker_replaced(svc, pid_file)


SYNC_SERVICE = """
import os
import select
import graceful
{blocker}

@graceful.service(listen=["127.0.0.1:0"], workers=2, timeout=2)
def main(ctx):
    listener = ctx.listeners[0].socket
    ctx.ready()
    while not ctx.shutdown_requested:
        if {beats}:
            ctx.heartbeat()
        if not select.select([listener], [], [], 0.1)[0]:
            continue
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            continue
        with conn:
            conn.setblocking(True)
            request = conn.recv(65536)
            if b"/hang" in request.split(b"\\r\\n", 1)[0]:
                {blocker_name}()
            body = f"{{os.getpid()}}".encode()
            head = b"HTTP/1.1 200 OK\\r\\nconnection: close\\r\\ncontent-length: %d\\r\\n\\r\\n"
            conn.sendall(head % len(body) + body)

if __name__ == "__main__":
    main.run(pid_file={pid_file!r})
"""


def sync_service(tmp_path: Path, *, beats: bool) -> tuple[ServiceProcess, Path]:
    pid_file = tmp_path / "app.pid"
    app = tmp_path / "app.py"
    app.write_text(
        SYNC_SERVICE.format(
            blocker=BLOCKERS["loop"], blocker_name=BLOCKER, beats=beats, pid_file=str(pid_file)
        )
    )
    return ServiceProcess(app), pid_file


def test_a_plain_function_that_beats_is_found_hung_when_it_stops(tmp_path: Path) -> None:
    svc, _ = sync_service(tmp_path, beats=True)
    with svc:
        svc.wait_serving(1)
        address = svc.address()
        workers = set(svc.worker_pids())
        mark = svc.mark()
        with hang_one(address):
            stack = svc.wait_for(r"\(PID (\d+)\) hung here:", after=mark, timeout=20)
            svc.wait_for(rf"File .*, line \d+ in {BLOCKER}$", after=mark, timeout=5)
            hung_pid = int(stack.group(1))
            assert hung_pid in workers
            poll_until(lambda: not is_alive(hung_pid), 15, f"hung worker {hung_pid} killed")
        poll_until(
            lambda: int(httpx.get(f"http://{address}/", timeout=5).text) not in workers,
            15,
            "an answer from the replacement",
        )
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


def test_a_plain_function_that_never_beats_is_never_judged_hung(tmp_path: Path) -> None:
    svc, _ = sync_service(tmp_path, beats=False)
    with svc:
        svc.wait_serving(1)
        address = svc.address()
        workers = set(svc.worker_pids())
        with hang_one(address):
            # twice the timeout, and the other worker answers all along
            deadline = time.monotonic() + 4.5
            while time.monotonic() < deadline:
                assert int(httpx.get(f"http://{address}/", timeout=5).text) in workers
            assert "is hung" not in svc.output
            assert set(svc.worker_pids()) == workers
        # (its blocked worker would hold a stop for drain_timeout: the harness kills it)


def test_a_stopped_worker_is_found_hung_replaced_and_killed_without_a_stack(
    tmp_path: Path,
) -> None:
    app = tmp_path / "app.py"
    app.write_text(ASGI.format(blocker=BLOCKERS["loop"], blocker_name=BLOCKER, version=""))
    pid_file = tmp_path / "app.pid"
    options = ["--workers", "2", "--timeout", "2", "--pid-file", str(pid_file)]
    with graceful_serve(app, *options) as svc:
        svc.wait_serving(1)
        address = svc.address()
        stopped, other = svc.worker_pids()
        mark = svc.mark()
        os.kill(stopped, signal.SIGSTOP)
        try:
            svc.wait_for(r"worker \d is hung", after=mark, timeout=20)
            svc.wait_for(
                rf"\(PID {stopped}\) wrote no stack within 1s of being asked",
                after=mark,
                timeout=10,
            )
            poll_until(lambda: not is_alive(stopped), 15, f"stopped worker {stopped} killed")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped, signal.SIGCONT)
        poll_until(
            lambda: int(httpx.get(f"http://{address}/", timeout=5).text) not in (stopped, other),
            15,
            "an answer from the replacement",
        )
        assert is_alive(other)
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


TRUNCATING_APP = """
import os

def _vitals_fds():
    for name in os.listdir("/proc/self/fd"):
        try:
            if "graceful-vitals" in os.readlink(f"/proc/self/fd/{name}"):
                yield int(name)
        except OSError:
            pass

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        message = await receive()
        for fd in _vitals_fds():
            try:
                os.ftruncate(fd, 0)
                print("TRUNCATED", flush=True)
            except OSError as exc:
                print(f"REFUSED {exc.strerror}", flush=True)
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
"""


def test_a_worker_cannot_shrink_its_vitals_page_under_the_supervisor(tmp_path: Path) -> None:
    # A shrunk memory file would make the supervisor's next read of its mapping a
    # SIGBUS, which kills it: the file is sealed against shrinking.
    app = tmp_path / "app.py"
    app.write_text(TRUNCATING_APP)
    pid_file = tmp_path / "app.pid"
    with graceful_serve(app, "--timeout", "2", "--pid-file", str(pid_file)) as svc:
        svc.wait_serving(1)
        svc.wait_for(r"REFUSED Operation not permitted")
        assert httpx.get(f"http://{svc.address()}/", timeout=5).text == "ok"

        def read_since() -> bool:
            shown = graceful_cli("status", "--json", "--pid-file", str(pid_file)).stdout
            (worker,) = json.loads(shown)["generations"][0]["workers"]
            return bool(worker["vitals"].get("requests"))

        # the supervisor has read the page since the worker tried, and lives on
        poll_until(read_since, 15, "a reading of the page that counts the request")
        assert "TRUNCATED" not in svc.output
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


def test_a_hang_during_the_probation_rolls_the_reload_back(tmp_path: Path) -> None:
    app = tmp_path / "app.py"

    def write(version: str) -> None:
        app.write_text(
            ASGI.format(blocker=BLOCKERS["loop"], blocker_name=BLOCKER, version=f"{version} ")
        )

    write("v1")
    options = ["--workers", "2", "--timeout", "2", "--probation", "60"]
    with graceful_serve(app, *options) as svc:
        svc.wait_serving(1)
        address = svc.address()
        write("v2")
        mark = svc.mark()
        svc.send(signal.SIGHUP)
        svc.wait_serving(2, after=mark)
        poll_until(
            lambda: httpx.get(f"http://{address}/", timeout=5).text.startswith("v2"),
            15,
            "an answer from v2",
        )
        with hang_one(address):
            svc.wait_for(
                r"rolling back: generation 2 worker \d hung: its event loop has not beaten",
                after=mark,
                timeout=20,
            )
            svc.wait_for(rf"File .*, line \d+ in {BLOCKER}$", after=mark, timeout=5)
            # the parked generation serves again, and only it
            poll_until(
                lambda: all(
                    httpx.get(f"http://{address}/", timeout=5).text.startswith("v1")
                    for _ in range(10)
                ),
                15,
                "v1 answering alone",
            )
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


BUSY_ASGI = """
import asyncio
import time

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/busy":
        # CPU work for 5 s, more than twice the timeout, yielding to the loop often
        until = time.monotonic() + 5
        while time.monotonic() < until:
            sum(range(10_000))
            await asyncio.sleep(0)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"done"})
"""


def test_a_worker_busy_with_cpu_work_that_yields_is_not_hung(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(BUSY_ASGI)
    with graceful_serve(app, "--timeout", "2") as svc:
        svc.wait_serving(1)
        (worker,) = svc.worker_pids()
        answer = httpx.get(f"http://{svc.address()}/busy", timeout=30)
        assert answer.text == "done"
        assert "is hung" not in svc.output
        assert svc.worker_pids() == [worker]


PARKABLE_SYNC_SERVICE = """
import os
import select
import graceful

@graceful.service(listen=["127.0.0.1:0"], workers=1, timeout=1, probation=60)
def main(ctx):
    while True:
        listener = ctx.listeners[0].socket
        ctx.ready(parkable=True)
        while not ctx.shutdown_requested:
            ctx.heartbeat()
            if not select.select([listener], [], [], 0.05)[0]:
                continue
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                continue
            with conn:
                conn.setblocking(True)
                conn.recv(65536)
                body = f"{{os.getpid()}}".encode()
                head = b"HTTP/1.1 200 OK\\r\\nconnection: close\\r\\ncontent-length: %d\\r\\n\\r\\n"
                conn.sendall(head % len(body) + body)
        listener.close()
        if not ctx.wait_resume():
            break

if __name__ == "__main__":
    main.run(pid_file={pid_file!r})
"""


def test_a_parked_plain_function_that_beats_is_not_judged_hung_while_it_waits_to_resume(
    tmp_path: Path,
) -> None:
    # A plain def that beats from its server loop parks in ctx.wait_resume(), a
    # blocking call of graceful's own: it cannot beat there, and must not be found
    # hung (and killed) for it, or no rollback could bring it back.
    pid_file = tmp_path / "app.pid"
    app = tmp_path / "app.py"
    app.write_text(PARKABLE_SYNC_SERVICE.format(pid_file=str(pid_file)))
    with ServiceProcess(app) as svc:
        svc.wait_serving(1)
        (parked,) = svc.worker_pids()
        mark = svc.mark()
        svc.send(signal.SIGHUP)
        svc.wait_serving(2, after=mark)

        def parked_vitals() -> dict[str, Any]:
            shown = graceful_cli("status", "--json", "--pid-file", str(pid_file)).stdout
            for generation in json.loads(shown)["generations"]:
                for worker in generation["workers"]:
                    if worker["pid"] == parked:
                        return dict(worker["vitals"], state=worker["state"])
            return {}

        # parked for three times the timeout, beating all along
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            vitals = parked_vitals()
            assert vitals.get("state") == "parked", (vitals, svc.output)
            assert (vitals.get("heartbeat_age") or 0) < 1.0, vitals
        assert "is hung" not in svc.output
        mark = svc.mark()
        rolled = graceful_cli("rollback", "--pid-file", str(pid_file))
        assert rolled.returncode == 0, rolled.stderr
        svc.wait_for(r"rolled back: generation 1 serves again", after=mark)
        # (generation 2's worker may take a connection more before it sees its drain)
        poll_until(
            lambda: int(httpx.get(f"http://{svc.address()}/", timeout=5).text) == parked,
            15,
            f"an answer from the resumed worker {parked}",
        )
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


#: 80 idle threads, each 60 calls deep: their stacks alone are far more than the
#: supervisor logs of a dump
MANY_THREADS = """
import threading

_IDLE = threading.Event()

def _deep(depth):
    if depth:
        _deep(depth - 1)
    else:
        _IDLE.wait()

for _ in range(80):
    threading.Thread(target=_deep, args=(60,), daemon=True).start()
"""


def test_the_stack_of_the_hung_loop_is_logged_however_many_threads_the_worker_has(
    tmp_path: Path,
) -> None:
    # faulthandler dumps the newest thread first and the main thread, whose event
    # loop hung, last: a dump cut at its first DUMP_LIMIT bytes would show only idle
    # threads
    app = tmp_path / "app.py"
    source = ASGI.format(blocker=BLOCKERS["loop"], blocker_name=BLOCKER, version="")
    app.write_text(source + MANY_THREADS)
    with graceful_serve(app, "--workers", "1", "--timeout", "1") as svc:
        svc.wait_serving(1)
        mark = svc.mark()
        with hang_one(svc.address()):
            svc.wait_for(r"\(PID (\d+)\) hung here:", after=mark, timeout=20)
            svc.wait_for(rf"File .*, line \d+ in {BLOCKER}$", after=mark, timeout=5)
            svc.wait_for(r"replaced after it hung", after=mark, timeout=20)
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0
