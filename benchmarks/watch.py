"""Development mode: the time from a save to the new code answering, in one run.

    python benchmarks/watch.py [--saves 12]

Two services under ``--watch``: the raw asyncio echo (``graceful run``) and a
Starlette app (``graceful serve``, uvicorn). Each save is written beside the file
and renamed into place, as editors do; a client then asks on a new connection every
2 ms until the answer carries the saved version. Printed: the median and the 90th
percentile of the save-to-answer time, beside the supervisor's own reload time
(its status line's ``serving in``), so that what the watching adds shows apart.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from graceful.testing import ServiceProcess

ECHO = """\
import graceful

VERSION = {version!r}


async def echo(stream):
    await stream.receive()
    await stream.send(VERSION.encode() + b"\\n")


@graceful.service(listen=["127.0.0.1:0"], probation=0)
async def main(ctx):
    await ctx.serve(echo)
"""

STARLETTE = """\
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

VERSION = {version!r}


async def home(request):
    return PlainTextResponse(VERSION)


app = Starlette(routes=[Route("/", home)])
"""

SERVING = re.compile(r"generation (\d+) serving in ([\d.]+)s")


def ask_raw(address: tuple[str, int]) -> bytes:
    with socket.create_connection(address, timeout=2) as sock:
        sock.sendall(b"hi\n")
        return sock.recv(100).strip()


def ask_http(address: tuple[str, int]) -> bytes:
    with socket.create_connection(address, timeout=2) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        return data.split(b"\r\n\r\n", 1)[-1].strip()


def save(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def measure(
    name: str,
    *,
    svc: ServiceProcess,
    path: Path,
    source: str,
    ask: Callable[[tuple[str, int]], bytes],
    saves: int,
) -> None:
    svc.wait_serving(1, timeout=60)
    host, _, port = svc.address().rpartition(":")
    address = (host, int(port))
    answers, reloads = [], []
    for number in range(1, saves + 1):
        version = f"v{number}"
        mark = svc.mark()
        started = time.monotonic()
        save(path, source.format(version=version))
        while True:
            try:
                if ask(address) == version.encode():
                    break
            except OSError:
                pass
            time.sleep(0.002)
        answers.append(time.monotonic() - started)
        found = svc.wait_for(r"generation \d+ serving in", after=mark, timeout=30)
        took = SERVING.search(found.string)
        assert took is not None
        reloads.append(float(took.group(2)))
        time.sleep(0.3)  # let the previous generation drain before the next save
    answers_ms = sorted(a * 1000 for a in answers)
    print(
        f"| {name} | {statistics.median(answers_ms):.0f} | "
        f"{answers_ms[int(0.9 * (len(answers_ms) - 1))]:.0f} | "
        f"{statistics.median(reloads) * 1000:.0f} | {saves} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--saves", type=int, default=12)
    args = parser.parse_args()
    print(
        "| service | save to new answer, median (ms) | p90 (ms) | "
        "reload alone, median (ms) | saves |"
    )
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        svc_py = workdir / "svc.py"
        save(svc_py, ECHO.format(version="v0"))
        with ServiceProcess(
            svc_py, module="graceful", args=["run", "svc:main", "--watch"], cwd=workdir
        ) as svc:
            measure(
                "graceful run (raw asyncio echo)",
                svc=svc, path=svc_py, source=ECHO, ask=ask_raw, saves=args.saves,
            )  # fmt: skip
        app_py = workdir / "app.py"
        save(app_py, STARLETTE.format(version="v0"))
        with ServiceProcess(
            app_py,
            module="graceful",
            args=["serve", "app:app", "--watch", "--listen", "127.0.0.1:0", "--no-access-log",
                  "--probation", "0"],
            cwd=workdir,
        ) as svc:  # fmt: skip
            measure(
                "graceful serve (Starlette on uvicorn)",
                svc=svc, path=app_py, source=STARLETTE, ask=ask_http, saves=args.saves,
            )  # fmt: skip


if __name__ == "__main__":
    main()
