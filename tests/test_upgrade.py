"""``graceful upgrade``: the supervisor itself replaced, under load, with long requests
in flight, across two installed versions of graceful (two release directories with a
virtual environment each, the release link switched between them), and the
successor failing at each step it can fail at."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploys import Deployment
from harness import ROOT, ServiceProcess, ask, connect, graceful_cli, poll_until, running
from http_load import HttpLoad
from services import pid_service, write_service

#: The version string of the second install.
NEW_VERSION = "0.1.0+upgrade"

#: A plain ASGI app: ``/`` answers its release, graceful's version and its PID;
#: ``/slow`` answers after 20 s, ``/stream`` sends 20 chunks a second apart,
#: ``/crash`` ends the worker.
UPGRADE_APP = """\
import asyncio
import json
import os
import sys

import graceful._version
{header}
RELEASE = {release!r}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({{"type": message["type"] + ".complete"}})
            if message["type"] == "lifespan.shutdown":
                return
    path = scope["path"]
    if path == "/crash":
        os._exit(3)
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    if path == "/stream":
        for number in range(20):
            await send({{"type": "http.response.body", "body": b"chunk %d\\n" % number,
                        "more_body": True}})
            await asyncio.sleep(1)
        await send({{"type": "http.response.body", "body": b"end\\n"}})
        return
    if path == "/slow":
        await send({{"type": "http.response.body", "body": b"slow ", "more_body": True}})
        await asyncio.sleep(20)
        await send({{"type": "http.response.body", "body": b"done\\n"}})
        return
    answer = {{"release": RELEASE, "graceful": graceful._version.VERSION, "pid": os.getpid()}}
    await send({{"type": "http.response.body", "body": json.dumps(answer).encode()}})
"""


def app(release: str, header: str = "") -> str:
    return UPGRADE_APP.format(release=release, header=header)


@pytest.fixture
def deployment(tmp_path: Path) -> Deployment:
    """r1 runs this graceful; r2 has a graceful of its own, version NEW_VERSION."""
    deployment = Deployment(tmp_path / "srv")
    deployment.release("r1", "1.0", app=app("r1"))
    deployment.release("r2", "2.0", app=app("r2"), graceful_version=NEW_VERSION)
    deployment.switch("r1")
    return deployment


def start(deployment: Deployment, pid_file: Path, *args: str) -> ServiceProcess:
    """``current/.venv/bin/graceful serve app:app`` from ``current``, as a service
    manager starts it."""
    current = deployment.current
    command = [
        str(current / ".venv/bin/graceful"), "serve", "app:app",
        "--listen", "127.0.0.1:0", "--pid-file", str(pid_file), "--health", "127.0.0.1:0",
        "--workers", "2", "--drain-timeout", "40", *args,
    ]  # fmt: skip
    return running(
        current / "app.py", command=command, cwd=current, env={"PYTHONPATH": "", "PWD": str(ROOT)}
    )


def answer(address: str) -> dict[str, object]:
    with urllib.request.urlopen(f"http://{address}/", timeout=10) as response:
        body: dict[str, object] = json.loads(response.read())
        return body


def upgrade(pid_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return graceful_cli("upgrade", "--pid-file", str(pid_file), *args)


def status(pid_file: Path) -> dict[str, object]:
    result = graceful_cli("status", "--json", "--pid-file", str(pid_file))
    assert result.returncode == 0, result.stderr
    parsed: dict[str, object] = json.loads(result.stdout)
    return parsed


def pid_in(pid_file: Path) -> int:
    return int(pid_file.read_text())


class LongResponse:
    """A request read to its end in a thread: ``body`` once done, ``error`` if it
    failed. ``started`` is set once its first bytes arrived (it is in flight)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.body = b""
        self.error: str | None = None
        self.started = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            with urllib.request.urlopen(self.url, timeout=60) as response:
                while chunk := response.read1(65536):
                    self.body += chunk
                    self.started.set()
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.started.set()

    def wait(self, timeout: float) -> bytes:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"{self.url} still running after {timeout}s"
        assert self.error is None, self.error
        return self.body


@pytest.fixture
def loads() -> Iterator[list[HttpLoad]]:
    started: list[HttpLoad] = []
    yield started
    for load in started:
        load.stop()


def under_load(address: str, loads: list[HttpLoad]) -> tuple[HttpLoad, HttpLoad]:
    """Keep-alive clients, and clients that open a new connection per request."""
    kept = HttpLoad(f"http://{address}/", clients=4)
    fresh = HttpLoad(f"http://{address}/", clients=4, keep_alive=False)
    for load in (kept, fresh):
        loads.append(load)
        load.start()
    poll_until(lambda: kept.tally.ok > 0 and fresh.tally.ok > 0, 15, "answers under load")
    return kept, fresh


