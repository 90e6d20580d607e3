"""Replacing a running service's supervisor, three ways, beside a reload, in one run.

    python benchmarks/upgrade.py [--quick]

The same small ASGI app, served by ``graceful serve app:app --workers 2
--drain-timeout 30 --probation 0 --pid-file P``, under ``wrk -t2 -c32`` (keep-alive),
with a request to ``/slow`` (it answers after 20 s) in flight, replaced:

1. **stop and start**: ``graceful stop --pid-file P``, then at once a new ``graceful
   serve`` with the same PID file and address, started again (as a deploy script
   would) for as long as it is refused: the old supervisor holds the PID file until
   its drain ends;
2. **stop and start behind a held socket**: the same, but the listening socket is
   this process's, passed to each supervisor as ``--listen fd:N``, as systemd's
   socket activation passes its own (``systemd-socket-activate`` runs one command
   and exits with it, so it cannot hold the socket across a stop and a start):
   connections wait in the kernel's queue while nothing accepts;
3. **graceful upgrade**: ``graceful upgrade --pid-file P --wait``;
4. **graceful reload**: ``graceful reload --pid-file P --wait``, for comparison: the
   goal for an upgrade is what a reload does.

For each: wrk's failed requests (its socket errors, connect, read, write and
timeout, and its non-2xx responses), the connections refused to a probe that opens
a new one every 20 ms (wrk's own connect errors are shown too, but a refusal is not
one of them: see :class:`Probe`), wrk's p99 and maximum latency (the stall),
whether the 20 s request completed, and the time from the command until the new
supervisor (or generation) serves. wrk runs with a timeout longer than the whole run, so a request that waited
shows as a latency, not as a timeout. Each case gets a port of its own, free when
the case starts and fixed for it.

``--quick``: a 5 s slow request and shorter wrk runs (about a minute in all, against
about 2.5 minutes). The table is printed and written to
``benchmarks/results/upgrade.md``. Needs wrk (``apt-get install wrk``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import io
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import wrk
from common import print_header, print_row

from graceful.testing import ServiceProcess, poll_until, zombie_children

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CLI = [sys.executable, "-m", "graceful"]

#: The app: ``/`` answers at once; ``/slow`` sends its first bytes at once (so that
#: the client knows it is in flight), and the rest after ``SLOW`` seconds.
APP = """\
import asyncio

SLOW = {slow!r}
BODY = b"hello\\n"


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({{"type": message["type"] + ".complete"}})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["path"] == "/slow":
        await send({{"type": "http.response.start", "status": 200, "headers": []}})
        await send({{"type": "http.response.body", "body": b"slow ", "more_body": True}})
        await asyncio.sleep(SLOW)
        await send({{"type": "http.response.body", "body": b"done\\n"}})
        return
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"6")]
    await send({{"type": "http.response.start", "status": 200, "headers": headers}})
    await send({{"type": "http.response.body", "body": BODY}})
"""

#: What the slow request's body is once it completed.
SLOW_BODY = b"slow done\n"

#: PR_SET_CHILD_SUBREAPER (linux/prctl.h)
PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class Settings:
    #: seconds the slow request takes
    slow: float
    #: seconds of load before the slow request and the replacement
    warmup: float
    #: seconds of load after the slow request has ended (at the latest)
    tail: float

    @property
    def load_seconds(self) -> int:
        return round(self.warmup + self.slow + self.tail)


FULL = Settings(slow=20.0, warmup=3.0, tail=10.0)
QUICK = Settings(slow=5.0, warmup=2.0, tail=6.0)


class SlowRequest:
    """``GET /slow``, read to its end in a thread."""

    def __init__(self, url: str, timeout: float) -> None:
        self.body = b""
        self.error: str | None = None
        self.started = threading.Event()
        self._begun = time.monotonic()
        self.seconds = 0.0
        self._thread = threading.Thread(target=self._read, args=(url, timeout), daemon=True)
        self._thread.start()

    def _read(self, url: str, timeout: float) -> None:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                while chunk := response.read1(65536):
                    self.body += chunk
                    self.started.set()
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.seconds = time.monotonic() - self._begun
            self.started.set()

    def outcome(self, timeout: float) -> str:
        """How it ended, for the table: ``yes (20.0 s)``, or how it was cut."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            return f"no: still running after {timeout:.0f} s"
        if self.error is None and self.body == SLOW_BODY:
            return f"yes ({self.seconds:.1f} s)"
        return f"no: cut after {self.seconds:.1f} s ({self.error or 'body ' + repr(self.body)})"


