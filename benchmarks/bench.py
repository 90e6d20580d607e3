"""graceful against its peers, side by side, in one run: ``nox -s bench``.

    python benchmarks/bench.py [--quick] [--only SCENARIO ...]

Scenarios (each bounded; the whole run takes about 12 minutes on 2 cores, or
about 4 with ``--quick``):

1. ``restarts``: the same app under ``wrk -t2 -c50``, with keep-alive and with
   ``Connection: close``, with 20 restarts for every contender.
2. ``slow_start``: the same with an app that takes 3 s to start.
3. ``reload_latency``: from SIGHUP to the first answer from the new code, next to
   a bare spawn that imports the same app.
4. ``overhead``: throughput against plain uvicorn (paired runs), and the
   supervisor's memory and CPU time while idle.
5. ``scale``: reload time against listeners, workers, and idle keep-alive
   connections held by the draining generation; the supervisor's fds and memory
   across 1,000 reloads.

Results go to ``benchmarks/results/``: ``results.json`` (raw, for comparison with
a later run), ``results.md`` (the tables), and PNG plots.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import multiprocess
import psutil

from graceful.testing import ServiceProcess, is_alive, poll_until, running, zombie_children

sys.path.insert(0, str(Path(__file__).resolve().parent))

import contenders
import wrk

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def fresh_workdir() -> Path:
    workdir = Path(tempfile.mkdtemp(prefix="graceful-bench-"))
    for app in (HERE / "apps").glob("*.py"):
        shutil.copy(app, workdir / app.name)
    return workdir


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- scenarios 1 and 2: restarts under load ----------------------------------------------


def restarts_under_load(
    kind: type[contenders.Contender],
    *,
    keep_alive: bool,
    restarts: int,
    interval: float,
    slow_start: float = 0.0,
) -> dict[str, Any]:
    workdir = fresh_workdir()
    contender = kind(workdir, slow_start=slow_start)
    port = free_port()
    try:
        contender.start(port)
        seconds = restarts * interval + interval
        load = wrk.start(f"http://127.0.0.1:{port}/", seconds, keep_alive=keep_alive)
        started = time.monotonic()
        for n in range(restarts):
            time.sleep(max(0.0, started + interval * (n + 0.5) - time.monotonic()))
            contender.restart()
        result = wrk.finish(load, seconds + 120)
    finally:
        contender.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    row = result.as_dict()
    row.update(contender=kind.name, keep_alive=keep_alive, restarts=restarts)
    row["errors_per_restart"] = round(result.failed / restarts, 2)
    return row


# -- scenario 3: reload latency ------------------------------------------------------------


def _import_app_and_report(conn: Any, workdir: str) -> None:
    sys.path.insert(0, workdir)
    import bench_app  # noqa: F401
    import uvicorn  # noqa: F401

    conn.send("ready")


def bare_spawn_times(workdir: Path, n: int) -> list[float]:
    ctx = multiprocess.get_context("spawn")
    times = []
    for _ in range(n):
        parent, child = ctx.Pipe()
        started = time.perf_counter()
        process = ctx.Process(target=_import_app_and_report, args=(child, str(workdir)))
        process.start()
        if not parent.poll(60):
            process.kill()
            raise RuntimeError("a bare spawn did not report within 60 s")
        parent.recv()
        times.append(time.perf_counter() - started)
        process.join()
        process.close()
        parent.close()
        child.close()
    return times


def reload_latency(reloads: int) -> dict[str, Any]:
    workdir = fresh_workdir()
    contender = contenders.GracefulUvicorn(workdir)
    port = free_port()
    app = workdir / "bench_app.py"
    source = app.read_text()
    first_answer = []
    try:
        contender.start(port)
        for n in range(1, reloads + 1):
            version = f"v{n:04d}"
            app.write_text(source.replace('VERSION = "v0000"', f'VERSION = "{version}"'))
            started = time.monotonic()
            contender.restart()
            # polled back to back (interval=0): the figure is the latency itself
            poll_until(
                lambda: version.encode() in _get(port),  # noqa: B023 (called at once)
                60,
                f"the answer from {version}",
                interval=0,
            )
            first_answer.append(time.monotonic() - started)
            time.sleep(0.3)  # let the old generation finish before the next reload
    finally:
        contender.stop()
    bare = bare_spawn_times(workdir, reloads)
    shutil.rmtree(workdir, ignore_errors=True)
    return {
        "reload_ms": _summary(first_answer),
        "bare_spawn_ms": _summary(bare),
        "graceful_share_ms": round(
            (statistics.median(first_answer) - statistics.median(bare)) * 1000, 1
        ),
    }


def _get(port: int) -> bytes:
    """One answer on a new connection, as far as it arrived within 2 s; b"" if the
    connection failed."""
    try:
        with socket.create_connection(("127.0.0.1", port), 2) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            data = b""
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline and (chunk := s.recv(4096)):
                data += chunk
            return data
    except OSError:
        return b""


def _summary(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        "median": round(statistics.median(ordered) * 1000, 1),
        "p90": round(ordered[min(len(ordered) - 1, math.ceil(len(ordered) * 0.9) - 1)] * 1000, 1),
        "n": len(ordered),
    }


# -- scenario 4: steady-state overhead ------------------------------------------------------


class PlainUvicorn(contenders.NaiveUvicorn):
    name = "plain uvicorn"


def overhead(pairs: int, seconds: float, idle_seconds: float) -> dict[str, Any]:
    ratios = []
    runs = []
    for _ in range(pairs):
        rps = {}
        for kind in (contenders.GracefulUvicorn, PlainUvicorn):
            rps[kind.name] = requests_per_s(kind, seconds)
        runs.append(rps)
        ratios.append(rps[contenders.GracefulUvicorn.name] / rps[PlainUvicorn.name])
    two_workers = throughput_side_by_side(contenders.TWO_WORKERS, pairs, seconds)
    workdir = fresh_workdir()
    contender = contenders.GracefulUvicorn(workdir)
    try:
        contender.start(free_port())
        assert contender.process is not None
        pid = contender.process.pid
        before = _cpu_seconds(pid)
        time.sleep(idle_seconds)
        cpu = _cpu_seconds(pid) - before
        rss = _rss_kib(pid)
    finally:
        contender.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "throughput_ratio_median": round(statistics.median(ratios), 3),
        "throughput_ratios": [round(r, 3) for r in ratios],
        "runs_requests_per_s": runs,
        "two_workers": two_workers,
        "supervisor_idle_seconds": idle_seconds,
        "supervisor_idle_cpu_s": round(cpu, 3),
        "supervisor_rss_kib": rss,
    }


def requests_per_s(kind: type[contenders.Contender], seconds: float) -> float:
    """Start ``kind`` in a fresh directory, load it with wrk for ``seconds`` (no
    reloads), stop it; its requests per second."""
    workdir = fresh_workdir()
    contender = kind(workdir)
    port = free_port()
    try:
        contender.start(port)
        return wrk.finish(
            wrk.start(f"http://127.0.0.1:{port}/", seconds), seconds + 60
        ).requests_per_s
    finally:
        contender.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def throughput_side_by_side(
    kinds: list[type[contenders.Contender]], rounds: int, seconds: float
) -> dict[str, Any]:
    """Requests per second of each of ``kinds``, one after the other in each round,
    and each one's median ratio to the first kind's in the same round."""
    runs: list[dict[str, float]] = []
    for _ in range(rounds):
        rps = {}
        for kind in kinds:
            rps[kind.name] = requests_per_s(kind, seconds)
        runs.append(rps)
    first = kinds[0].name
    ratios = {
        kind.name: round(statistics.median(run[kind.name] / run[first] for run in runs), 3)
        for kind in kinds
    }
    return {"runs_requests_per_s": runs, "median_ratio_to_first": ratios}


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` (not of its children)."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _rss_kib(pid: int) -> int:
    rss: int = psutil.Process(pid).memory_info().rss
    return rss // 1024


def _fd_count(pid: int) -> int:
    fds: int = psutil.Process(pid).num_fds()
    return fds


# -- scenario 5: scale -------------------------------------------------------------------------

#: Seconds to wait for a generation to serve (1,000 listeners, 8 workers).
STARTUP_WAIT = 120.0


@contextlib.contextmanager
def logged_supervisor(
    env: dict[str, str], serve_args: list[str] | None = None
) -> Iterator[ServiceProcess]:
    """The raw service (or ``graceful SERVE_ARGS``) as a supervisor whose log lines the
    benchmark reads, in a fresh copy of the apps; killed with all its processes on
    the way out."""
    workdir = fresh_workdir()
    try:
        with running(
            workdir / "raw_http_service.py",
            env=env,
            module="graceful" if serve_args else None,
            args=serve_args,
            cwd=workdir,
        ) as supervisor:
            supervisor.wait_serving(1, timeout=STARTUP_WAIT)
            yield supervisor
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def reload(supervisor: ServiceProcess, generation: int) -> float:
    """SIGHUP, then the seconds the supervisor reports ``generation`` took to be ready."""
    mark = supervisor.mark()
    supervisor.send(signal.SIGHUP)
    took = supervisor.wait_for(
        rf"generation {generation} is serving \(ready in ([\d.]+)s\)",
        after=mark,
        timeout=STARTUP_WAIT,
    )
    return float(took.group(1))


def reload_times(env: dict[str, str], reloads: int) -> dict[str, float]:
    with logged_supervisor(env) as supervisor:
        took = [reload(supervisor, generation) for generation in range(2, reloads + 2)]
    return _summary(took)


def scale_listeners(counts: list[int], reloads: int) -> list[dict[str, Any]]:
    return [
        {"listeners": n, **reload_times({"LISTEN": ",".join(["127.0.0.1:0"] * n)}, reloads)}
        for n in counts
    ]


def scale_workers(counts: list[int], reloads: int) -> list[dict[str, Any]]:
    return [
        {"workers": n, **reload_times({"LISTEN": "127.0.0.1:0", "WORKERS": str(n)}, reloads)}
        for n in counts
    ]


async def _open_idle(port: int, n: int) -> list[asyncio.StreamWriter]:
    writers = []
    for start in range(0, n, 500):
        batch = await asyncio.gather(
            *(asyncio.open_connection("127.0.0.1", port) for _ in range(min(500, n - start)))
        )
        for _, writer in batch:
            writer.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
        for reader, writer in batch:
            await reader.readuntil(b"hello")
            writers.append(writer)
    return writers


def scale_idle_connections(counts: list[int]) -> list[dict[str, Any]]:
    rows = []
    for n in counts:
        port = free_port()
        serve = ["serve", "bench_app:app", "--listen", f"127.0.0.1:{port}", "--no-access-log"]
        loop = asyncio.new_event_loop()
        try:
            with logged_supervisor({}, serve) as supervisor:
                writers = loop.run_until_complete(asyncio.wait_for(_open_idle(port, n), 120))
                old = supervisor.worker_pids()
                started = time.monotonic()
                took = reload(supervisor, 2)
                poll_until(
                    lambda: not any(is_alive(pid) for pid in old),  # noqa: B023 (called at once)
                    120,
                    f"the old generation to exit with {n} idle connections",
                )
                drained = time.monotonic() - started
                for writer in writers:
                    writer.close()
        finally:
            loop.close()
        rows.append({"idle_connections": n, "reload_ms": round(took * 1000, 1),
                     "old_generation_gone_after_ms": round(drained * 1000, 1)})  # fmt: skip
    return rows


def many_reloads(total: int, every: int) -> list[dict[str, Any]]:
    samples = []
    with logged_supervisor({"LISTEN": "127.0.0.1:0"}) as supervisor:
        pid = supervisor.pid
        samples.append({"reloads": 0, "fds": _fd_count(pid), "rss_kib": _rss_kib(pid)})
        for n in range(1, total + 1):
            reload(supervisor, n + 1)
            if n % every == 0:
                # let the previous generation finish before sampling
                poll_until(
                    lambda: len(supervisor.worker_pids()) == 1 and not zombie_children(pid),
                    10,
                    "the previous generation to exit and be reaped",
                    interval=0.02,
                )
                samples.append({"reloads": n, "fds": _fd_count(pid), "rss_kib": _rss_kib(pid)})
    return samples


# -- report ----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "?"  # psutil does not name the CPU model; /proc/cpuinfo does
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "wrk": subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
        .stdout.split("\n")[0]
        .strip(),
    }


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    out = [f"# graceful benchmarks, {m['date']}", "",
           f"{m['cpus']} CPUs ({m['cpu']}), Linux {m['kernel']}, Python {m['python']}, {m['wrk']}.", ""]  # fmt: skip
    for key, title in (
        ("restarts", "Restarts under load"),
        ("slow_start", "Restarts, app with a 3 s start-up"),
    ):
        rows = results.get(key)
        if not rows:
            continue
        out += [f"## {title}", "",
                "| contender | load | restarts | requests | connect / read / write / timeout errors | non-2xx | errors per restart | p50 ms | p99 ms | max ms |",
                "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in rows:
            load = "keep-alive" if r["keep_alive"] else "Connection: close"
            out.append(
                f"| {r['contender']} | {load} | {r['restarts']} | {r['requests']:,} | "
                f"{r['connect_errors']} / {r['read_errors']} / {r['write_errors']} / {r['timeouts']} | "
                f"{r['non_2xx']} | **{r['errors_per_restart']}** | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.1f} |"
            )
        out.append("")
    if wsgi := results.get("wsgi"):
        out += _wsgi_markdown(wsgi)
    if latency := results.get("reload_latency"):
        out += ["## Reload latency (graceful serve, uvicorn)", "",
                "| measure | median ms | p90 ms |", "|---|---|---|",
                f"| SIGHUP to the first answer from the new code | {latency['reload_ms']['median']} | {latency['reload_ms']['p90']} |",
                f"| floor: bare spawn importing the same app, ready over a Pipe | {latency['bare_spawn_ms']['median']} | {latency['bare_spawn_ms']['p90']} |",
                "", f"graceful's own share: {latency['graceful_share_ms']} ms of the median.", ""]  # fmt: skip
    if over := results.get("overhead"):
        out += ["## Steady-state overhead", "",
                f"Throughput of `graceful serve` / plain uvicorn, same app, no reloads: median **{over['throughput_ratio_median']}** "
                f"over {len(over['throughput_ratios'])} paired runs ({', '.join(map(str, over['throughput_ratios']))}).", "",
                f"Supervisor while idle for {over['supervisor_idle_seconds']:g} s: {over['supervisor_idle_cpu_s']} s of CPU, "
                f"RSS {over['supervisor_rss_kib'] / 1024:.1f} MiB.", ""]  # fmt: skip
        if two := over.get("two_workers"):
            names = list(two["median_ratio_to_first"])
            out += ["Two workers each, no reloads, the three run one after the other in each round "
                    f"(requests/s; ratio to {names[0]}, median of {len(two['runs_requests_per_s'])} rounds):", "",
                    "| " + " | ".join(["round", *names]) + " |", "|" + "---|" * (len(names) + 1)]  # fmt: skip
            for n, run in enumerate(two["runs_requests_per_s"], 1):
                out.append(
                    "| " + " | ".join([str(n), *(f"{run[name]:,.0f}" for name in names)]) + " |"
                )
            out.append(
                "| ratio | "
                + " | ".join(f"**{two['median_ratio_to_first'][name]}**" for name in names)
                + " |"
            )
            out.append("")
    if scale := results.get("scale"):
        out += ["## Scale", ""]
        for key, label in (("listeners", "listeners"), ("workers", "workers per generation")):
            out += [f"| {label} | reload median ms | p90 ms |", "|---|---|---|"]
            out += [f"| {row[key]} | {row['median']} | {row['p90']} |" for row in scale[key]]
            out.append("")
        out += [
            "| idle keep-alive connections on the old generation | reload ms | old generation gone after ms |",
            "|---|---|---|",
        ]
        out += [
            f"| {r['idle_connections']:,} | {r['reload_ms']} | {r['old_generation_gone_after_ms']} |"
            for r in scale["idle"]
        ]
        first, last = scale["many_reloads"][0], scale["many_reloads"][-1]
        out += ["", f"Supervisor across {last['reloads']:,} reloads: fds {first['fds']} -> {last['fds']}, "
                f"RSS {first['rss_kib'] / 1024:.1f} -> {last['rss_kib'] / 1024:.1f} MiB.", ""]  # fmt: skip
    out += ["![errors per restart](errors_per_restart.png)", ""]
    return "\n".join(out)


def _wsgi_markdown(wsgi: dict[str, Any]) -> list[str]:
    out = ["## WSGI: graceful against gunicorn's sync and gthread workers", "",
           "One worker each; graceful and gthread run the app in 10 threads.", "",
           "| contender | throughput ratio to graceful, hello world | with 5 ms per request |",
           "|---|---|---|"]  # fmt: skip
    for name, ratio in wsgi["hello"]["median_ratio_to_first"].items():
        out.append(f"| {name} | {ratio} | {wsgi['io_5ms']['median_ratio_to_first'][name]} |")
    out += ["", "| contender | load | restarts | requests | errors (connect / read / write / timeout) "
            "| non-2xx | errors per restart | p99 ms | max ms |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for key in ("restarts", "slow_start"):
        for r in wsgi[key]:
            load = "keep-alive" if r["keep_alive"] else "Connection: close"
            if key == "slow_start":
                load += ", 3 s start-up"
            out.append(
                f"| {r['contender']} | {load} | {r['restarts']} | {r['requests']:,} | "
                f"{r['connect_errors']} / {r['read_errors']} / {r['write_errors']} / {r['timeouts']} | "
                f"{r['non_2xx']} | **{r['errors_per_restart']}** | {r['p99_ms']:.2f} | {r['max_ms']:.1f} |"
            )
    return [*out, ""]


def plots(results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if rows := results.get("restarts"):
        names = sorted({r["contender"] for r in rows}, key=[r["contender"] for r in rows].index)
        fig, ax = plt.subplots(figsize=(10, 4.5))
        width = 0.4
        for offset, keep_alive in ((-width / 2, True), (width / 2, False)):
            values = [
                next(
                    (
                        r["errors_per_restart"]
                        for r in rows
                        if r["contender"] == n and r["keep_alive"] == keep_alive
                    ),
                    0,
                )
                for n in names
            ]
            positions = [i + offset for i in range(len(names))]
            ax.barh(positions, values, height=width,
                    label="keep-alive" if keep_alive else "Connection: close")  # fmt: skip
            for position, value in zip(positions, values, strict=True):
                ax.text(value * 1.05 + 0.05, position, f"{value:g}", va="center", fontsize=8)
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.set_xlabel("failed requests per restart (wrk -t2 -c50)")
        ax.set_xscale("symlog", linthresh=1)
        ax.legend()
        ax.set_title("Failed requests per restart: lower is better, 0 is the goal")
        fig.tight_layout()
        fig.savefig(RESULTS / "errors_per_restart.png", dpi=110)
        plt.close(fig)
    if scale := results.get("scale"):
        for key, xlabel, y, ylabel, name in (
            ("listeners", "listeners", "median", "reload ms (median)", "scale_listeners.png"),
            (
                "workers",
                "workers per generation",
                "median",
                "reload ms (median)",
                "scale_workers.png",
            ),
            (
                "idle",
                "idle keep-alive connections",
                "reload_ms",
                "reload ms",
                "scale_idle_connections.png",
            ),
        ):
            xkey = {"idle": "idle_connections"}.get(key, key)
            fig, ax = plt.subplots(figsize=(6, 4))
            ax.plot([r[xkey] for r in scale[key]], [r[y] for r in scale[key]], marker="o")
            ax.set_xscale("log" if key != "workers" else "linear")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
            fig.tight_layout()
            fig.savefig(RESULTS / name, dpi=110)
            plt.close(fig)
        samples = scale["many_reloads"]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(
            [s["reloads"] for s in samples],
            [s["fds"] for s in samples],
            marker=".",
            label="open fds",
        )
        ax.set_xlabel("reloads")
        ax.set_ylabel("supervisor open fds")
        ax.set_ylim(bottom=0)
        twin = ax.twinx()
        twin.plot(
            [s["reloads"] for s in samples],
            [s["rss_kib"] / 1024 for s in samples],
            color="tab:orange",
            marker=".",
        )
        twin.set_ylabel("supervisor RSS MiB")
        twin.set_ylim(bottom=0)
        fig.tight_layout()
        fig.savefig(RESULTS / "supervisor_across_reloads.png", dpi=110)
        plt.close(fig)


def run_scenarios(wanted: set[str], quick: bool, results: dict[str, Any]) -> None:
    """Run the ``wanted`` scenarios, storing each one's figures in ``results``."""
    if "restarts" in wanted:
        results["restarts"] = restarts_rows(contenders.ALL, quick, "restarts")
    if "slow_start" in wanted:
        results["slow_start"] = slow_start_rows(contenders.ALL, quick, "slow start")
    if "reload_latency" in wanted:
        log("reload latency")
        results["reload_latency"] = reload_latency(5 if quick else 20)
    if "overhead" in wanted:
        log("overhead")
        results["overhead"] = overhead(
            pairs=1 if quick else 3, seconds=5 if quick else 8, idle_seconds=5 if quick else 60
        )
    if "scale" in wanted:
        log("scale: listeners")
        scale = {"listeners": scale_listeners([1, 10, 100, 1000], 2 if quick else 5)}
        log("scale: workers")
        scale["workers"] = scale_workers([1, 2, 4, 8], 2 if quick else 5)
        log("scale: idle connections")
        scale["idle"] = scale_idle_connections([100, 1000] if quick else [100, 1000, 10000])
        log("scale: many reloads")
        scale["many_reloads"] = many_reloads(50 if quick else 1000, 10 if quick else 50)
        results["scale"] = scale
    if "wsgi" in wanted:
        results["wsgi"] = wsgi_scenarios(quick)