def only_processes_of(svc: ServiceProcess, supervisor: int) -> list[int]:
    """The service's processes that are not ``supervisor`` nor its children."""
    strays = []
    for pid in svc.processes():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rpartition(")")[2].split()[1])
        if supervisor not in (pid, parent):
            strays.append(pid)
    return strays


def test_an_upgrade_to_another_install_under_load_loses_nothing(
    deployment: Deployment, tmp_path: Path, loads: list[HttpLoad]
) -> None:
    pid_file = tmp_path / "svc.pid"
    with start(deployment, pid_file, "--probation", "0") as svc:
        svc.wait_serving(1)
        address = svc.address()
        old = svc.pid
        assert answer(address)["graceful"] != NEW_VERSION
        kept, fresh = under_load(address, loads)
        slow = LongResponse(f"http://{address}/slow")
        stream = LongResponse(f"http://{address}/stream")
        assert slow.started.wait(10)
        assert stream.started.wait(10)

        deployment.switch("r2")
        result = upgrade(pid_file, "--wait")
        assert result.returncode == 0, result.stderr + svc.output
        assert f"(graceful {NEW_VERSION}, Python" in result.stdout, result.stdout
        new = pid_in(pid_file)
        assert new != old

        def new_answers() -> bool:
            return all(answer(address)["graceful"] == NEW_VERSION for _ in range(5))

        poll_until(new_answers, 15, "answers from the new install only")
        described = status(pid_file)
        assert described["pid"] == new
        assert described["graceful"] == NEW_VERSION
        for load in (kept, fresh):
            load.stop()
            assert load.tally.failed == 0, load.tally.as_dict()
        # the old supervisor drains the long responses, then exits
        assert slow.wait(40) == b"slow done\n"
        assert stream.wait(40).endswith(b"chunk 19\nend\n")
        assert svc.wait_exit(40) == 0, svc.output
        assert "Traceback" not in svc.output, svc.output
        # nothing of the old supervisor's is left (its resource tracker included)
        poll_until(lambda: not only_processes_of(svc, new), 15, "only the successor's processes")

        # the successor follows the release link too, though it was started by the
        # physical paths of r2
        deployment.release("r3", "3.0", app=app("r3"), graceful_version=NEW_VERSION)
        deployment.switch("r3")
        reloaded = graceful_cli("reload", "--wait", "--pid-file", str(pid_file))
        assert reloaded.returncode == 0, reloaded.stderr + svc.output
        poll_until(lambda: answer(address)["release"] == "r3", 15, "answers from r3")

        stopped = graceful_cli("stop", "--wait", "--pid-file", str(pid_file))
        assert stopped.returncode == 0, stopped.stderr + svc.output
        poll_until(lambda: not svc.processes(), 15, "every process gone")
        assert not pid_file.exists()
        assert not list(tmp_path.glob(".svc.pid*")), list(tmp_path.iterdir())


def test_a_successor_that_fails_at_import_changes_nothing(
    deployment: Deployment, tmp_path: Path, loads: list[HttpLoad]
) -> None:
    broken = deployment.root / "releases" / "r3"
    deployment.release(
        "r3", "3.0", app=app("r3", header='raise RuntimeError("release r3 is broken")')
    )
    pid_file = tmp_path / "svc.pid"
    with start(deployment, pid_file, "--probation", "0") as svc:
        svc.wait_serving(1)
        address = svc.address()
        kept, fresh = under_load(address, loads)
        deployment.switch(broken.name)
        result = upgrade(pid_file, "--wait")
        assert result.returncode == 1, result.stdout + svc.output
        assert "release r3 is broken" in result.stderr, result.stderr + svc.output
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert pid_in(pid_file) == svc.pid
        assert answer(address)["release"] == "r1"
        for load in (kept, fresh):
            load.stop()
            assert load.tally.failed == 0, load.tally.as_dict()
        poll_until(lambda: not only_processes_of(svc, svc.pid), 15, "the successor gone")
        assert status(pid_file)["pid"] == svc.pid
        svc.send(15)
        assert svc.wait_exit() == 0, svc.output


