"""Recycling workers under load, and what the heartbeat costs: graceful against its peers.

Two measurements, side by side in one run (these machines are noisy):

1. **The heartbeat's cost.** ``graceful serve`` with 2 workers, heartbeats on (the
   default ``--timeout 30``) and off (``--timeout 0``), in alternating rounds of
   ``wrk`` with keep-alive: requests per second, and the ratio of the medians.
2. **Recycling.** Each contender recycles its 2 workers while ``wrk`` runs, with
   keep-alive and with ``Connection: close``: graceful ``--max-requests``,
   gunicorn ``--max-requests`` (UvicornWorker), uvicorn ``--workers 2
   --limit-max-requests``, and Granian ``--workers-lifetime`` at its minimum (60 s;
   it has no request limit). Recycles are counted as the worker PIDs that came and
   went (graceful's from its own counter: its warm standby is a process too), and
   each row gives the failed requests per recycle and the p99 latency.

Usage: ``python benchmarks/recycling.py [--seconds 20] [--granian-seconds 130]``
(needs wrk, gunicorn and granian: ``nox -s bench`` installs them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import wrk
from contenders import stop_group, wait_answering

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
APPS = Path(__file__).resolve().parent / "apps"

MAX_REQUESTS = 2000
JITTER = 200


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def launched(command: list[str], workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` started in ``workdir`` as a process group of its own, with the
    benchmark's apps on its path; SIGTERM to the group at the end (SIGKILL if it
    outlives the grace)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(workdir)]))
    process = subprocess.Popen(
        command,
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        stop_group(process)


@dataclass
class Contender:
    name: str
    command: list[str]
    #: a graceful service: its recycles come from its status (else: worker PIDs)
    pid_file: Path | None = None


def contenders(port: int, workdir: Path, lifetime: int) -> list[Contender]:
    limit = [str(MAX_REQUESTS)]
    jitter = [str(JITTER)]
    pid_file = workdir / "graceful.pid"
    return [
        Contender(
            "graceful serve --max-requests",
            [str(BIN / "graceful"), "serve", "bench_app:app", "--listen", f"127.0.0.1:{port}",
             "--workers", "2", "--no-access-log", "--max-requests", *limit,
             "--max-requests-jitter", *jitter, "--pid-file", str(pid_file)],
            pid_file,
        ),
        Contender(
            "gunicorn --max-requests (UvicornWorker)",
            [str(BIN / "gunicorn"), "bench_app:app", "-k", "uvicorn.workers.UvicornWorker",
             "-b", f"127.0.0.1:{port}", "-w", "2", "--max-requests", *limit,
             "--max-requests-jitter", *jitter],
        ),
        Contender(
            "uvicorn --workers 2 --limit-max-requests",
            [str(BIN / "uvicorn"), "bench_app:app", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "2", "--no-access-log", "--limit-max-requests", *limit],
        ),
        Contender(
            f"granian --workers 2 --workers-lifetime {lifetime}",
            [str(BIN / "granian"), "--interface", "asgi", "--host", "127.0.0.1", "--port",
             str(port), "--workers", "2", "--workers-lifetime", str(lifetime), "bench_app:app"],
        ),
    ]  # fmt: skip


class PidWatch:
    """Every PID seen among a process's descendants, polled every 20 ms."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(self.root)
            while not self._stop.is_set():
                with contextlib.suppress(psutil.Error):
                    for child in process.children(recursive=True):
                        with contextlib.suppress(psutil.Error):
                            if "resource_tracker" not in " ".join(child.cmdline()):
                                self.seen.add(child.pid)
                time.sleep(0.02)

    def __enter__(self) -> PidWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)