class Probe:
    """A new connection every ``interval`` seconds, each asking ``GET /`` once, in a
    thread: how many were refused. wrk cannot tell: its connect is non-blocking, so a
    refused connection surfaces at its first write and wrk counts it as a write error
    (its "connect" errors are the connects that fail at once, which on Linux a refusal
    does not)."""

    def __init__(self, port: int, *, interval: float, timeout: float) -> None:
        self.attempts = 0
        self.refused = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(port, interval, timeout), daemon=True
        )
        self._thread.start()

    def _run(self, port: int, interval: float, timeout: float) -> None:
        while not self._stop.is_set():
            self.attempts += 1
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
                    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    data = b""
                    while chunk := sock.recv(4096):
                        data += chunk
                    if not data.startswith(b"HTTP/1.1 200"):
                        self.errors += 1
            except ConnectionRefusedError:
                self.refused += 1
            except OSError:
                self.errors += 1
            self._stop.wait(interval)

    def stop(self) -> str:
        """Stop; what it saw, for the table."""
        self._stop.set()
        self._thread.join(120)
        errors = f", {self.errors} other errors" if self.errors else ""
        return f"{self.refused} of {self.attempts}{errors}"


@dataclass
class Case:
    """One service, replaced once under load: what the replacement needs."""

    workdir: Path
    pid_file: Path
    port: int
    #: ``--listen`` for each supervisor started
    listen: str
    pass_fds: tuple[int, ...] = ()
    #: every service started, closed at the end whatever happens
    services: list[ServiceProcess] = field(default_factory=list)

    def start(self) -> ServiceProcess:
        """A new ``graceful serve`` (it may be refused: see :func:`stop_and_start`)."""
        command = [
            *CLI, "serve", "app:app", "--listen", self.listen, "--pid-file", str(self.pid_file),
            "--workers", "2", "--drain-timeout", "30", "--probation", "0", "--no-access-log",
        ]  # fmt: skip
        service = ServiceProcess(
            self.workdir / "app.py", command=command, cwd=self.workdir, pass_fds=self.pass_fds
        )
        self.services.append(service)
        return service


@dataclass
class Replaced:
    """What a replacement reports: seconds from its command until the new supervisor
    (or generation) serves, and notes for the table."""

    serves_after: float
    notes: str


@dataclass
class Row:
    what: str
    load: wrk.WrkResult | None
    #: what the probe saw: refused connections of its attempts
    probed: str
    slow: str
    serves_after: float | None
    notes: str


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def stop_and_start(case: Case, old: ServiceProcess, started: float) -> Replaced:
    """``graceful stop``, then ``graceful serve`` until it is accepted."""
    stopped = cli("stop", "--pid-file", str(case.pid_file))
    if stopped.returncode != 0:
        raise RuntimeError(f"graceful stop failed: {stopped.stderr}")
    refused = 0
    first_try = time.monotonic()
    refusal = ""
    while True:
        new = case.start()
        try:
            new.wait_serving(1, timeout=90)
            break
        except AssertionError:
            if new.proc.poll() is None:
                raise
            if new.proc.returncode != 2 or time.monotonic() - started > 120:
                raise RuntimeError(f"the new supervisor did not start:\n{new.output}") from None
            refused += 1
            refusal = new.lines[-1] if new.lines else ""
            new.close()
            case.services.remove(new)
            time.sleep(0.1)
    serves_after = time.monotonic() - started
    accepted_after = time.monotonic() - first_try
    reason = re.sub(r"^graceful\[\d+\] supervisor: ERROR ", "", refusal)
    reason = re.sub(r"\(PID \d+\)", "", reason.replace(str(case.pid_file), "P")).strip()
    notes = (
        f"start refused {refused} times until {accepted_after:.1f} s ({reason})"
        if refused
        else "start accepted at once"
    )
    return Replaced(serves_after, f"{notes}; the old supervisor exited {old.wait_exit(60)}")


