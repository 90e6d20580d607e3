"""Bad deploys that do not crash, and what counting every answer costs: graceful's
judged probation and canary against a peer that does not judge.

Two measurements, side by side in one run (these machines are noisy):

1. **Counting's cost.** ``graceful serve`` with 2 workers, answers counted (the
   default) and not (``--no-count-answers``), in alternating rounds of ``wrk`` with
   keep-alive: requests per second, and the ratio of the medians.
2. **A bad deploy.** 16 clients, each request on a new connection, run against a
   service; after 3 s the app on disk is replaced by code that imports fine, passes
   readiness and answers 500 to 30% of its requests, and the service reloads; the
   load runs 10 s more. Each answer's time, code version and status is recorded.
   Rows: graceful's judged probation (the defaults: 5% with 99% confidence, at
   least 100 answers), graceful's canary (``--canary 1`` beside 4 workers), and
   gunicorn's ``HUP`` reload (UvicornWorker), which nothing judges.

Usage: ``python benchmarks/verdicts.py [--rounds 3]`` (needs wrk and gunicorn:
``nox -s bench`` installs them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contenders import wait_answering
from recycling import BIN, free_port, launched, on_and_off

from graceful.control.client import Control

APP = """\
# {version} code (the two versions differ in size: an edit within the second of
# the last one must not be taken for the same file by a bytecode cache)
import itertools
import os

VERSION = {version!r}
BAD = {bad}  # answers 500 to this many of every 10 requests
FLAG = {flag!r}  # ... once this file exists, if one is named (it breaks once promoted)
answered = itertools.count()


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({{"type": "lifespan.startup.complete"}})
            else:
                await send({{"type": "lifespan.shutdown.complete"}})
                return
    bad = next(answered) % 10 < BAD and (FLAG is None or os.path.exists(FLAG))
    status = 500 if bad else 200
    await send({{"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(VERSION)).encode()),
                            (b"x-pid", str(os.getpid()).encode())]}})
    await send({{"type": "http.response.body", "body": VERSION.encode()}})
