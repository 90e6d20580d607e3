"""HTTP reloads under wrk: graceful serve against gunicorn's uvicorn worker, in one run.

    python benchmarks/http_reload.py [--seconds 20] [--reloads 10] [--slow-start 0]

For each contender it starts the server on a fresh loopback port, runs
``wrk -t2 -c50`` (keep-alive) for ``--seconds``, and sends ``--reloads`` SIGHUPs
spread evenly over the run. Then it prints requests, socket errors, non-2xx
responses and max latency side by side. With ``--slow-start S`` the app sleeps S
seconds in its lifespan startup, as a heavy app does. ``--throughput`` also
compares ``graceful serve`` with plain ``uvicorn`` with no reloads (several
paired runs, ratio of requests per second).

Needs wrk (Debian package ``wrk``) and gunicorn (``pip install gunicorn``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

APP = """\
import time

SLOW_START = {slow_start}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                time.sleep(SLOW_START)
                await send({{"type": "lifespan.startup.complete"}})
            elif message["type"] == "lifespan.shutdown":
                await send({{"type": "lifespan.shutdown.complete"}})
                return
    body = b"hello from the app\\n"
    await send({{"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]}})
    await send({{"type": "http.response.body", "body": body}})
"""


@dataclass
class WrkResult:
    requests: int
    errors: dict[str, int]
    non_2xx: int
    max_latency: str
    rps: float

    @property
    def socket_errors(self) -> int:
        return sum(self.errors.values())


def parse_wrk(output: str) -> WrkResult:
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    if match := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    ):
        errors = dict(zip(errors, map(int, match.groups()), strict=True))
    non_2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", output)) else 0
    latency = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", output)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    return WrkResult(requests, errors, non_2xx, latency.group(1) if latency else "?", rps)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_serving(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            if s.recv(100).startswith(b"HTTP/1.1 200"):
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing answered on port {port} within {timeout}s")


def contenders(port: int) -> dict[str, list[str]]:
    """The command line of each contender, serving app:app on ``port``."""
    bindir = Path(sys.executable).parent
    return {
        "graceful serve (uvicorn)": [
            str(bindir / "graceful"), "serve", "app:app", "--listen", f"127.0.0.1:{port}",
            "--no-access-log",
        ],
        "graceful serve (hypercorn)": [
            str(bindir / "graceful"), "serve", "app:app", "--server", "hypercorn",
            "--listen", f"127.0.0.1:{port}",
        ],
        "gunicorn + UvicornWorker": [
            str(bindir / "gunicorn"), "app:app", "-k", "uvicorn.workers.UvicornWorker",
            "-b", f"127.0.0.1:{port}", "-w", "1", "--graceful-timeout", "30",
        ],
        "plain uvicorn": [
            str(bindir / "uvicorn"), "app:app", "--host", "127.0.0.1", "--port", str(port),
            "--no-access-log",
        ],
    }  # fmt: skip


def run_contender(
    name: str, command: list[str], port: int, workdir: Path, *, seconds: float, reloads: int
) -> WrkResult:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    server = subprocess.Popen(
        command,
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_serving(port)
        wrk = subprocess.Popen(
            ["wrk", "-t2", "-c50", f"-d{seconds:g}s", "--latency", f"http://127.0.0.1:{port}/"],
            stdout=subprocess.PIPE,
            text=True,
        )
        if reloads:
            interval = seconds / (reloads + 1)
            for _ in range(reloads):
                time.sleep(interval)
                server.send_signal(signal.SIGHUP)
        output, _ = wrk.communicate(timeout=seconds + 60)
        if wrk.returncode != 0:
            raise SystemExit(f"{name}: wrk failed ({wrk.returncode}): {output}")
        return parse_wrk(output)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(40)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--reloads", type=int, default=10)
    parser.add_argument("--slow-start", type=float, default=0.0)
    parser.add_argument("--only", action="append", help="run only contenders whose name has this")
    parser.add_argument("--throughput", type=int, default=0, metavar="PAIRS")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="graceful-http-"))
    (workdir / "app.py").write_text(APP.format(slow_start=args.slow_start))
    print(
        f"wrk -t2 -c50 -d{args.seconds:g}s, {args.reloads} SIGHUPs, app start-up "
        f"{args.slow_start:g}s, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    )
    print(f"{'contender':28} {'requests':>9} {'socket errors':>30} {'non-2xx':>8} {'max lat':>8}")
    for name in contenders(0):
        if name == "plain uvicorn" or (args.only and not any(w in name for w in args.only)):
            continue
        port = free_port()
        command = contenders(port)[name]
        result = run_contender(
            name, command, port, workdir, seconds=args.seconds, reloads=args.reloads
        )
        errors = " ".join(f"{k}={v}" for k, v in result.errors.items())
        print(
            f"{name:28} {result.requests:9d} {errors:>30} {result.non_2xx:8d} "
            f"{result.max_latency:>8}",
            flush=True,
        )
    if args.throughput:
        ratios = []
        for _ in range(args.throughput):
            rps = {}
            for name in ("graceful serve (uvicorn)", "plain uvicorn"):
                port = free_port()
                rps[name] = run_contender(
                    name, contenders(port)[name], port, workdir, seconds=10, reloads=0
                ).rps
            ratios.append(rps["graceful serve (uvicorn)"] / rps["plain uvicorn"])
            print(
                f"  requests/s: graceful serve {rps['graceful serve (uvicorn)']:.0f}, "
                f"plain uvicorn {rps['plain uvicorn']:.0f}",
                flush=True,
            )
        print(
            f"throughput graceful serve / plain uvicorn, no reloads: median "
            f"{statistics.median(ratios):.3f} over {len(ratios)} pairs "
            f"({', '.join(f'{r:.3f}' for r in ratios)})"
        )
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