def upgrade(case: Case, old: ServiceProcess, started: float) -> Replaced:
    """``graceful upgrade --wait``."""
    done = cli("upgrade", "--pid-file", str(case.pid_file), "--wait", "--timeout", "110")
    serves_after = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"graceful upgrade failed ({done.returncode}): {done.stderr}")
    new_pid = int(case.pid_file.read_text())
    if new_pid == old.pid:
        raise RuntimeError(f"the PID file still names the old supervisor: {done.stdout}")
    return Replaced(
        serves_after,
        f"`{done.stdout.strip()}`; the old supervisor exited {old.wait_exit(60)} after its drain",
    )


def reload(case: Case, old: ServiceProcess, started: float) -> Replaced:
    """``graceful reload --wait``."""
    done = cli("reload", "--pid-file", str(case.pid_file), "--wait", "--timeout", "110")
    serves_after = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"graceful reload failed ({done.returncode}): {done.stderr}")
    return Replaced(serves_after, f"`{done.stdout.strip()}`")


Replace = Callable[[Case, ServiceProcess, float], Replaced]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def held_listener() -> Iterator[socket.socket]:
    """A listening socket of this process, as systemd's socket activation holds one."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(socket.SOMAXCONN)
        yield sock
    finally:
        sock.close()


def measure(what: str, replace: Replace, settings: Settings, *, held: bool = False) -> Row:
    """Serve the app, load it, start the slow request, replace the supervisor, and
    collect what wrk and the slow request saw. Kills and reaps everything it started."""
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        (workdir / "app.py").write_text(APP.format(slow=settings.slow))
        if held:
            sock = stack.enter_context(held_listener())
            port = sock.getsockname()[1]
            case = Case(workdir, workdir / "app.pid", port, f"fd:{sock.fileno()}", (sock.fileno(),))
        else:
            port = free_port()
            case = Case(workdir, workdir / "app.pid", port, f"127.0.0.1:{port}")
        load: subprocess.Popen[str] | None = None
        probe: Probe | None = None
        try:
            old = case.start()
            old.wait_serving(1, timeout=60)
            poll_until(case.pid_file.exists, 30, "the PID file")
            seconds = settings.load_seconds
            load = wrk.start(
                f"http://127.0.0.1:{port}/", seconds, connections=32, timeout=seconds + 30
            )
            load_end = time.monotonic() + seconds
            probe = Probe(port, interval=0.02, timeout=settings.slow + 30)
            time.sleep(settings.warmup)
            slow = SlowRequest(f"http://127.0.0.1:{port}/slow", timeout=settings.slow + 60)
            if not slow.started.wait(10) or slow.error is not None:
                raise RuntimeError(f"the slow request did not start: {slow.error}")
            started = time.monotonic()
            replaced = replace(case, old, started)
            notes = replaced.notes
            if started + replaced.serves_after > load_end:
                notes += "; wrk ended before the new supervisor served"
            outcome = slow.outcome(settings.slow + 60)
            result = wrk.finish(load, seconds + 60)
            load = None
            return Row(what, result, probe.stop(), outcome, replaced.serves_after, notes)
        except Exception as exc:
            return Row(what, None, "?", "?", None, f"**the run failed**: {one_line(exc)}")
        finally:
            if probe is not None:
                probe.stop()
            if load is not None:
                with contextlib.suppress(ProcessLookupError):
                    load.kill()
                load.wait()
            for service in case.services:
                service.close()
            reap_orphans()


def one_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}" + (
        f" ... {lines[-1]}" if len(lines) > 1 else ""
    )


def reap_orphans() -> None:
    """Reap the exited processes that were re-parented to this one (a subreaper)."""
    for pid in zombie_children(os.getpid()):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def become_subreaper() -> None:
    """Orphans of the services (the workers of an exited supervisor, a successor
    whose predecessor exited) become this process's children, to be reaped here."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print(f"note: not a subreaper (errno {ctypes.get_errno()})", file=sys.stderr)


