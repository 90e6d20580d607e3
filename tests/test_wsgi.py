"""WSGI apps under ``graceful serve``: the interface, WSGI's own contract (request
bodies, streamed responses, ``close()``), the ready hook, and reloads under load."""

from __future__ import annotations

import functools
import signal
import socket
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness import ServiceProcess, graceful_cli, graceful_serve, hup, poll_until, reload
from http_load import HttpLoad

from graceful.code.interfaces import as_asgi3, detect

WSGI_APP = """\
import os

VERSION = {version!r}


class Chunks:
    \"\"\"A streamed body whose close() leaves a mark, as WSGI servers must call it.\"\"\"

    def __iter__(self):
        for n in range(5):
            yield f"chunk {{n}}\\n".encode()

    def close(self):
        with open(os.environ["CLOSED_MARK"], "a") as mark:
            mark.write("closed\\n")


def forever():
    import time

    while True:
        yield b"tick\\n"
        time.sleep(0.01)


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/echo":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Chunks()
    if path == "/forever":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return forever()
    body = f"{{VERSION}} {{os.getpid()}}\\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


def write_app(path: Path, version: str) -> None:
    path.write_text(WSGI_APP.format(version=version))


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """``app.py`` in ``tmp_path``, at version ``v1``."""
    path = tmp_path / "app.py"
    write_app(path, "v1")
    return path


def serve(tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> ServiceProcess:
    env = {"CLOSED_MARK": str(tmp_path / "closed"), **(env or {})}
    return graceful_serve(tmp_path / "app.py", "--drain-timeout", "5", *extra, env=env)


@pytest.mark.parametrize("interface", ["wsgi", "auto"])
def test_a_wsgi_app_reloads_under_load_without_a_failed_request(
    tmp_path: Path, app: Path, interface: str
) -> None:
    with serve(tmp_path, "--interface", interface, "--workers", "2") as svc:
        svc.wait_serving(1)
        url = f"http://{svc.address()}/"
        with HttpLoad(url, clients=24) as load:
            poll_until(lambda: load.tally.ok > 200, 15, "answers from v1")
            for generation, version in ((2, "v2"), (3, "v3")):
                write_app(app, version)
                reload(svc, generation)
                poll_until(
                    lambda v=version: any(body.startswith(v) for body in load.tally.bodies),  # type: ignore[misc]
                    15,
                    f"answers from {version}",
                )
        assert load.tally.failed == 0, load.tally.as_dict()
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


def test_request_bodies_streamed_responses_and_close_behave_as_wsgi_promises(
    tmp_path: Path, app: Path
) -> None:
    with serve(tmp_path, "--interface", "wsgi", "--threads", "4") as svc:
        svc.wait_serving(1)
        with httpx.Client(base_url=f"http://{svc.address()}", timeout=10) as client:
            body = bytes(range(256)) * 4096  # 1 MiB, all byte values
            echoed = client.post("/echo", content=body)
            assert echoed.status_code == 200
            assert echoed.content == body
            assert echoed.headers["content-length"] == str(len(body))
            assert client.post("/echo", content=b"").content == b""
            with client.stream("GET", "/stream") as streamed:
                chunks = b"".join(streamed.iter_bytes())
            assert chunks == b"".join(f"chunk {n}\n".encode() for n in range(5))
        closed = tmp_path / "closed"
        # the mark is complete once its line is (the file exists a moment before)
        poll_until(lambda: closed.exists() and closed.read_text() == "closed\n", 10, "close()")
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


HOOKS = """\
import os
import time


def warm_up():
    # blocks, as Django's setup or a database check would: run in a thread
    while not os.path.exists(os.environ["GATE"]):
        time.sleep(0.01)
    with open(os.environ["WARMED"], "a") as record:
        record.write(f"{os.getpid()}\\n")


def broken():
    raise RuntimeError("the database is unreachable")
