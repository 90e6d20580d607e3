"""The supervisor's health endpoint (``/ready``, ``/live``, ``/metrics``) and
``stop_delay``, against real supervisors."""

from __future__ import annotations

import contextlib
import http.client
import re
import signal
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import psutil
from harness import (
    NotifySocket,
    ServiceProcess,
    ask,
    connect,
    graceful_cli,
    poll_until,
    reload,
    running,
)
from services import service_source, wait_for_file, write_service

ENV = {"LISTEN": "127.0.0.1:0", "DRAIN_TIMEOUT": "5"}


def health_service(tmp_path: Path, prefix: str = "v1", stop_delay: float = 0.0) -> Path:
    return write_service(
        tmp_path / "svc.py",
        prefix=prefix,
        pid_file=tmp_path / "svc.pid",
        run_args=f"health='127.0.0.1:0', stop_delay={stop_delay}",
    )


@contextlib.contextmanager
def running_with_health(
    tmp_path: Path, *, stop_delay: float = 0.0, env: Mapping[str, str] = ENV
) -> Iterator[tuple[ServiceProcess, tuple[str, int]]]:
    """:func:`health_service` started with ``env``; once generation 1 serves and its
    PID file is written, (svc, the health endpoint's address)."""
    script = health_service(tmp_path, stop_delay=stop_delay)
    with running(script, env=env) as svc:
        svc.wait_serving(1)
        poll_until((tmp_path / "svc.pid").exists, 10, "the PID file")
        yield svc, health_address(svc.output)


def health_address(output: str) -> tuple[str, int]:
    match = re.search(r"health endpoint on http://([\d.]+):(\d+)/ready", output)
    assert match, output
    return match.group(1), int(match.group(2))


