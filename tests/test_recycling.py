"""Recycling, start-first: a worker that reaches ``--max-requests`` (with its jitter)
or ``--max-worker-memory`` is replaced in its slot, and drains only once the
replacement is ready, under keep-alive load, with no request lost and no rollback
during the probation it happens in."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import httpx
import pytest
from harness import ServiceProcess, graceful_cli, graceful_serve, hup, poll_until
from http_load import HttpLoad

APP = """
import asyncio
import os

LEAK = []

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if os.environ.get("LEAK_MIB"):
        LEAK.append(b"x" * (int(os.environ["LEAK_MIB"]) << 20))
        await asyncio.sleep(0.02)  # a leak of about 50 MiB a second per client
    body = f"{os.getpid()}".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
"""

RECYCLED = r"generation (\d+) worker \d recycled after ([\d,]+) requests; replacement ready in"


def status(pid_file: Path) -> dict[str, object]:
    shown = graceful_cli("status", "--json", "--pid-file", str(pid_file)).stdout
    loaded: dict[str, object] = json.loads(shown)
    return loaded


def recycled(svc: ServiceProcess, pattern: str = RECYCLED) -> list[re.Match[str]]:
    return [match for line in svc.lines if (match := re.search(pattern, line))]


@pytest.mark.parametrize("preload", [[], ["--preload"]], ids=["spawned", "preload"])
def test_max_requests_recycles_workers_start_first_with_no_failed_request(
    tmp_path: Path, preload: list[str]
) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP)
    pid_file = tmp_path / "app.pid"
    options = ["--workers", "2", "--max-requests", "200", "--max-requests-jitter", "50", *preload]
    options += ["--probation", "120", "--pid-file", str(pid_file)]
    with graceful_serve(app, *options) as svc:
        svc.wait_serving(1)
        load = HttpLoad(f"http://{svc.address()}/", clients=16)
        load.start()
        try:
            # a reload: generation 2 serves on probation while its workers recycle
            hup(svc)
            svc.wait_serving(2)
            poll_until(
                lambda: sum(m.group(1) == "2" for m in recycled(svc)) >= 10,
                90,
                "10 recycles of generation 2",
            )
        finally:
            tally = load.stop()
        recycles = recycled(svc)
        seen = status(pid_file)  # (after the lines: it counts at least as many)
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0
    assert tally.failed == 0, tally.as_dict()
    print(f"{len(recycles)} recycles, {tally.ok} answers, {tally.failed} failed")
    counters = seen["counters"]
    assert isinstance(counters, dict)
    # every recycle is counted, as a recycle: no crash, no restart, no rollback
    assert counters["recycles"].get("max_requests", 0) >= len(recycles) >= 10
    assert (counters["worker_crashes"], counters["worker_restarts"]) == (0, 0)
    assert counters["rollbacks"] == 0
    assert seen["probation"] is not None, "the probation was cut short"
    # each worker went between max_requests and a little beyond max_requests + jitter
    # (uvicorn's count is published with each heartbeat, 0.2 s apart, and the worker
    # serves on until its replacement is ready)
    counts = [int(m.group(2).replace(",", "")) for m in recycles]
    assert all(count >= 200 for count in counts), counts
    assert "rolled back" not in svc.output


def test_max_worker_memory_recycles_a_leaking_worker_with_no_failed_request(
    tmp_path: Path,
) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP)
    pid_file = tmp_path / "app.pid"
    options = ["--workers", "2", "--max-worker-memory", "80", "--pid-file", str(pid_file)]
    with graceful_serve(app, *options, "--health", "127.0.0.1:0", env={"LEAK_MIB": "1"}) as svc:
        svc.wait_serving(1)
        health = svc.wait_for(r"health endpoint on http://([\d.]+:\d+)/ready").group(1)
        load = HttpLoad(f"http://{svc.address()}/", clients=2)
        load.start()
        try:
            poll_until(
                lambda: len(recycled(svc, r"recycled at ([\d.,]+) MiB of unique memory")) >= 3,
                90,
                "3 recycles for memory",
            )
        finally:
            tally = load.stop()
        recycles = recycled(svc, r"recycled at ([\d.,]+) MiB of unique memory")
        seen = status(pid_file)  # (after the lines: it counts at least as many)
        # once the load has stopped, each ready worker's vitals are read within 0.5 s
        vitals: list[dict[str, float]] = []

        def read_all() -> bool:
            vitals[:] = [
                worker["vitals"]
                for generation in status(pid_file)["generations"]  # type: ignore[attr-defined]
                for worker in generation["workers"]
                if worker["state"] == "ready"
            ]
            return len(vitals) == 2 and all(
                v.get("heartbeat_age") is not None and "rss_mib" in v for v in vitals
            )

        poll_until(read_all, 15, f"both workers' vitals read (saw {vitals})")
        metrics = httpx.get(f"http://{health}/metrics", timeout=10).text
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0
    assert tally.failed == 0, tally.as_dict()
    counters = seen["counters"]
    assert isinstance(counters, dict)
    assert counters["recycles"].get("max_worker_memory", 0) >= len(recycles) >= 3
    # caught soon after the limit: the leak is 1 MiB a request (at most 50 a second per
    # client, 2 clients), sampled every 0.5 s
    sizes = [float(m.group(1).replace(",", "")) for m in recycles]
    assert all(80 < size < 80 + 150 for size in sizes), sizes
    assert (counters["worker_crashes"], counters["worker_restarts"]) == (0, 0)
    # status shows each worker's vitals, and the metrics the recycles by limit
    for shown in vitals:
        assert shown["heartbeat_age"] < 2.0, vitals
        assert shown["rss_mib"] > 0, vitals
        assert shown["requests"] >= 0, vitals
    recycled_total = re.search(
        r'graceful_worker_recycles_total\{limit="max_worker_memory"\} (\d+)', metrics
    )
    assert recycled_total is not None, metrics
    assert int(recycled_total.group(1)) >= 3
    assert "graceful_workers_hung_total 0.0" in metrics
    assert "graceful_worker_resident_memory_bytes{" in metrics


def test_max_worker_lifetime_recycles_each_worker_in_turn_with_no_failed_request(
    tmp_path: Path,
) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP)
    options = ["--workers", "2", "--max-worker-lifetime", "1.5"]
    options += ["--max-worker-lifetime-jitter", "0.5"]
    with graceful_serve(app, *options) as svc:
        svc.wait_serving(1)
        load = HttpLoad(f"http://{svc.address()}/", clients=8)
        load.start()
        try:
            lifetime = r"generation 1 worker (\d) recycled after ([\d.]+)s; replacement ready"
            poll_until(lambda: len(recycled(svc, lifetime)) >= 4, 60, "4 recycles for age")
        finally:
            tally = load.stop()
        recycles = recycled(svc, lifetime)
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0
    assert tally.failed == 0, tally.as_dict()
    # both slots, each after its lifetime and its jitter (1.5 to 2 s), at the earliest
    assert {m.group(1) for m in recycles} == {"0", "1"}
    ages = [float(m.group(2)) for m in recycles]
    assert all(age >= 1.5 for age in ages), ages