def milliseconds(value: float) -> str:
    return f"{value:,.0f} ms" if value >= 100 else f"{value:.1f} ms"


def failed_cell(result: wrk.WrkResult) -> str:
    parts = {
        "connect": result.connect_errors,
        "read": result.read_errors,
        "write": result.write_errors,
        "timeout": result.timeouts,
        "non-2xx": result.non_2xx,
    }
    named = ", ".join(f"{name} {count}" for name, count in parts.items() if count)
    return f"{result.failed} ({named})" if named else "0"


def report(rows: list[Row], settings: Settings, quick: bool) -> None:
    """Print the report, in Markdown."""
    print("# Replacing the supervisor under load")
    print()
    print(
        f"`python benchmarks/upgrade.py{' --quick' if quick else ''}` ({os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}), {datetime.date.today().isoformat()}."
    )
    print()
    print(
        "`graceful serve --workers 2 --drain-timeout 30 --probation 0`, under `wrk -t2 -c32 "
        f"-d{settings.load_seconds}s` (keep-alive, `--timeout` longer than the run), with a "
        f"request to `/slow` that answers after {settings.slow:.0f} s in flight"
        + (" (quick mode: 5 s, not 20 s)" if quick else "")
        + ". Failed: wrk's socket errors and non-2xx responses. Refused: the connections "
        "refused to a probe that opens a new one every 20 ms (wrk counts a refused "
        "connection as a write error, not a connect error: its connect is non-blocking). "
        "The time runs from the command until the new supervisor (for the reload, the "
        "new generation) serves."
    )
    print()
    print_header(
        "what",
        "failed requests (wrk)",
        "refused connections (probe, of its attempts)",
        "wrk connect errors",
        "p99 latency",
        "max latency",
        f"{settings.slow:.0f} s request completed",
        "time until the new supervisor serves",
        "requests",
        "notes",
    )
    for row in rows:
        if row.load is None:
            print_row(row.what, "?", "?", "?", "?", "?", row.slow, "?", "?", row.notes)
            continue
        print_row(
            row.what,
            failed_cell(row.load),
            row.probed,
            row.load.connect_errors,
            milliseconds(row.load.p99_ms),
            milliseconds(row.load.max_ms),
            row.slow,
            f"{row.serves_after:.2f} s" if row.serves_after is not None else "?",
            f"{row.load.requests:,}",
            row.notes.replace("|", "\\|"),
        )


CASES: list[tuple[str, Replace, bool]] = [
    ("stop, then start (retried while refused)", stop_and_start, False),
    ("stop, then start behind a held socket (`--listen fd:N`)", stop_and_start, True),
    ("`graceful upgrade --wait`", upgrade, False),
    ("`graceful reload --wait` (for comparison)", reload, False),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a 5 s slow request and shorter wrk runs"
    )
    quick: bool = parser.parse_args().quick
    settings = QUICK if quick else FULL
    become_subreaper()
    if quick:
        print("quick mode: the slow request takes 5 s, not 20 s")
    rows = []
    for what, replace, held in CASES:
        print(f"... {what}", flush=True)
        rows.append(measure(what, replace, settings, held=held))
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        report(rows, settings, quick)
    print()
    print(text.getvalue(), end="")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "upgrade.md").write_text(text.getvalue())
    return 1 if any(row.load is None for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
