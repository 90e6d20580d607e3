"""Reload latency: graceful's SIGHUP-to-serving time next to its floor, a bare spawn.

    python benchmarks/reload_latency.py [--reloads 20]

Measures, in one run on the same machine:

* **bare spawn**: a multiprocess spawn child that imports what the echo example
  imports (anyio, its buffered streams) and reports ready over a Pipe. This is the
  floor: no reload can be faster than starting and importing the new code. A
  second floor also starts the event loop (``anyio.run``), as any async worker must.
* **SIGHUP -> serving**: from SIGHUP to the supervisor's "generation N is serving"
  line, as logged by its own clock.
* **SIGHUP -> first new answer**: from SIGHUP to the first echo answered by the
  edited code, seen by a client that opens a new connection every millisecond or so.

It prints medians and p90s, and graceful's own share (reload minus bare spawn).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import multiprocess

ROOT = Path(__file__).resolve().parent.parent


def _bare_child(conn: object) -> None:
    import anyio
    import anyio.streams.buffered  # noqa: F401

    conn.send("ready")  # type: ignore[attr-defined]


def _bare_child_with_loop(conn: object) -> None:
    import anyio
    import anyio.streams.buffered

    async def ready() -> None:
        conn.send("ready")  # type: ignore[attr-defined]

    anyio.run(ready)


def bare_spawn_times(n: int, target: object = _bare_child) -> list[float]:
    ctx = multiprocess.get_context("spawn")
    times = []
    for _ in range(n):
        parent, child = ctx.Pipe()
        started = time.perf_counter()
        process = ctx.Process(target=target, args=(child,))
        process.start()
        parent.recv()
        times.append(time.perf_counter() - started)
        process.join()
        process.close()
        parent.close()
        child.close()
    return times


def p90(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.9) - 1)]


def reload_times(reloads: int) -> tuple[list[float], list[float]]:
    workdir = Path(tempfile.mkdtemp(prefix="graceful-bench-"))
    script = workdir / "echo.py"
    source = (ROOT / "examples" / "echo_asyncio.py").read_text()
    script.write_text(source)
    env = dict(os.environ, ECHO_LISTEN="127.0.0.1:0", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    changed = threading.Condition()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with changed:
                lines.append(line)
                changed.notify_all()

    threading.Thread(target=read, daemon=True).start()

    def wait_for(pattern: str, after: int = 0) -> re.Match[str]:
        deadline = time.monotonic() + 30
        with changed:
            while time.monotonic() < deadline:
                for line in lines[after:]:
                    if m := re.search(pattern, line):
                        return m
                changed.wait(0.1)
        raise SystemExit(f"no {pattern!r} in:\n{''.join(lines)}")

    serving: list[float] = []
    answered: list[float] = []
    try:
        wait_for("generation 1 is serving")
        host, _, port = wait_for(r"listening on (\S+)").group(1).rpartition(":")
        for generation in range(2, reloads + 2):
            prefix = f"v{generation}: ".encode()
            script.write_text(source.replace('b"echo: "', repr(prefix)))
            with changed:
                mark = len(lines)
            started = time.monotonic()
            proc.send_signal(signal.SIGHUP)
            while True:
                with socket.create_connection((host, int(port)), timeout=10) as sock:
                    sock.sendall(b"x\n")
                    if sock.recv(100).startswith(prefix):
                        answered.append(time.monotonic() - started)
                        break
            took = wait_for(rf"generation {generation} is serving \(ready in ([\d.]+)s\)", mark)
            serving.append(float(took.group(1)))
            # wait for the old generation to exit, so reloads do not overlap
            time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return serving, answered


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reloads", type=int, default=20)
    args = parser.parse_args()
    bare = bare_spawn_times(args.reloads)
    bare_loop = bare_spawn_times(args.reloads, _bare_child_with_loop)
    serving, answered = reload_times(args.reloads)
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(f"{'measure':34} {'median ms':>10} {'p90 ms':>8}")
    for name, values in (
        ("bare spawn + imports (floor)", bare),
        ("bare spawn + imports + anyio.run", bare_loop),
        ("SIGHUP -> generation serving", serving),
        ("SIGHUP -> first answer, new code", answered),
    ):
        print(f"{name:34} {statistics.median(values) * 1000:10.1f} {p90(values) * 1000:8.1f}")
    for floor_name, floor in (("bare", bare), ("bare + anyio.run", bare_loop)):
        own = statistics.median(serving) - statistics.median(floor)
        print(f"graceful's own share (median serving - median {floor_name}): {own * 1000:.1f} ms")


if __name__ == "__main__":
    main()
