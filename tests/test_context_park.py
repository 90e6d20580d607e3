"""A worker's park and resume, in one process: ``Context.serve()`` on real sockets,
driven by the supervisor's messages as they can arrive, all at once included."""

from __future__ import annotations

import socket

import anyio
import pytest
from anyio.abc import SocketStream

from graceful.child.context import Context
from graceful.child.shutdown import ShutdownRequest, follow_supervisor
from graceful.sockets.listeners import Listener
from graceful.wire import messages as _wire

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    return sock


async def answer(stream: SocketStream) -> None:
    await stream.send(b"hello\n")


async def ask(address: tuple[str, int]) -> bytes:
    with anyio.fail_after(5):
        async with await anyio.connect_tcp(*address) as stream:
            return await stream.receive()


async def test_a_park_and_a_resume_that_arrive_together_still_resume() -> None:
    """Found by an attack: a rollback right after a promotion sends Park and Resume
    back to back. Both were handled before serve() saw the park: the resume was lost
    (serve() waited forever) and serve() closed the listeners it had just been sent."""
    shared = listening()
    address = shared.getsockname()
    supervisor_end, worker_end = socket.socketpair()
    control = _wire.ControlChannel(worker_end)
    shutdown = ShutdownRequest(5.0)
    context = Context(
        listeners=[Listener(socket.socket(fileno=_dup(shared)), "test", address)],
        generation=1,
        worker_id=0,
        control=control,
        shutdown=shutdown,
    )
    sent_again: list[int] = []

    def take_listeners_back() -> None:
        fd = _dup(shared)
        sent_again.append(fd)
        context.listeners_sent_again([Listener(socket.socket(fileno=fd), "test", address)])

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(context.serve, answer)
        tasks.start_soon(follow_supervisor, control, shutdown, take_listeners_back)
        assert await ask(address) == b"hello\n"
        # both messages in one write: the worker reads them in one go
        supervisor_end.sendall(_wire.encode(_wire.Park(5.0)) + _wire.encode(_wire.Resume()))
        with anyio.fail_after(5):
            while context.shutdown_requested or not sent_again:
                await anyio.sleep(0.01)
            while context.listeners[0].socket.fileno() != sent_again[0]:
                await anyio.sleep(0.01)
        assert await ask(address) == b"hello\n"
        # the resumed worker accepts on the listener it was sent, which is open
        assert context.listeners[0].socket.fileno() == sent_again[0]
        # the stop: serve() returns, and follow_supervisor() with the supervisor gone
        supervisor_end.sendall(_wire.encode(_wire.Shutdown(1.0)))
        supervisor_end.close()
    control.close()
    shared.close()


def _dup(sock: socket.socket) -> int:
    import os  # noqa: PLC0415

    return os.dup(sock.fileno())