"""

CLIENTS = 16
BEFORE = 3.0
AFTER = 10.0


@dataclass
class Answers:
    """Every answer of a run: (seconds since the start, version, status)."""

    seen: list[tuple[float, str, int]] = field(default_factory=list)
    failed: int = 0


async def client(port: int, until: float, answers: Answers, began: float) -> None:
    request = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            data = await asyncio.wait_for(reader.read(), 10)
            writer.close()
        except (OSError, TimeoutError):
            answers.failed += 1
            continue
        head, _, body = data.partition(b"\r\n\r\n")
        try:
            status = int(head.split(b" ", 2)[1])
        except (IndexError, ValueError):
            answers.failed += 1
            continue
        answers.seen.append((time.monotonic() - began, body.decode(errors="replace"), status))


async def load(port: int, seconds: float, answers: Answers, began: float) -> None:
    until = time.monotonic() + seconds
    await asyncio.gather(*(client(port, until, answers, began) for _ in range(CLIENTS)))


def bad_deploy(
    name: str,
    command: list[str],
    workdir: Path,
    port: int,
    reload: Any,
    *,
    pid_file: Path | None = None,
    breaks_late: bool = False,
) -> dict[str, Any]:
    """Run the load, deploy the bad code after :data:`BEFORE` seconds, and measure.
    ``pid_file``: a graceful service's, to ask how its reload ended. With
    ``breaks_late``, the new code breaks only once its generation serves: what its
    probation judges."""
    flag = str(workdir / "failing") if breaks_late else None
    with contextlib.suppress(FileNotFoundError):
        os.unlink(workdir / "failing")
    (workdir / "verdict_app.py").write_text(APP.format(version="old", bad=0, flag=flag))
    os.utime(workdir / "verdict_app.py", (time.time() - 10, time.time() - 10))
    with launched(command, workdir) as process:
        wait_answering(port)
        time.sleep(1.0)
        answers = Answers()
        began = time.monotonic()

        async def run() -> float:
            loading = asyncio.ensure_future(load(port, BEFORE + AFTER, answers, began))
            await asyncio.sleep(BEFORE)
            new = APP.format(version="new", bad=3, flag=flag)
            (workdir / "verdict_app.py").write_text(new + "\n")
            deployed = time.monotonic() - began
            reload(process)
            if breaks_late and pid_file is not None:
                control = Control(pid_file)

                def new_serving() -> bool:
                    generations = control.status()["generations"]
                    return any(
                        g["generation"] == 2 and g["state"] == "serving" for g in generations
                    )

                while not await asyncio.to_thread(new_serving):
                    await asyncio.sleep(0.01)
                (workdir / "failing").touch()
            await loading
            return deployed

        deployed = asyncio.run(run())
        row = summary(name, answers, deployed)
        if pid_file is not None:
            last = Control(pid_file).status()["last_reload"]
            row["reload"] = f"{last['outcome']}: {last['cause']}"
            cause = last["cause"] or ""
            row["ended"] = (
                "reload failed: the canary" if cause.startswith("canary failed")
                else "reload failed: judged as it started" if cause.startswith("judged as")
                else "rolled back on probation" if last["outcome"] == "rolled back"
                else last["outcome"]
            )  # fmt: skip
    return row


def summary(name: str, answers: Answers, deployed: float) -> dict[str, Any]:
    seen = sorted(answers.seen)
    bad = [at for at, version, status in seen if version == "new" and status >= 500]
    new = [at for at, version, _ in seen if version == "new"]
    row: dict[str, Any] = {
        "contender": name,
        "answers": len(seen),
        "failed_connections": answers.failed,
        "new_code_answers": len(new),
        "bad_answers": len(bad),
        "deployed_at": round(deployed, 3),
    }
    if bad:
        first = bad[0]
        row["first_bad_at"] = round(first, 3)
        row["bad_for_s"] = round(bad[-1] - first, 3)
        # still answering bad at the end of the run: nothing took it back
        row["judged"] = seen[-1][0] - bad[-1] > 1.0
        # the old code answers everything again once the new code answers no more
        row["old_again_after_ms"] = (
            None if not row["judged"] else round((new[-1] - first) * 1000, 1)
        )
        old = [deployed] + [at for at, version, _ in seen if version == "old" and at > deployed]
        if seen[-1][0] - old[-1] > 1.0:
            row["old_silent_ms"] = None  # the old code never answered again
        else:
            # the old code's longest silence after the deploy (parked, or replaced)
            row["old_silent_ms"] = round(
                max(later - earlier for earlier, later in itertools.pairwise(old)) * 1000, 1
            )
    return row


def counting_cost(workdir: Path, rounds: int, seconds: float) -> dict[str, Any]:
    """Requests per second with answers counted and not, in alternating rounds."""
    return on_and_off(workdir, rounds, seconds, ["--count-answers"], ["--no-count-answers"])


def hup(pid_file: Path) -> Any:
    def send(_process: Any) -> None:
        os.kill(int(pid_file.read_text()), signal.SIGHUP)

    return send


def contenders(workdir: Path) -> list[tuple[str, list[str], int, Any, Path | None, bool]]:
    rows: list[tuple[str, list[str], int, Any, Path | None, bool]] = []
    for name, extra, breaks_late in (
        (
            "graceful serve --workers 2: judged as it starts (bad at once)",
            ["--workers", "2"],
            False,
        ),
        (
            "graceful serve --workers 2: judged probation (bad once promoted)",
            ["--workers", "2"],
            True,
        ),
        ("graceful serve --workers 4 --canary 1", ["--workers", "4", "--canary", "1"], False),
    ):
        port = free_port()
        pid_file = workdir / f"graceful-{port}.pid"
        command = [str(BIN / "graceful"), "serve", "verdict_app:app", "--listen",
                   f"127.0.0.1:{port}", "--no-access-log", "--pid-file", str(pid_file), *extra]  # fmt: skip
        rows.append((name, command, port, hup(pid_file), pid_file, breaks_late))
    port = free_port()
    command = [str(BIN / "gunicorn"), "verdict_app:app", "-k", "uvicorn.workers.UvicornWorker",
               "-b", f"127.0.0.1:{port}", "-w", "2"]  # fmt: skip
    rows.append(("gunicorn -w 2 (UvicornWorker), HUP", command, port,
                 lambda process: os.kill(process.pid, signal.SIGHUP), None, False))  # fmt: skip
    return rows


def markdown(results: dict[str, Any]) -> str:
    cost = results["counting"]
    lines = [
        f"Answers counted (the default) against not (`--no-count-answers`), `graceful "
        f"serve --workers 2`, wrk keep-alive, {len(cost['rounds']['on'])} alternating "
        f"rounds of 10 s: {cost['median_on']:,.0f} against {cost['median_off']:,.0f} "
        f"requests/s at the median, a ratio of **{cost['ratio']}** (rounds on: "
        f"{', '.join(f'{x:,.0f}' for x in cost['rounds']['on'])}; off: "
        f"{', '.join(f'{x:,.0f}' for x in cost['rounds']['off'])}).",
        "",
        f"A deploy of code that answers 500 to 30% of its requests, under {CLIENTS} "
        f"clients (a new connection per request), {AFTER:g} s after the deploy:",
        "",
        "| contender | answers | by the new code | bad answers | first bad answer to the last "
        "| first bad answer to the old code answering all again | the old code's longest "
        "silence | how it was taken back |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in results["deploys"]:
        window = f"{row['bad_for_s'] * 1000:,.0f} ms" if "bad_for_s" in row else "-"
        again, silent = row.get("old_again_after_ms", "-"), row.get("old_silent_ms", "-")
        lines.append(
            f"| {row['contender']} | {row['answers']:,} | {row['new_code_answers']:,} "
            f"| {row['bad_answers']:,} | {window} "
            f"| {'never' if again is None else again if again == '-' else f'{again:,.1f} ms'} "
            f"| {'-' if silent in (None, '-') else f'{silent:,.1f} ms'} "
            f"| {row.get('ended') or ('-' if row.get('judged') else 'never: until a person acts')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="counting rounds")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument(
        "--markdown",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "verdicts.md",
        help="where the tables go (default: benchmarks/results/verdicts.md)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("benchmarks/verdicts.py needs wrk (apt-get install wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="graceful-verdicts-"))
    shutil.copy(Path(__file__).resolve().parent / "apps" / "bench_app.py", workdir)
    results: dict[str, Any] = {"counting": counting_cost(workdir, args.rounds, 10.0)}
    cost = results["counting"]
    print(f"counting on/off, requests/s medians: {cost['median_on']:.0f} / "
          f"{cost['median_off']:.0f} = {cost['ratio']}  (rounds: {cost['rounds']})", flush=True)  # fmt: skip
    results["deploys"] = []
    for name, command, port, reload, pid_file, late in contenders(workdir):
        row = bad_deploy(name, command, workdir, port, reload, pid_file=pid_file, breaks_late=late)
        print(json.dumps(row), flush=True)
        results["deploys"].append(row)
    args.markdown.write_text(markdown(results))
    print(markdown(results))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