def wsgi_scenarios(quick: bool) -> dict[str, Any]:
    """The same WSGI app under graceful and gunicorn's sync and gthread workers: the
    throughput side by side (hello world, and with a 5 ms wait per request as for a
    database), restarts under load, and restarts of an app with a 3 s start-up."""
    kinds = contenders.WSGI
    rounds, seconds = (1, 3) if quick else (3, 8)
    log("wsgi: throughput, hello world")
    figures: dict[str, Any] = {"hello": throughput_side_by_side(kinds, rounds, seconds)}
    log("wsgi: throughput, 5 ms per request")
    os.environ["BENCH_IO_MS"] = "5"
    try:
        figures["io_5ms"] = throughput_side_by_side(kinds, rounds, seconds)
    finally:
        del os.environ["BENCH_IO_MS"]
    figures["restarts"] = restarts_rows(kinds, quick, "wsgi restarts")
    figures["slow_start"] = slow_start_rows(kinds, quick, "wsgi slow start")
    return figures


def restarts_rows(
    kinds: list[type[contenders.Contender]], quick: bool, label: str
) -> list[dict[str, Any]]:
    """Restarts under load of every contender in ``kinds``, on keep-alive connections
    and on a new connection per request (each logged as ``label``)."""
    rows = []
    for kind in kinds:
        for keep_alive in (True, False):
            log(f"{label}: {kind.name}, {'keep-alive' if keep_alive else 'close'}")
            rows.append(
                restarts_under_load(
                    kind, keep_alive=keep_alive, restarts=5 if quick else 20, interval=0.8
                )
            )
    return rows


