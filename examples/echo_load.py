"""Load for the line-echo examples that counts every failed request.

Half the clients open a new connection for every request; the other half keep a
connection for many requests. A request fails if the connection is refused or
reset, if the answer is missing, short, or not an echo of what was sent, or if it
takes longer than the timeout. Nothing is retried.

    python examples/echo_load.py 127.0.0.1:8080 --clients 20 --seconds 20
    python examples/echo_load.py unix:/tmp/echo.sock --seconds 5 --json
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Self

#: requests a long-lived client sends on one connection before it opens a new one
REQUESTS_PER_CONNECTION = 200


@dataclass
class Tally:
    """What the load saw: successes, failures by kind, and the prefixes answered."""

    ok: int = 0
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    prefixes: collections.Counter[str] = field(default_factory=collections.Counter)
    max_latency: float = 0.0
    #: for each failed request, the client's port of its connection (None if no
    #: connection was made, or over a unix socket): which server held it
    failed_on: list[int | None] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "failed": self.failed,
            "failures": dict(self.failures),
            "prefixes": dict(self.prefixes),
            "max_latency_s": round(self.max_latency, 4),
        }


class Load:
    """Concurrent echo clients against ``target`` until :meth:`stop` is called.

    ``target`` is ``HOST:PORT`` or ``unix:PATH``. Run it in a thread with
    :meth:`start`, or in an event loop with :meth:`run`.
    """

    def __init__(self, target: str, clients: int = 20, timeout: float = 10.0) -> None:
        self.target = target
        self.clients = clients
        self.timeout = timeout
        self.tally = Tally()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._serial = 0

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.target.startswith("unix:"):
            return await asyncio.open_unix_connection(self.target[len("unix:") :])
        host, _, port = self.target.rpartition(":")
        return await asyncio.open_connection(host.strip("[]"), int(port))

    async def _request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        self._serial += 1
        payload = f"request {self._serial}".encode()
        started = time.monotonic()
        writer.write(payload + b"\n")
        await writer.drain()
        answer = await reader.readline()
        self.tally.max_latency = max(self.tally.max_latency, time.monotonic() - started)
        if not answer.endswith(b"\n"):
            self.tally.failures[
                "no answer (connection closed)" if not answer else "short answer"
            ] += 1
            return False
        prefix, sep, echoed = answer[:-1].rpartition(payload)
        if not sep or echoed:
            self.tally.failures["wrong answer"] += 1
            return False
        self.tally.ok += 1
        self.tally.prefixes[prefix.decode(errors="replace")] += 1
        return True

    async def _client(self, long_lived: bool) -> None:
        while not self._stopping.is_set():
            writer = None
            try:
                async with asyncio.timeout(self.timeout):
                    reader, writer = await self._open()
                for _ in range(REQUESTS_PER_CONNECTION if long_lived else 1):
                    if self._stopping.is_set():
                        break
                    async with asyncio.timeout(self.timeout):
                        if not await self._request(reader, writer):
                            self.tally.failed_on.append(_client_port(writer))
                            break
            except TimeoutError:
                self.tally.failures["timeout"] += 1
                self.tally.failed_on.append(_client_port(writer))
            except OSError as exc:
                self.tally.failures[type(exc).__name__] += 1
                self.tally.failed_on.append(_client_port(writer))
            finally:
                if writer is not None:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()

    async def run(self) -> Tally:
        """Run every client until :meth:`stop`; return the tally."""
        await asyncio.gather(*(self._client(long_lived=i % 2 == 1) for i in range(self.clients)))
        return self.tally

    def start(self) -> None:
        """Run the load in a background thread."""
        self._thread = threading.Thread(target=lambda: asyncio.run(self.run()), daemon=True)
        self._thread.start()

    def __enter__(self) -> Self:
        """Start the load in a background thread; it stops when the block ends."""
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self, timeout: float = 30.0) -> Tally:
        """Stop every client after its current request; return the tally."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"the load did not stop within {timeout}s")
        return self.tally


def _client_port(writer: asyncio.StreamWriter | None) -> int | None:
    if writer is None:
        return None
    address = writer.get_extra_info("sockname")
    return address[1] if isinstance(address, tuple) else None


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("target", help="HOST:PORT or unix:PATH")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--json", action="store_true", help="print the tally as JSON")
    args = parser.parse_args()
    load = Load(args.target, clients=args.clients)
    load.start()
    deadline = time.monotonic() + args.seconds
    try:
        while time.monotonic() < deadline:
            time.sleep(min(1.0, deadline - time.monotonic()))
            if not args.json:
                t = load.tally
                print(
                    f"ok={t.ok} failed={t.failed} {dict(t.failures)} prefixes={dict(t.prefixes)}",
                    flush=True,
                )
    except KeyboardInterrupt:
        pass
    tally = load.stop()
    print(json.dumps(tally.as_dict()) if args.json else f"final: {tally.as_dict()}")
    return 1 if tally.failed else 0


if __name__ == "__main__":
    sys.exit(main())
