"""Many workers per host, with real supervisors, real workers and real load: rolling
reloads under a surge cap, never a mixed fleet, and live scaling.

Which processes hold the listening socket is read from ``/proc/PID/fd`` (the
socket's inode) by a sampler thread while the load runs. The supervisor, which
binds the listeners, is not counted: the cap is on workers.
"""

from __future__ import annotations

import collections
import signal
import threading
from pathlib import Path

import pytest
from echo_load import Load
from harness import ServiceProcess, graceful_cli, graceful_serve, hup, poll_until, running
from http_load import HttpLoad
from services import minimal_asgi_app, pid_service, service_source, wait_for_file, write_service

from graceful import Control
from graceful.testing import holds_socket, listening_socket


class ListenerHolders:
    """Samples, in a thread, how many processes of a service (the supervisor left
    out) hold its listening TCP socket, until stopped."""

    def __init__(self, svc: ServiceProcess) -> None:
        self.svc = svc
        self.target = listening_socket(svc.pid, int(svc.address().rpartition(":")[2]))
        self.most = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> set[int]:
        return {
            pid
            for pid in self.svc.processes()
            if pid != self.svc.pid and holds_socket(pid, self.target)
        }

    def sample(self) -> int:
        """How many hold it now, counted as a sample (the thread samples, and so
        does a test that waits for a count: a peak it saw is a peak)."""
        holding = len(self.now())
        self.most = max(self.most, holding)
        self.samples += 1
        return holding

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()

    def __enter__(self) -> ListenerHolders:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)


def more_answers(load: Load, more: int) -> collections.Counter[str]:
    """Wait for ``more`` answers from now on; the prefixes of those answers."""
    before = collections.Counter(load.tally.prefixes)
    poll_until(lambda: load.tally.ok >= sum(before.values()) + more, 30, f"{more} more answers")
    return collections.Counter(load.tally.prefixes) - before


def env(**more: str) -> dict[str, str]:
    return {
        "LISTEN": "127.0.0.1:0",
        "WORKERS": "4",
        "DRAIN_TIMEOUT": "5",
        "PROBATION": "0",
        **more,
    }


def only_generation(svc: ServiceProcess, pid_file: Path, number: int, workers: int) -> bool:
    status = Control(pid_file).status()
    generations = status["generations"]
    if [g["generation"] for g in generations] != [number]:
        return False
    states = collections.Counter(w["state"] for w in generations[0]["workers"])
    return states["ready"] == workers and set(states) <= {"ready", "draining"}


@pytest.mark.parametrize(("strategy", "cap"), [("rolling", 5), ("all-at-once", 8)])
def test_a_rolling_reload_of_four_workers_keeps_at_most_five_on_the_listener(
    tmp_path: Path, strategy: str, cap: int
) -> None:
    gate = tmp_path / "gate"
    script = write_service(tmp_path / "svc.py", prefix="v1")
    with running(script, env=env(STRATEGY=strategy, MAX_SURGE="1")) as svc:
        svc.wait_serving(1)
        with Load(svc.address(), clients=16) as load, ListenerHolders(svc) as holders:
            more_answers(load, 200)
            # the new workers wait at the gate, holding the listeners, until the
            # sampler has seen them: the peak is reached, not hoped for
            script.write_text(service_source(prefix="v2", before_serve=wait_for_file(gate)))
            mark = hup(svc)
            poll_until(lambda: holders.sample() == cap, 30, f"{cap} listener holders")
            gate.touch()
            svc.wait_serving(2, after=mark)
            # the old workers finish their keep-alive connections, then exit
            poll_until(lambda: len(svc.worker_pids()) == 4, 30, "the old workers gone")
            answers = more_answers(load, 300)
        assert set(answers) == {"v2: "}, answers
        assert load.tally.failed == 0, load.tally.as_dict()
        assert holders.samples > 10
        # the cap holds at every sample, and it is reached
        assert holders.most == cap, (holders.most, svc.output)
        if strategy == "rolling":
            assert svc.output.count("rolling: 1 at a time") == 1


@pytest.mark.parametrize("preload", ["0", "1"])
def test_a_new_version_failing_in_one_slot_leaves_every_answer_on_the_old_code(
    tmp_path: Path, preload: str
) -> None:
    script, pid_file = pid_service(tmp_path, prefix="old")
    with running(script, env=env(STRATEGY="rolling", PRELOAD=preload)) as svc:
        svc.wait_serving(1)
        old = sorted(svc.worker_pids())
        with Load(svc.address(), clients=16) as load:
            more_answers(load, 200)
            # worker 2 of the new code cannot start; 0 and 1 start and serve first
            broken = "    if ctx.worker_id == 2:\n        raise RuntimeError('slot 2 is broken')\n"
            script.write_text(service_source(prefix="new", before_serve=broken, pid_file=pid_file))
            mark = hup(svc)
            svc.wait_for(r"generation 2 worker 1 is ready|reload failed", after=mark)
            svc.wait_for(r"reload failed: generation 2: worker 2.*slot 2 is broken", after=mark)
            if preload == "0":
                svc.wait_for(r"resuming 2 parked worker\(s\) of generation 1", after=mark)
            poll_until(
                lambda: only_generation(svc, pid_file, 1, 4), 30, "generation 1 alone, all ready"
            )
            poll_until(lambda: len(svc.worker_pids()) == 4 + int(preload), 30, "no new worker")
            answers = more_answers(load, 400)
        assert set(answers) == {"old: "}, answers
        assert load.tally.failed == 0, load.tally.as_dict()
        if preload == "0":
            assert sorted(svc.worker_pids()) == old  # resumed, not respawned
        else:
            # the replaced two drained; the old template forked the old code again
            assert len(set(svc.worker_pids()) - set(old)) == 2