def slow_start_rows(
    kinds: list[type[contenders.Contender]], quick: bool, label: str
) -> list[dict[str, Any]]:
    """Restarts under load of every contender in ``kinds`` with an app that takes 3 s
    to start (each logged as ``label``)."""
    rows = []
    for kind in kinds:
        log(f"{label}: {kind.name}")
        rows.append(
            restarts_under_load(
                kind, keep_alive=True, restarts=2 if quick else 3, interval=4.5, slow_start=3.0
            )
        )
    return rows


SCENARIOS = ("restarts", "slow_start", "reload_latency", "overhead", "scale", "wsgi")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite results.md and the plots from results.json",
    )
    parser.add_argument("--only", action="append", default=[], choices=SCENARIOS)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    if args.report_only or (args.only and (RESULTS / "results.json").exists()):
        # a partial run updates the scenarios it runs and keeps the others
        results = json.loads((RESULTS / "results.json").read_text())
    if not args.report_only:
        if shutil.which("wrk") is None:
            raise SystemExit("wrk is not installed: apt-get install wrk")
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        RESULTS.mkdir(exist_ok=True)
        results.update(machine=machine(), quick=args.quick)
        started = time.monotonic()
        run_scenarios(set(args.only) or set(SCENARIOS), args.quick, results)
        results["seconds"] = round(time.monotonic() - started, 1)
        (RESULTS / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    report = markdown(results)
    (RESULTS / "results.md").write_text(report + "\n")
    plots(results)
    print(report)
    log(f"results in {RESULTS}")


if __name__ == "__main__":
    main()
