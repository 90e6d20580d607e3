"""What the supervisor judges from a worker's vitals (:func:`graceful.supervisor.vitals.judge`),
the page both sides map, and the memory readings: pure checks, no supervisor."""

from __future__ import annotations

import dataclasses
import os
import time

import pytest

from graceful.child.context import Context
from graceful.child.shutdown import ShutdownRequest
from graceful.core.events import WorkerHung, WorkerWornOut
from graceful.core.fleet import Settings, Worker, WorkerState
from graceful.supervisor.vitals import (
    RESEND,
    Reading,
    VitalsMonitor,
    judge,
    resident_memory,
    unique_memory,
)
from graceful.wire.vitals import PAGE, VitalsPage

MIB = 1024 * 1024


def ready_worker(ready_at: float = 100.0) -> Worker:
    return Worker(7, 1, 0, started_at=99.0, state=WorkerState.READY, ready_at=ready_at)


def test_a_silent_ready_worker_is_hung_once_past_the_timeout() -> None:
    settings = Settings(timeout=2.0)
    worker = ready_worker()
    assert judge(worker, Reading(heartbeat_age=1.9), settings, now=200.0) is None
    assert judge(worker, Reading(heartbeat_age=2.5), settings, now=200.0) == WorkerHung(7, 2.5)
    # counted from when it became ready, if that is later than its last beat
    assert judge(worker, Reading(heartbeat_age=50.0), settings, now=101.0) is None
    # never when it does not beat, nor with the timeout off, nor twice
    assert judge(worker, Reading(heartbeat_age=None), settings, now=200.0) is None
    off = Settings(timeout=0.0)
    assert judge(worker, Reading(heartbeat_age=50.0), off, now=200.0) is None
    told = Reading(heartbeat_age=50.0, hung_reported=True)
    assert judge(worker, told, settings, now=200.0) is None


@pytest.mark.parametrize("state", [WorkerState.STARTING, WorkerState.DRAINING])
def test_a_starting_or_draining_worker_is_not_judged_hung(state: WorkerState) -> None:
    worker = dataclasses.replace(ready_worker(), state=state)
    assert judge(worker, Reading(heartbeat_age=99.0), Settings(timeout=2.0), now=300.0) is None


def test_the_limits_wear_a_worker_out_and_are_said_again_no_sooner_than_resend() -> None:
    settings = Settings(timeout=0.0, max_worker_memory=80)
    worker = ready_worker()
    reading = Reading(requests=1043, max_requests=1000)
    assert judge(worker, reading, settings, now=150.0) == WorkerWornOut(
        7, "max_requests", "after 1,043 requests"
    )
    reading.worn_out_reported_at = 150.0
    assert judge(worker, reading, settings, now=150.0 + RESEND / 2) is None
    assert judge(worker, reading, settings, now=150.0 + RESEND) is not None
    lifetime = Reading(max_lifetime=3600.0)
    assert judge(worker, lifetime, settings, now=100.0 + 3599.0) is None
    assert judge(worker, lifetime, settings, now=100.0 + 3600.5) == WorkerWornOut(
        7, "max_worker_lifetime", "after 3,600.5s"
    )
    memory = Reading(memory=81 * MIB)
    assert judge(worker, memory, settings, now=150.0) == WorkerWornOut(
        7, "max_worker_memory", "at 81.0 MiB of unique memory (limit 80 MiB)"
    )
    assert judge(worker, Reading(memory=80 * MIB), settings, now=150.0) is None


def test_a_worker_being_replaced_is_not_worn_out_again() -> None:
    worker = dataclasses.replace(ready_worker(), replaced_by=9)
    reading = Reading(requests=5000, max_requests=1000)
    assert judge(worker, reading, Settings(), now=150.0) is None


def test_each_worker_draws_its_own_jitter_within_the_bounds() -> None:
    settings = Settings(
        max_requests=200,
        max_requests_jitter=50,
        max_worker_lifetime=60.0,
        max_worker_lifetime_jitter=30.0,
    )
    monitor = VitalsMonitor(settings, dict, dict, lambda _: None)
    drawn = [monitor._limits() for _ in range(300)]
    assert {reading.max_requests for reading in drawn} <= set(range(200, 251))
    assert len({reading.max_requests for reading in drawn}) > 10
    assert all(60.0 <= reading.max_lifetime <= 90.0 for reading in drawn)