def graceful_recycles(pid_file: Path) -> int:
    shown = subprocess.run(
        [str(BIN / "graceful"), "status", "--json", "--pid-file", str(pid_file)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return int(sum(json.loads(shown)["counters"]["recycles"].values()))


def recycle_row(
    contender: Contender, port: int, workdir: Path, seconds: float, *, keep_alive: bool
) -> dict[str, object]:
    with launched(contender.command, workdir) as process:
        wait_answering(port)
        time.sleep(1.0)  # workers settled (gunicorn and uvicorn start theirs one by one)
        before = graceful_recycles(contender.pid_file) if contender.pid_file else 0
        with PidWatch(process.pid) as watch:
            time.sleep(0.2)
            initial = set(watch.seen)
            load = wrk.start(f"http://127.0.0.1:{port}/", seconds, keep_alive=keep_alive)
            result = wrk.finish(load, seconds + 60)
        if contender.pid_file is not None:
            recycles = graceful_recycles(contender.pid_file) - before
        else:
            recycles = len(watch.seen - initial)
    return {
        "contender": contender.name,
        "keep_alive": keep_alive,
        "recycles": recycles,
        "requests": result.requests,
        "failed": result.failed,
        "failed_per_recycle": round(result.failed / recycles, 2) if recycles else None,
        "p99_ms": result.p99_ms,
        "max_ms": result.max_ms,
        "requests_per_s": result.requests_per_s,
    }


def on_and_off(
    workdir: Path, rounds: int, seconds: float, on: list[str], off: list[str]
) -> dict[str, Any]:
    """Requests per second of ``graceful serve --workers 2`` with the flags ``on`` and
    ``off``, in alternating rounds of wrk with keep-alive; the medians and their
    ratio."""
    figures: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(rounds):
        for label, flags in (("on", on), ("off", off)):
            port = free_port()
            command = [str(BIN / "graceful"), "serve", "bench_app:app", "--listen",
                       f"127.0.0.1:{port}", "--workers", "2", "--no-access-log", *flags]  # fmt: skip
            with launched(command, workdir):
                wait_answering(port)
                time.sleep(0.5)
                load = wrk.start(f"http://127.0.0.1:{port}/", seconds)
                figures[label].append(wrk.finish(load, seconds + 60).requests_per_s)
    median_on, median_off = statistics.median(figures["on"]), statistics.median(figures["off"])
    return {
        "rounds": figures,
        "median_on": median_on,
        "median_off": median_off,
        "ratio": round(median_on / median_off, 3),
    }


def heartbeat_cost(workdir: Path, rounds: int, seconds: float) -> dict[str, Any]:
    """Requests per second with heartbeats on and off, in alternating rounds."""
    return on_and_off(workdir, rounds, seconds, ["--timeout", "30"], ["--timeout", "0"])


def markdown(results: dict[str, Any], seconds: float, granian_seconds: float) -> str:
    """The results as the table ``docs/benchmarks.md`` includes."""
    cost = results["heartbeat"]
    lines = [
        f"Heartbeat on (`--timeout 30`) against off (`--timeout 0`), `graceful serve "
        f"--workers 2`, wrk keep-alive, {len(cost['rounds']['on'])} alternating rounds of "
        f"10 s: {cost['median_on']:,.0f} against {cost['median_off']:,.0f} requests/s at "
        f"the median, a ratio of **{cost['ratio']}** (rounds on: "
        f"{', '.join(f'{x:,.0f}' for x in cost['rounds']['on'])}; off: "
        f"{', '.join(f'{x:,.0f}' for x in cost['rounds']['off'])}).",
        "",
        f"Recycling 2 workers under wrk (`-t2 -c50`), {seconds:g} s per row "
        f"({granian_seconds:g} s for Granian), `--max-requests {MAX_REQUESTS}` "
        f"with a jitter of {JITTER} where the contender has one:",
        "",
        "| contender | connections | recycles | requests | failed | failed per recycle "
        "| p99 ms | max ms |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in results["recycling"]:
        per = row["failed_per_recycle"]
        lines.append(
            f"| {row['contender']} | {'keep-alive' if row['keep_alive'] else 'close'} "
            f"| {row['recycles']} | {row['requests']:,} | {row['failed']:,} "
            f"| {'-' if per is None else per} | {row['p99_ms']:.1f} | {row['max_ms']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="wrk time per row")
    parser.add_argument("--granian-seconds", type=float, default=130.0,
                        help="wrk time for Granian, whose lifetime is at least 60 s")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3, help="heartbeat rounds")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument(
        "--markdown",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "recycling.md",
        help="where the table goes (default: benchmarks/results/recycling.md)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("benchmarks/recycling.py needs wrk (apt-get install wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="graceful-recycling-"))
    for app in APPS.iterdir():
        if app.suffix == ".py":
            shutil.copy(app, workdir / app.name)
    results: dict[str, object] = {}
    cost = heartbeat_cost(workdir, args.rounds, 10.0)
    results["heartbeat"] = cost
    print(f"heartbeat on/off, requests/s medians: {cost['median_on']:.0f} / "
          f"{cost['median_off']:.0f} = {cost['ratio']}  (rounds: {cost['rounds']})", flush=True)  # fmt: skip
    rows = []
    print(f"{'contender':46} {'conn':10} {'recycles':>8} {'requests':>9} {'failed':>7} "
          f"{'per recycle':>11} {'p99 ms':>8} {'max ms':>8}", flush=True)  # fmt: skip
    for keep_alive in (True, False):
        for contender in contenders(0, workdir, 60):
            port = free_port()
            (current,) = [c for c in contenders(port, workdir, 60) if c.name == contender.name]
            seconds = args.granian_seconds if "granian" in current.name else args.seconds
            row = recycle_row(current, port, workdir, seconds, keep_alive=keep_alive)
            rows.append(row)
            per = row["failed_per_recycle"]
            print(f"{current.name:46} {'keep-alive' if keep_alive else 'close':10} "
                  f"{row['recycles']:>8} {row['requests']:>9} {row['failed']:>7} "
                  f"{'-' if per is None else per:>11} {row['p99_ms']:>8.1f} {row['max_ms']:>8.1f}",
                  flush=True)  # fmt: skip
    results["recycling"] = rows
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.markdown.write_text(markdown(results, args.seconds, args.granian_seconds))
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
