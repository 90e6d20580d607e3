"""ASGI apps under ``graceful serve``: reloads under keep-alive load, drains, failures."""

from __future__ import annotations

import re
import signal
import socket
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from harness import (
    ServiceProcess,
    connect,
    graceful_serve,
    holds_listener,
    hup,
    poll_until,
    running,
)
from http_load import HttpLoad
from services import starlette_app

SERVERS = {
    "uvicorn": ["--server", "uvicorn"],
    "hypercorn": ["--server", "hypercorn"],
    "hypercorn-trio": ["--server", "hypercorn", "--backend", "trio"],
}


def write_app(
    path: Path, message: str, *, start_up: float = 0.0, fail: bool = False, gate: Path | None = None
) -> None:
    """Write the app; its lifespan startup takes ``start_up`` seconds, or lasts until
    the file ``gate`` exists, and then fails if ``fail``."""
    body = f"    await anyio.sleep({start_up!r})"
    if gate is not None:
        body += f"\n    while not os.path.exists({str(gate)!r}):\n        await anyio.sleep(0.01)"
    if fail:
        body += "\n    raise RuntimeError('the database is unreachable')"
    path.write_text(starlette_app(message, lifespan=body))


def serve(tmp_path: Path, *extra: str, drain: float = 30.0) -> ServiceProcess:
    return graceful_serve(tmp_path / "app.py", "--drain-timeout", str(drain), *extra)


def reload(svc: ServiceProcess, generation: int) -> re.Match[str]:
    return svc.wait_for(
        rf"generation {generation} is serving \(ready in ([\d.]+)s\)", after=hup(svc), timeout=60
    )


#: The failures hypercorn cannot avoid (see graceful/servers/hypercorn.py): when its
#: shutdown trigger fires it closes every connection it considers idle, including
#: one whose next request has just arrived. The client sees the connection closed
#: or reset, never a wrong or non-2xx answer.
HYPERCORN_CLOSES = (
    "RemoteProtocolError: Server disconnected without sending a response.",
    "RemoteProtocolError: peer closed connection without sending complete message body",
    "ReadError: ",
)


def only_hypercorn_closes(failures: dict[str, int]) -> bool:
    return all(kind.startswith(HYPERCORN_CLOSES) for kind in failures)


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_reloads_under_keep_alive_load_answer_every_request(tmp_path: Path, server: str) -> None:
    app = tmp_path / "app.py"
    write_app(app, "v1")
    # hypercorn on trio can keep an old generation alive until the drain deadline
    # after rapid reloads; a short deadline keeps the test's final stop quick.
    svc = serve(tmp_path, *SERVERS[server], drain=5.0)
    try:
        svc.wait_serving(1, timeout=60)
        with HttpLoad(f"http://{svc.address()}/", clients=50) as load:
            load.wait_for_body("v1")
            for generation in range(2, 12):
                write_app(app, f"v{generation}")
                reload(svc, generation)
                load.wait_for_body(f"v{generation}")
        tally = load.tally
        print(f"{server}: {tally.as_dict()}")
        assert tally.ok > 1000
        assert all(tally.bodies[f"v{g}"] > 0 for g in range(1, 12))
        if server == "uvicorn":
            assert tally.failed == 0, tally.as_dict()
        else:
            # Every answer was a 2xx; the only losses are hypercorn's documented
            # idle-connection closes, at most one per connection per reload.
            assert only_hypercorn_closes(tally.failures), tally.as_dict()
            assert tally.failed <= 50 * 10, tally.as_dict()
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0
    finally:
        svc.close()