def get(address: tuple[str, int], path: str, method: str = "GET") -> tuple[int, str]:
    connection = http.client.HTTPConnection(*address, timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def test_ready_and_live_while_serving_then_503_through_stop_delay(tmp_path: Path) -> None:
    with running_with_health(tmp_path, stop_delay=30) as (svc, health):
        assert get(health, "/ready") == (200, "ready\n")
        assert get(health, "/live") == (200, "live\n")
        assert get(health, "/nope")[0] == 404
        assert get(health, "/ready", method="POST")[0] == 405

        svc.send(signal.SIGTERM)
        svc.wait_for(r"stopping in 30s \(stop_delay\)")
        status, body = get(health, "/ready")
        assert status == 503
        assert body.startswith("not ready: stopping after stop_delay=30s")
        assert get(health, "/live") == (200, "live\n")
        # the app still answers, on new connections too, through the delay
        for _ in range(3):
            with connect(svc.address()) as client:
                assert ask(client, "hi") == b"v1: hi\n"
        # a second stop request skips the rest of the delay
        svc.send(signal.SIGTERM)
        svc.wait_for("stopping: draining 1 workers")
        assert svc.wait_exit(timeout=20) == 0


def test_stop_delay_ends_by_itself_and_then_drains(tmp_path: Path) -> None:
    with running_with_health(tmp_path, stop_delay=1) as (svc, health):
        mark = svc.mark()
        started = time.monotonic()
        svc.send(signal.SIGTERM)
        svc.wait_for("stopping in 1s", after=mark)
        assert get(health, "/ready")[0] == 503
        with connect(svc.address()) as client:
            assert ask(client, "hi") == b"v1: hi\n"
        svc.wait_for("stopping: draining", after=mark)
        assert time.monotonic() - started >= 1.0
        assert svc.wait_exit(timeout=20) == 0


def test_metrics_count_reloads_by_outcome(tmp_path: Path) -> None:
    pid_file = tmp_path / "svc.pid"
    with running_with_health(tmp_path) as (svc, health):
        good = service_source(prefix="v2", pid_file=pid_file, run_args="health='127.0.0.1:0'")
        bad = good.replace("CTX = None", "CTX = None\nraise RuntimeError('boom')")
        outcomes = []
        for source in (good, bad, good, bad, good):
            svc.script.write_text(source)
            outcomes.append(graceful_cli("reload", "--wait", "--pid-file", str(pid_file)))
        assert [r.returncode for r in outcomes] == [0, 1, 0, 1, 0]

        status, metrics = get(health, "/metrics")

        assert status == 200
        assert 'graceful_reloads_total{outcome="serving"} 3.0' in metrics
        assert 'graceful_reloads_total{outcome="failed"} 2.0' in metrics
        assert 'graceful_reload_duration_seconds_count{outcome="serving"} 3.0' in metrics
        assert 'graceful_reload_duration_seconds_count{outcome="failed"} 2.0' in metrics
        assert 'graceful_workers{state="ready"} 1.0' in metrics
        assert "graceful_serving_generation 6.0" in metrics
        assert "graceful_worker_crashes_total 0.0" in metrics
        assert "graceful_ready 1.0" in metrics


def test_a_health_port_in_use_is_one_line_and_nothing_is_left(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        script = write_service(
            tmp_path / "svc.py", pid_file=tmp_path / "svc.pid", run_args=f"health=':{port}'"
        )
        script.write_text(script.read_text().replace(f"':{port}'", f"'127.0.0.1:{port}'"))
        with running(script, env=ENV) as svc:
            assert svc.wait_exit() == 2
            [line] = [x for x in svc.lines if "ERROR" in x]
            assert line.endswith(
                f"health endpoint: cannot listen on '127.0.0.1:{port}': address already in use"
            )
        assert not (tmp_path / "svc.pid").exists()
        assert not list(tmp_path.glob(".svc.pid.*"))


def test_ready_is_503_until_the_first_generation_serves(tmp_path: Path) -> None:
    go = tmp_path / "go"
    script = write_service(
        tmp_path / "svc.py",
        before_serve=wait_for_file(go),
        run_args="health='127.0.0.1:0'",
    )
    with running(script, env=ENV) as svc:
        health = health_address(svc.wait_for("health endpoint on").string)
        assert get(health, "/ready") == (503, "not ready: starting generation 1\n")
        assert get(health, "/live") == (200, "live\n")
        go.touch()
        svc.wait_serving(1)
        assert get(health, "/ready") == (200, "ready\n")


def test_idle_health_clients_cannot_use_up_the_supervisors_descriptors(tmp_path: Path) -> None:
    with running_with_health(tmp_path) as (svc, health):
        svc.warm_standby()  # its channels are the supervisor's descriptors too
        before = psutil.Process(svc.pid).num_fds()
        idle = []
        try:
            for _ in range(200):  # connect, and send nothing
                idle.append(socket.create_connection(health, timeout=10))
            poll_until(
                lambda: psutil.Process(svc.pid).num_fds() >= before + 32,
                10,
                "the supervisor to take its share of the idle clients",
            )
            assert psutil.Process(svc.pid).num_fds() <= before + 32 + 2
            # a probe is answered at once, not after the idle clients' 5 s
            connection = http.client.HTTPConnection(*health, timeout=3)
            try:
                connection.request("GET", "/live")
                assert connection.getresponse().status == 200
            finally:
                connection.close()
            # the supervisor still has descriptors to start a generation with
            reload(svc, 2)
        finally:
            for client in idle:
                client.close()
        assert get(health, "/live") == (200, "live\n")


def test_requests_as_clients_write_them(tmp_path: Path) -> None:
    with running_with_health(tmp_path) as (_, health):

        def raw(request: bytes) -> bytes:
            with socket.create_connection(health, timeout=10) as client:
                client.sendall(request)
                return client.makefile("rb").readline()

        assert raw(b"GET http://127.0.0.1/ready HTTP/1.1\r\nHost: x\r\n\r\n").startswith(
            b"HTTP/1.1 200"
        )
        assert raw(b"GET /live HTTP/1.0\n\n").startswith(b"HTTP/1.1 200")  # bare LF
        assert raw(b"GET /live HTTP/1.9\r\n\r\n").startswith(b"HTTP/1.1 400")
        assert raw(b"GET /live HTTP/1.1" + b"x" * 9000 + b"\r\n\r\n").startswith(b"HTTP/1.1 400")


def test_metrics_and_the_notify_status_record_a_probation_and_a_rollback(tmp_path: Path) -> None:
    pid_file = tmp_path / "svc.pid"
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    try:
        env = {**ENV, "NOTIFY_SOCKET": notify.address}
        with running_with_health(tmp_path, env=env) as (svc, health):
            svc.script.write_text(
                service_source(prefix="v2", pid_file=pid_file, run_args="health='127.0.0.1:0'")
            )
            assert graceful_cli("reload", "--wait", "--pid-file", str(pid_file)).returncode == 0
            _, metrics = get(health, "/metrics")
            assert "graceful_on_probation 1.0" in metrics
            assert 'graceful_workers{state="parked"} 1.0' in metrics
            assert "graceful_rollbacks_total 0.0" in metrics

            svc.send(signal.SIGUSR2)
            svc.wait_for(r"rolled back: generation 1 serves again")
            _, metrics = get(health, "/metrics")
            assert "graceful_rollbacks_total 1.0" in metrics
            assert "graceful_rolled_back 1.0" in metrics
            assert "graceful_on_probation 0.0" in metrics
            assert "graceful_serving_generation 1.0" in metrics
            # the service manager heard the rollback begin and end
            heard: list[str] = []
            while not any(line.startswith("READY=1") and "rolled back" in line for line in heard):
                heard.append(notify.next())
            assert any(
                "STATUS=generation 2 serving, 1/1 workers ready; rolling back to generation 1"
                in line
                for line in heard
            ), heard
            assert heard[-1].startswith(
                "READY=1\nSTATUS=generation 1 serving, 1/1 workers ready; rolled back from "
                "generation 2: generation 2 rolled back by SIGUSR2"
            ), heard[-1]
            svc.send(signal.SIGTERM)
            assert svc.wait_exit() == 0
    finally:
        notify.close()