def test_a_successor_whose_workers_crash_during_its_probation_gives_the_service_back(
    deployment: Deployment, tmp_path: Path
) -> None:
    pid_file = tmp_path / "svc.pid"
    with start(deployment, pid_file, "--probation", "60") as svc:
        svc.wait_serving(1)
        address = svc.address()
        before = {answer(address)["pid"] for _ in range(20)}
        deployment.switch("r2")
        through: list[subprocess.CompletedProcess[str]] = []
        waiting = threading.Thread(
            target=lambda: through.append(upgrade(pid_file, "--through-probation"))
        )
        waiting.start()
        poll_until(
            lambda: answer(address)["graceful"] == NEW_VERSION and pid_in(pid_file) != svc.pid,
            30,
            "the successor serving",
        )
        successor = pid_in(pid_file)
        mark = svc.mark()
        with pytest.raises(OSError, match=r"closed|reset|Remote end"):  # no answer
            urllib.request.urlopen(f"http://{address}/crash", timeout=10)
        svc.wait_for(r"upgrade rolled back", after=mark)
        poll_until(lambda: pid_in(pid_file) == svc.pid, 15, "the PID file back")
        # the old generation's own processes answer again
        poll_until(
            lambda: all(answer(address)["pid"] in before for _ in range(10)),
            15,
            "the parked workers answering",
        )
        waiting.join(30)
        assert through, "upgrade --through-probation did not return"
        assert through[0].returncode == 1, through
        assert "upgrade rolled back" in through[0].stderr
        assert status(pid_file)["pid"] == svc.pid
        poll_until(lambda: not Path(f"/proc/{successor}").exists(), 30, "the successor gone")
        poll_until(lambda: not only_processes_of(svc, svc.pid), 15, "its workers gone")
        svc.send(15)
        assert svc.wait_exit() == 0, svc.output


def ask_unix(path: Path, line: str) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        return ask(sock, line)


def test_a_script_service_comes_back_with_its_new_code_on_both_listeners(
    tmp_path: Path,
) -> None:
    """``python svc.py``, listening on TCP and on a unix socket: the successor runs the
    script as it is on disk now, on the same sockets; the unix socket's file stays
    until the successor stops, and then goes."""
    unix = tmp_path / "echo.sock"
    script, pid_file = pid_service(tmp_path, prefix="v1")
    env = {"LISTEN": f"127.0.0.1:0,unix:{unix}", "PROBATION": "0"}
    with running(script, env=env) as svc:
        svc.wait_serving(1)
        address = svc.address()
        assert ask(connect(address), "hello") == b"v1: hello\n"
        write_service(script, pid_file=pid_file, prefix="v2")
        result = upgrade(pid_file, "--wait")
        assert result.returncode == 0, result.stderr + svc.output
        assert svc.wait_exit() == 0, svc.output
        assert ask(connect(address), "hello") == b"v2: hello\n"
        assert ask_unix(unix, "hello") == b"v2: hello\n"
        stopped = graceful_cli("stop", "--wait", "--pid-file", str(pid_file))
        assert stopped.returncode == 0, stopped.stderr + svc.output
        poll_until(lambda: not svc.processes(), 15, "every process gone")
        assert not unix.exists()
        assert not pid_file.exists()


def test_an_upgrade_that_would_move_the_pid_file_is_refused_in_one_line(tmp_path: Path) -> None:
    script, pid_file = pid_service(tmp_path)
    with running(script, env={"LISTEN": "127.0.0.1:0", "PROBATION": "0"}) as svc:
        svc.wait_serving(1)
        write_service(script, pid_file=tmp_path / "elsewhere.pid")
        result = upgrade(pid_file, "--wait")
        assert result.returncode == 1, result.stdout + svc.output
        assert "cannot change the PID file" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert pid_in(pid_file) == svc.pid
        assert ask(connect(svc.address()), "hello").endswith(b"hello\n")
        poll_until(lambda: not only_processes_of(svc, svc.pid), 15, "the successor gone")
        assert not (tmp_path / "elsewhere.pid").exists()


def test_an_upgrade_is_refused_under_systemd_without_notify(tmp_path: Path) -> None:
    """systemd would take the supervisor's exit for the service's end."""
    script, pid_file = pid_service(tmp_path)
    env = {"LISTEN": "127.0.0.1:0", "INVOCATION_ID": "0123456789abcdef"}
    with running(script, env=env) as svc:
        svc.wait_serving(1)
        result = upgrade(pid_file)  # refused at once, even without --wait
        assert result.returncode == 1, result.stdout + svc.output
        assert "refused: under systemd without Type=notify" in result.stderr, result.stderr
        assert pid_in(pid_file) == svc.pid
        assert not only_processes_of(svc, svc.pid)