def test_slow_start_app_does_not_stall_requests_during_reload(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    gate = tmp_path / "start-up-done"
    write_app(app, "v1")
    with serve(tmp_path) as svc:
        svc.wait_serving(1)
        with HttpLoad(f"http://{svc.address()}/", clients=50) as load:
            load.wait_for_body("v1")
            write_app(app, "v2", gate=gate)
            mark = hup(svc)
            svc.wait_for("starting generation 2", after=mark)
            # Generation 2's start-up lasts until the test opens the gate. Meanwhile
            # generation 1 keeps answering: nobody waits for the start-up.
            answered = load.tally.ok
            poll_until(lambda: load.tally.ok >= answered + 500, 30, "answers during the start-up")
            assert "generation 2 is serving" not in svc.output
            gate.touch()
            svc.wait_serving(2, after=mark)
            load.wait_for_body("v2")
        tally = load.tally
        assert tally.failed == 0, tally.as_dict()
        assert set(tally.bodies) == {"v1", "v2"}


@pytest.mark.parametrize("server", ["uvicorn", "hypercorn"])
def test_lifespan_startup_failure_keeps_the_old_generation(tmp_path: Path, server: str) -> None:
    app = tmp_path / "app.py"
    write_app(app, "good")
    svc = serve(tmp_path, *SERVERS[server])
    try:
        svc.wait_serving(1)
        with HttpLoad(f"http://{svc.address()}/", clients=10) as load:
            load.wait_for_body("good")
            write_app(app, "bad", fail=True)
            mark = hup(svc)
            failure = svc.wait_for(r"reload failed: generation 2: (.*)", after=mark)
            assert "generation 1 keeps serving" in failure.group(0)
            served = load.tally.ok
            poll_until(lambda: load.tally.ok > served + 100, 10, "generation 1 to keep answering")
            write_app(app, "fixed")
            reload(svc, 3)
            load.wait_for_body("fixed")
        tally = load.tally
        assert tally.bodies.get("bad", 0) == 0
        if server == "uvicorn":
            assert tally.failed == 0, tally.as_dict()
        else:
            assert only_hypercorn_closes(tally.failures), tally.as_dict()
    finally:
        svc.close()


def http_request(sock: socket.socket, path: str = "/") -> tuple[dict[str, str], bytes]:
    """One HTTP/1.1 keep-alive request on ``sock``; the response's headers and body."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0].startswith("HTTP/1.1 200"), lines[0]
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(4096)
        assert chunk, "connection closed in the middle of a body"
        body += chunk
    return headers, body


def answer(address: str) -> bytes:
    """The body of a GET / on a new connection."""
    with connect(address) as client:
        return http_request(client)[1]


DRAIN_CASES = {
    "uvicorn-httptools": ("uvicorn", "httptools"),
    "uvicorn-h11": ("uvicorn", "h11"),
    "hypercorn": ("hypercorn", None),
}


def serve_asgi_script(tmp_path: Path, case: str) -> Path:
    """The app answering "old", and a script that serves it with ``graceful.serve_asgi``
    (the Python API)."""
    write_app(tmp_path / "app.py", "old")
    server, http = DRAIN_CASES[case]
    options = f", http={http!r}" if http else ""
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(f"""\
            import graceful

            if __name__ == "__main__":
                graceful.serve_asgi(
                    "app:app", listen=["127.0.0.1:0"], server={server!r}{options}
                )
        """)
    )
    return script


@pytest.mark.parametrize("case", ["uvicorn-h11", "uvicorn-httptools"])
def test_request_on_an_idle_keep_alive_connection_during_drain_is_answered_with_close(
    tmp_path: Path, case: str
) -> None:
    with running(serve_asgi_script(tmp_path, case)) as svc:
        svc.wait_serving(1)
        with connect(svc.address()) as client:
            headers, body = http_request(client)
            assert body == b"old"
            assert headers.get("connection", "") != "close"
            write_app(tmp_path / "app.py", "new")
            reload(svc, 2)
            # The connection belongs to generation 1, which drains once it hears of
            # generation 2. Until then its answers may keep the connection alive;
            # from then on the next answer says "Connection: close". The connection
            # is never closed without such an answer.
            deadline = time.monotonic() + 10
            while True:
                headers, body = http_request(client)
                assert body == b"old"
                if headers.get("connection") == "close":
                    break
                assert time.monotonic() < deadline, "generation 1 never announced its close"
            client.settimeout(10)
            assert client.recv(100) == b""  # closed after that answer, not before
        poll_until(lambda: answer(svc.address()) == b"new", 10, "generation 2 to answer")
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


@pytest.mark.parametrize("case", sorted(DRAIN_CASES))
def test_response_in_flight_when_the_drain_starts_announces_close(
    tmp_path: Path, case: str
) -> None:
    with running(serve_asgi_script(tmp_path, case)) as svc:
        svc.wait_serving(1)
        [old_worker] = svc.worker_pids()
        listener = svc.address()
        with connect(svc.address()) as client:
            gate = tmp_path / "answer-now"
            client.sendall(f"GET /hold?until={gate} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
            write_app(tmp_path / "app.py", "new")
            reload(svc, 2)
            # The response is still held. It starts only once generation 1 has begun
            # its drain (it let go of the listener in the same step).
            poll_until(
                lambda: not holds_listener(old_worker, listener), 10, "generation 1 to drain"
            )
            gate.touch()
            client.settimeout(10)
            data = b""
            while b"old held" not in data:
                chunk = client.recv(4096)
                assert chunk, f"closed before the answer: {data!r}"
                data += chunk
            assert data.startswith(b"HTTP/1.1 200")
            assert b"\r\nconnection: close\r\n" in data.lower()
            assert client.recv(100) == b""


def test_streaming_response_gets_the_drain_deadline_then_closes(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    write_app(app, "old")
    with serve(tmp_path, drain=2.0) as svc:
        svc.wait_serving(1)
        with connect(svc.address()) as stream:
            stream.sendall(b"GET /events HTTP/1.1\r\nHost: test\r\n\r\n")
            stream.settimeout(10)
            received = b""
            while b"data: old 0" not in received:
                chunk = stream.recv(4096)
                assert chunk, f"the stream closed early: {received!r}"
                received += chunk
            write_app(app, "new")
            reload(svc, 2)
            reloaded_at = time.monotonic()
            poll_until(lambda: answer(svc.address()) == b"new", 10, "generation 2 to answer")
            events_after = 0
            while chunk := stream.recv(4096):
                events_after += chunk.count(b"data: old")
                assert time.monotonic() - reloaded_at < 30, "the stream was never closed"
            closed_after = time.monotonic() - reloaded_at
        # The stream stayed with generation 1 after generation 2 answered, until the
        # drain deadline (2 s; the upper bound only keeps the wait finite).
        assert events_after >= 1
        assert 1.0 < closed_after < 30.0
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


def test_serve_refuses_a_malformed_app_in_one_line(tmp_path: Path) -> None:
    with running(
        tmp_path / "x", module="graceful", cwd=tmp_path, args=["serve", "no_colon"]
    ) as svc:
        assert svc.wait_exit() == 2
        [line] = svc.lines
        assert "app 'no_colon' must look like 'package.module:attribute'" in line


def test_first_generation_whose_app_raises_at_import_exits_1(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("raise RuntimeError('no database')\n")
    with running(tmp_path / "x", module="graceful", cwd=tmp_path, args=[
        "serve", "app:app", "--listen", "127.0.0.1:0",
    ]) as svc:  # fmt: skip
        assert svc.wait_exit() == 1
        svc.wait_for(
            "generation 1 failed to start: worker 0: cannot import 'app' for app "
            "'app:app': RuntimeError: no database"
        )
        assert "Traceback" not in svc.output


def websocket_frames(sock: socket.socket) -> Iterator[tuple[int, bytes]]:
    """Read server frames (unmasked, short) as (opcode, payload) until EOF."""
    buffer = b""
    while True:
        while len(buffer) < 2 or len(buffer) < 2 + (buffer[1] & 0x7F):
            chunk = sock.recv(4096)
            if not chunk:
                return
            buffer += chunk
        length = buffer[1] & 0x7F
        assert length < 126, "the test's messages are short"
        yield buffer[0] & 0x0F, buffer[2 : 2 + length]
        buffer = buffer[2 + length :]


def serve_with_options(tmp_path: Path, drain: float, **options: object) -> ServiceProcess:
    """``graceful.serve_asgi`` on app:app with uvicorn and ``options``."""
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(f"""\
            import graceful

            if __name__ == "__main__":
                graceful.serve_asgi(
                    "app:app", listen=["127.0.0.1:0"], drain_timeout={drain!r}, **{options!r}
                )
        """)
    )
    return ServiceProcess(script)


def open_websocket(sock: socket.socket) -> Iterator[tuple[int, bytes]]:
    """Open the app's /ws WebSocket on ``sock``; its frames."""
    sock.sendall(
        b"GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, f"closed during the handshake: {head!r}"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return websocket_frames(sock)


def frames_until_close(frames: Iterator[tuple[int, bytes]], since: float) -> tuple[int, int]:
    """Read old frames until the close frame; (frames read, close code). The 30 s
    cap only keeps the wait finite."""
    for seen, (opcode, payload) in enumerate(frames):
        if opcode == 0x8:  # close
            return seen, int.from_bytes(payload[:2], "big")
        assert payload.startswith(b"old "), payload
        assert time.monotonic() - since < 30, "the WebSocket was never closed"
    raise AssertionError("the WebSocket ended without a close frame")


WEBSOCKET_IMPLEMENTATIONS = ["websockets-sansio", "wsproto"]


@pytest.mark.parametrize("ws", WEBSOCKET_IMPLEMENTATIONS)
def test_websocket_keeps_the_drain_deadline_then_closes_with_1012(tmp_path: Path, ws: str) -> None:
    write_app(tmp_path / "app.py", "old")
    with serve_with_options(tmp_path, drain=2.0, ws=ws) as svc:
        svc.wait_serving(1)
        with connect(svc.address()) as sock:
            sock.settimeout(10)
            frames = open_websocket(sock)
            assert next(frames) == (0x1, b"old 0")
            write_app(tmp_path / "app.py", "new")
            reload(svc, 2)
            reloaded_at = time.monotonic()
            after_reload, code = frames_until_close(frames, reloaded_at)
            closed_after = time.monotonic() - reloaded_at
        # it kept streaming from generation 1 until just before the 2 s deadline
        assert code == 1012
        assert after_reload >= 1
        assert closed_after > 1.0
        poll_until(lambda: answer(svc.address()) == b"new", 10, "generation 2 to answer")
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


@pytest.mark.parametrize("ws", WEBSOCKET_IMPLEMENTATIONS)
def test_a_websocket_opened_on_a_draining_keep_alive_connection_closes_with_1012(
    tmp_path: Path, ws: str
) -> None:
    """The upgrade request arrives on a keep-alive connection of generation 1 well
    into its drain: that WebSocket gets the drain's own deadline (not a fresh one
    from the upgrade, which would outlive the worker) and a 1012 close."""
    drain = 4.0
    write_app(tmp_path / "app.py", "old")
    with serve_with_options(tmp_path, drain=drain, ws=ws) as svc:
        svc.wait_serving(1)
        [old_worker] = svc.worker_pids()
        listener = svc.address()
        with connect(svc.address()) as sock:
            sock.settimeout(10)
            assert http_request(sock)[1] == b"old"
            write_app(tmp_path / "app.py", "new")
            reload(svc, 2)
            promoted_at = time.monotonic()
            poll_until(
                lambda: not holds_listener(old_worker, listener), 10, "generation 1 to drain"
            )
            # Upgrade 1.5 s into the 4 s drain: a deadline counted from the upgrade
            # (3.6 s later) would come after the worker has gone.
            time.sleep(max(0.0, promoted_at + 1.5 - time.monotonic()))
            frames = open_websocket(sock)
            since = time.monotonic()
            _, code = frames_until_close(frames, since)
        assert code == 1012
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


FAILING_HANDLER_APP = """\
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route


async def boom(request):
    ballast = bytearray(1_000_000)  # a local of the failing frame: 1 MB
    raise ValueError("boom")


async def home(request):
    return PlainTextResponse("ok")


app = Starlette(routes=[Route("/", home), Route("/boom", boom)])
"""


def test_errors_logged_while_serving_are_not_kept_in_memory(tmp_path: Path) -> None:
    """uvicorn logs each failed request with its traceback; graceful keeps the errors
    uvicorn logs while it starts (to name a failed lifespan), and must keep none once
    it serves: each would hold the failing frame's variables (found by an attack
    pass: 300 failed requests grew a worker by 290 MB)."""
    (tmp_path / "app.py").write_text(FAILING_HANDLER_APP)
    with serve(tmp_path) as svc:
        svc.wait_serving(1)
        [worker] = svc.worker_pids()
        address = svc.address()
        answer(address)
        before = psutil.Process(worker).memory_info().rss
        for _ in range(300):
            with connect(address) as client:
                client.sendall(b"GET /boom HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                status = client.recv(64)
                assert status.startswith(b"HTTP/1.1 500"), status
        after = psutil.Process(worker).memory_info().rss
        assert after - before < 50 * 2**20, (before >> 20, after >> 20)