"""


def hooked(tmp_path: Path) -> ServiceProcess:
    """The app with ``hooks:warm_up`` as its ready hook; it waits for the file
    ``gate`` and records each worker it warmed up in ``warmed``."""
    (tmp_path / "hooks.py").write_text(HOOKS)
    env = {"GATE": str(tmp_path / "gate"), "WARMED": str(tmp_path / "warmed")}
    return serve(tmp_path, "--ready-hook", "hooks:warm_up", env=env)


def test_the_ready_hook_gates_readiness(tmp_path: Path, app: Path) -> None:
    gate = tmp_path / "gate"
    gate.touch()
    with hooked(tmp_path) as svc:
        svc.wait_serving(1)
        assert len((tmp_path / "warmed").read_text().split()) == 1
        url = f"http://{svc.address()}/"
        # the next generation is not ready while its hook runs: v1 keeps answering
        gate.unlink()
        write_app(app, "v2")
        mark = hup(svc)
        svc.wait_for("starting generation 2", after=mark)
        for _ in range(20):
            assert httpx.get(url, timeout=10).text.startswith("v1")
        assert "generation 2 is serving" not in svc.output
        gate.touch()
        svc.wait_serving(2, after=mark)
        assert httpx.get(url, timeout=10).text.startswith("v2")
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


def test_a_ready_hook_that_raises_fails_the_reload(tmp_path: Path, app: Path) -> None:
    (tmp_path / "gate").touch()
    with hooked(tmp_path) as svc:
        svc.wait_serving(1)
        url = f"http://{svc.address()}/"
        # a hook that raises fails the reload; the old generation keeps serving
        (tmp_path / "hooks.py").write_text(HOOKS + "\n\nwarm_up = broken\n")
        write_app(app, "v2")
        mark = hup(svc)
        failure = svc.wait_for(r"reload failed: generation 2: (.*)", after=mark)
        assert "ready hook 'hooks:warm_up' failed: RuntimeError: the database is unreachable" in (
            failure.group(1)
        )
        assert "generation 1 keeps serving" in failure.group(0)
        assert httpx.get(url, timeout=10).text.startswith("v1")
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


def test_bad_interface_threads_and_hook_are_one_line_before_anything_starts(
    tmp_path: Path, app: Path
) -> None:
    for extra, message in (
        (["--threads", "0"], "'0' must be a whole number of at least 1"),
        (["--interface", "asgi4"], "invalid choice: 'asgi4'"),
        (
            ["--ready-hook", "nohook"],
            "ready hook 'nohook' must look like 'package.module:function'",
        ),
        (["--ready-hook", "missing:f"], "cannot find module 'missing' for ready hook 'missing:f'"),
    ):
        svc = serve(tmp_path, *extra)
        with svc:
            assert svc.wait_exit() == 2, svc.output
            assert message in svc.output
            assert "Traceback" not in svc.output
            assert "starting generation" not in svc.output


# -- recognising the kind of an app (no processes) ------------------------------------


def wsgi_function(environ: object, start_response: object) -> list[bytes]:
    return []


class WsgiObject:
    def __call__(self, environ: object, start_response: object) -> list[bytes]:
        return []


async def asgi3_function(scope: object, receive: object, send: object) -> None:
    return None


class Asgi3Object:
    async def __call__(self, scope: object, receive: object, send: object) -> None:
        return None


class Asgi2Class:
    def __init__(self, scope: object) -> None:
        self.scope = scope

    async def __call__(self, receive: object, send: object) -> None:
        return None


class Pep3333Class:
    """PEP 3333's class-based app: the class is called; its instance is the body."""

    def __init__(self, environ: object, start_response: object) -> None:
        self.environ = environ

    def __iter__(self) -> Iterator[bytes]:
        yield b""


def tagged_wsgi(environ: object, start_response: object, tag: str) -> list[bytes]:
    return []


def test_auto_recognises_wsgi_asgi3_and_asgi2_callables() -> None:
    assert detect(wsgi_function) == "wsgi"
    # found by an attack: these two were taken for ASGI 3 and ASGI 2, and every
    # request got a 500 from a worker that had reported ready
    assert detect(functools.partial(tagged_wsgi, tag="x")) == "wsgi"
    assert detect(Pep3333Class) == "wsgi"
    assert detect(functools.partial(asgi3_function)) == "asgi3"
    assert detect(WsgiObject()) == "wsgi"
    assert detect(asgi3_function) == "asgi3"
    assert detect(Asgi3Object()) == "asgi3"
    assert detect(Asgi2Class) == "asgi2"
    wrapped, kind = as_asgi3(WsgiObject(), "auto", 2)
    assert kind == "wsgi"
    assert type(wrapped).__name__ == "WSGIMiddleware"
    assert as_asgi3(Asgi3Object(), "auto", 2)[1] == "asgi3"


def test_an_asgi2_app_is_served(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(
        textwrap.dedent("""\
            class app:
                def __init__(self, scope):
                    self.scope = scope

                async def __call__(self, receive, send):
                    if self.scope["type"] != "http":
                        return
                    await send({"type": "http.response.start", "status": 200,
                                "headers": [(b"content-type", b"text/plain")]})
                    await send({"type": "http.response.body", "body": b"asgi2"})
        """)
    )
    with serve(tmp_path, "--interface", "auto") as svc:
        svc.wait_serving(1)
        assert httpx.get(f"http://{svc.address()}/", timeout=10).text == "asgi2"
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


def test_a_parked_wsgi_worker_with_a_request_still_running_at_its_deadline_is_not_resumed(
    tmp_path: Path, app: Path
) -> None:
    """Found by an attack: the parked worker cancelled the endless stream at its drain
    deadline, which cannot stop a WSGI thread; the thread then waited forever, and a
    rollback resumed a worker with no thread left, ready by its own account, that
    answered nothing. Such a worker now says it cannot be resumed, and goes."""
    pid_file = tmp_path / "app.pid"
    with serve(
        tmp_path, "--interface", "wsgi", "--threads", "1", "--drain-timeout", "2",
        "--probation", "60", "--pid-file", str(pid_file),
    ) as svc:  # fmt: skip
        svc.wait_serving(1)
        poll_until(pid_file.exists, 10, "the PID file")
        host, _, port = svc.address().rpartition(":")
        with socket.create_connection((host, int(port)), timeout=10) as stream:
            stream.sendall(b"GET /forever HTTP/1.1\r\nHost: t\r\n\r\n")
            assert stream.recv(4096).startswith(b"HTTP/1.1 200")
            write_app(app, "v2")
            reload(svc, 2)
            svc.wait_for(
                r"parked generation 1 worker 0 cannot be resumed: 1 request\(s\) still "
                r"running at its drain deadline"
            )
            rolled = graceful_cli("rollback", "--pid-file", str(pid_file))
        assert rolled.returncode == 1
        assert "nothing to roll back to: no parked worker is left to resume" in rolled.stderr
        for _ in range(5):
            assert httpx.get(f"http://{svc.address()}/", timeout=10).text.startswith("v2")
        svc.send(signal.SIGTERM)
        svc.wait_exit()