def test_sigttin_and_sigttou_add_and_remove_one_worker_and_lose_nothing(tmp_path: Path) -> None:
    script, pid_file = pid_service(tmp_path, prefix="v1")
    with running(script, env=env(WORKERS="2")) as svc:
        svc.wait_serving(1)
        with Load(svc.address(), clients=16) as load:
            more_answers(load, 200)
            svc.send(signal.SIGTTIN)
            poll_until(lambda: only_generation(svc, pid_file, 1, 3), 30, "3 workers ready")
            more_answers(load, 200)
            # (two of one signal sent at once may arrive as one: the kernel does not
            # queue them; wait for each)
            for workers in (2, 1):
                mark = svc.mark()
                svc.send(signal.SIGTTOU)
                svc.wait_for(rf"scaling from {workers + 1} to {workers} workers", after=mark)
            poll_until(lambda: only_generation(svc, pid_file, 1, 1), 30, "1 worker ready")
            poll_until(lambda: len(svc.worker_pids()) == 1, 30, "the drained workers gone")
            more_answers(load, 200)
            svc.send(signal.SIGTTOU)  # not below one
            svc.wait_for(r"scaling requested by SIGTTOU refused: 0 workers: at least 1")
            more_answers(load, 100)
        assert load.tally.failed == 0, load.tally.as_dict()
        status = Control(pid_file).status()
        assert status["workers"] == 1
        # a worker added from the code on disk may run newer code than its siblings
        assert status["generations"][0]["may_be_mixed"] is True


def test_graceful_scale_waits_for_the_workers_and_refuses_zero(tmp_path: Path) -> None:
    script, pid_file = pid_service(tmp_path, prefix="v1")
    with running(script, env=env(WORKERS="1")) as svc:
        svc.wait_serving(1)
        poll_until(pid_file.exists, 10, "the PID file")
        done = graceful_cli("scale", "3", "--pid-file", str(pid_file), "--wait", "--timeout", "30")
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == ["scaling from 1 to 3 workers", "3 workers ready"]
        assert len(svc.worker_pids()) == 3
        refused = graceful_cli("scale", "0", "--pid-file", str(pid_file))
        assert refused.returncode == 2
        assert "'0' must be a whole number of at least 1" in refused.stderr
        same = graceful_cli("scale", "3", "--pid-file", str(pid_file))
        assert same.stdout.strip() == "already 3 workers"
        shown = graceful_cli("status", "--pid-file", str(pid_file))
        assert "workers: 3 per generation; reloads all-at-once" in shown.stdout
        assert "the fleet may be mixed" in shown.stdout


def test_graceful_scale_wait_ends_with_the_cause_when_the_added_workers_crash(
    tmp_path: Path,
) -> None:
    """The code on disk now fails at import: the workers a scale-up adds crash, and
    ``scale --wait`` says why and exits 1 (it waited for ever)."""
    script, pid_file = pid_service(tmp_path, prefix="v1")
    with running(script, env=env(WORKERS="1")) as svc:
        svc.wait_serving(1)
        poll_until(pid_file.exists, 10, "the PID file")
        script.write_text(
            "raise RuntimeError('the database is gone')\n"
            + service_source(prefix="v2", pid_file=pid_file)
        )
        done = graceful_cli("scale", "3", "--pid-file", str(pid_file), "--wait")
        assert done.returncode == 1, done
        [line] = done.stderr.splitlines()
        assert "RuntimeError: the database is gone" in line, line
        assert "the scaling goes on" in line
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


@pytest.mark.parametrize("preload", [[], ["--preload"]])
def test_graceful_serve_rolls_three_uvicorn_workers_under_keep_alive_load(
    tmp_path: Path, preload: list[str]
) -> None:
    app = tmp_path / "app.py"
    app.write_text(minimal_asgi_app("v1"))
    options = [
        "--workers",
        "3",
        "--strategy",
        "rolling",
        "--probation",
        "0",
        "--drain-timeout",
        "5",
    ]
    with graceful_serve(app, *options, *preload, env={"PYTHONDONTWRITEBYTECODE": "1"}) as svc:
        svc.wait_serving(1)
        with HttpLoad(f"http://{svc.address()}/", clients=12) as load:
            poll_until(lambda: load.tally.ok > 300, 20, "answers")
            for generation, message in ((2, "v2"), (3, "v3")):
                app.write_text(minimal_asgi_app(message))
                mark = hup(svc)
                svc.wait_for(r"rolling: 1 at a time", after=mark)
                svc.wait_serving(generation, after=mark)
                load.wait_for_body(message)
            poll_until(lambda: len(svc.worker_pids()) == 3 + len(preload), 30, "old ones gone")
            before = collections.Counter(load.tally.bodies)
            poll_until(lambda: load.tally.ok > sum(before.values()) + 300, 20, "more answers")
            after = collections.Counter(load.tally.bodies) - before
        assert load.tally.failures == {}, load.tally.failures
        assert set(after) == {"v3"}, after