def test_the_page_carries_beats_and_requests_and_refuses_to_shrink() -> None:
    supervisor = VitalsPage.create()
    try:
        worker = VitalsPage.attach(os.dup(supervisor.fd))
        try:
            assert (supervisor.last_beat_ns, supervisor.requests) == (0, 0)
            worker.beat()
            worker.set_requests(2**64 + 5)  # wraps, as a counter would
            assert supervisor.last_beat_ns > 0
            assert supervisor.requests == 5
            with pytest.raises(PermissionError):
                os.ftruncate(worker.fd, 0)
            assert os.fstat(supervisor.fd).st_size == PAGE
        finally:
            worker.close()
    finally:
        supervisor.close()


def test_the_memory_of_a_process_is_read_and_a_missing_one_is_none() -> None:
    rss = resident_memory(os.getpid())
    uss = unique_memory(os.getpid())
    assert rss is not None
    assert uss is not None
    assert 0 < uss <= rss
    assert resident_memory(2**22 + 12345) is None
    assert unique_memory(2**22 + 12345) is None


@dataclasses.dataclass
class PagedProcess:
    """What the monitor reads of a worker process: its PID and its page."""

    pid: int
    vitals: VitalsPage | None


def test_a_hang_report_dropped_by_the_machine_is_made_again_once_it_beats_and_stops() -> None:
    # reported while parked, say, and resumed before the machine handled it: the
    # report is dropped, and a later hang must be reported all the same
    page = VitalsPage.create()
    try:
        sent: list[object] = []
        worker = ready_worker(ready_at=0.0)
        monitor = VitalsMonitor(
            Settings(timeout=2.0),
            lambda: {7: PagedProcess(os.getpid(), page)},  # type: ignore[dict-item]
            lambda: {7: worker},
            sent.append,
        )
        page.beat()
        now = time.monotonic()
        monitor.tick(now + 3.0)  # (judged as of 3 s later: the beat is old by then)
        assert sent == []  # the page's own clock says it beat just now
        page._map[0:8] = (time.monotonic_ns() - 5 * 10**9).to_bytes(8, "little")
        monitor.tick(now + 3.0)
        assert [type(event) for event in sent] == [WorkerHung]
        monitor.tick(now + 3.1)
        assert len(sent) == 1  # once
        page.beat()
        monitor.tick(now + 3.2)  # it beats again, and the machine never marked it
        page._map[0:8] = (time.monotonic_ns() - 5 * 10**9).to_bytes(8, "little")
        monitor.tick(now + 3.3)
        assert [type(event) for event in sent] == [WorkerHung, WorkerHung]
    finally:
        page.close()


def test_a_closed_page_reads_as_nothing_whatever_its_number_became() -> None:
    page = VitalsPage.create()
    page.close()
    page.close()  # (twice is harmless)
    assert (page.last_beat_ns, page.requests, page.dump()) == (0, 0, "")


def test_answers_counted_in_a_worker_s_page_are_read_whole_by_the_supervisor() -> None:
    supervisor = VitalsPage.create()
    try:
        worker_side = VitalsPage.attach(os.dup(supervisor.fd))
        context = Context(
            listeners=[],
            generation=1,
            worker_id=0,
            control=None,  # type: ignore[arg-type]  # (not used by the counting)
            shutdown=ShutdownRequest(5.0),
            vitals=worker_side,
        )
        try:
            context.count_http_answer(200, 0.001)
            context.count_http_answer(503, 0.3)
            context.count_http_answer(None, 2.0)
            context.count_answer(ok=True, seconds=0.02)
            # what a caller may pass is clamped, never raised on in its thread
            for odd in (float("nan"), float("inf"), -1.0, 10**400):
                context.count_answer(ok=False, seconds=odd)
            answers = supervisor.answers()
            assert answers.by_outcome() == {"2xx": 2, "3xx": 0, "4xx": 0, "5xx": 1, "failed": 5}
            assert answers.total == sum(answers.buckets) == 8
            assert answers.buckets[-1] == 2  # inf and 10**400: above the last bound
        finally:
            worker_side.close()
        # once the worker's side is gone, the supervisor still reads its last words
        assert supervisor.answers().total == 8
    finally:
        supervisor.close()
    assert supervisor.answers().total == 0
