"""Light load on the echo example, run inside the systemd-nspawn container by
tests/real_systemd.py with the container's python3 (the standard library only).

``--clients`` clients (half open a connection for every request, half keep theirs
for 100 requests), each sending at most 20 requests a second, until the file
``--stop`` exists; and one *held* connection, opened first, that sends a line every
0.5 s for ``--hold`` seconds, so that a connection of the old code is in flight
across an upgrade. It prints ``ready`` once the held connection has had its first
answer, then, at the end, the tally as one line of JSON: requests answered and
failed (by cause), the answers' prefixes (which code answered), and what the held
connection saw. Nothing is retried.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import socket
import threading
import time
from typing import Any, BinaryIO

ADDRESS = ("127.0.0.1", 8080)


def ask(reader: BinaryIO, sock: socket.socket, payload: bytes) -> str:
    """Send one line; the prefix of its echo (which code answered)."""
    sock.sendall(payload + b"\n")
    line = reader.readline()
    if not line.endswith(b"\n"):
        raise ConnectionError("no answer" if not line else "short answer")
    head, sep, tail = line[:-1].rpartition(payload)
    if not sep or tail:
        raise ValueError(f"wrong answer {line!r}")
    return head.decode()


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok = 0
        self.failures: collections.Counter[str] = collections.Counter()
        self.prefixes: collections.Counter[str] = collections.Counter()


def client(number: int, keep: bool, tally: Tally, stop: str) -> None:
    sock: socket.socket | None = None
    reader: BinaryIO | None = None
    sent = 0
    while not os.path.exists(stop):
        sent += 1
        failed = False
        try:
            if sock is None or reader is None:
                sock = socket.create_connection(ADDRESS, timeout=10)
                reader = sock.makefile("rb")
            prefix = ask(reader, sock, f"c{number}-{sent}".encode())
            with tally.lock:
                tally.ok += 1
                tally.prefixes[prefix] += 1
        except (OSError, ValueError) as exc:
            failed = True
            with tally.lock:
                tally.failures[f"{type(exc).__name__}: {exc}"] += 1
        if failed or not keep or sent % 100 == 0:
            if sock is not None:
                sock.close()
            sock = reader = None
        time.sleep(0.05)
    if sock is not None:
        sock.close()


def held(seconds: float, result: dict[str, Any], ready: threading.Event) -> None:
    answers: collections.Counter[str] = collections.Counter()
    failures: list[str] = []
    started = time.monotonic()
    try:
        sock = socket.create_connection(ADDRESS, timeout=10)
    except OSError as exc:
        result.update(answers={}, failures=[f"connect: {exc}"], seconds=0.0)
        ready.set()
        return
    reader = sock.makefile("rb")
    sent = 0
    while time.monotonic() - started < seconds:
        sent += 1
        try:
            answers[ask(reader, sock, f"held-{sent}".encode())] += 1
        except (OSError, ValueError) as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
            break
        ready.set()
        time.sleep(0.5)
    sock.close()
    result.update(
        answers=dict(answers), failures=failures, seconds=round(time.monotonic() - started, 1)
    )
    ready.set()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--hold", type=float, default=12.0)
    parser.add_argument("--stop", required=True)
    args = parser.parse_args()
    tally, result, ready = Tally(), dict[str, Any](), threading.Event()
    holder = threading.Thread(target=held, args=(args.hold, result, ready))
    holder.start()
    ready.wait(15)
    print("ready" if ready.is_set() and not result else f"not ready: {result}", flush=True)
    clients = [
        threading.Thread(target=client, args=(i, i % 2 == 1, tally, args.stop))
        for i in range(args.clients)
    ]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    holder.join()
    summary = {
        "ok": tally.ok,
        "failed": sum(tally.failures.values()),
        "failures": dict(tally.failures),
        "prefixes": dict(tally.prefixes),
        "held": result,
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
