"""One import per generation (``preload``): a template process forks the workers.

Without preload, every worker imports the user's code itself. With it, the
supervisor spawns one *template* per generation (through multiprocess's spawn
context, like a worker, so the code is fresh from disk). The template imports the
main script, finds the entry point and, for an ASGI or WSGI app, imports the app's
module and the server, then reports that it is ready to fork. It never serves and
never holds a listener.

Each worker of the generation (the first ones, crash replacements, scaling) is then
forked from the template, sharing the imported code and data copy-on-write. The
worker goes on exactly as a spawned one does after its import (``run_worker``):
its own process group, the listeners over its fd channel, the same control
protocol. So every worker of a generation runs the same code, whatever happened to
the files since.

The fork is a double fork: the template forks a short-lived intermediate, which
forks the worker and exits. The worker is then re-parented to the supervisor, a
child subreaper (``PR_SET_CHILD_SUBREAPER``), which reaps it, gets its exit status
and signals its process group exactly as for a spawned worker.

Wire, over a ``SOCK_SEQPACKET`` socketpair (one JSON object per message):

* template to supervisor, once: ``{"imported": true}`` or ``{"failed": "cause"}``;
* supervisor to template: ``{"fork": WORKER_ID}`` with two descriptors, the
  worker's control channel and fd channel; the answer is ``{"forked": PID}`` or
  ``{"failed": "cause"}``.

The supervisor closing its end (or dying) ends the template.

What cannot be forked safely is refused: a thread the code started at import
(Python threads are listed by name) fails the generation with one line. Threads
started outside Python (a native library's pool) cannot be told apart from a
library that re-creates them after a fork, so they only get a warning.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

import anyio

from graceful._boot import start_template, wrap
from graceful.base import processes as _processes
from graceful.base.errors import GracefulError
from graceful.code.release import Runtime
from graceful.core.machine import SpawnWorker
from graceful.spawn.spawner import (
    ChildWorker,
    Launch,
    SpawningFactory,
    WorkerProcess,
    WorkerSetup,
)
from graceful.spawn.standby import Standby
from graceful.wire import messages as _wire
from graceful.wire.bootstrap import Assignment
from graceful.wire.fds import send_with

#: Seconds a template has to answer a fork request.
_FORK_TIMEOUT = 10.0

#: Seconds to wait for a template's exit status once its socket has closed.
_EXIT_STATUS_WAIT = 2.0

#: Seconds a template told to stop has to exit before it is killed.
TEMPLATE_EXIT_GRACE = 5.0


class TemplateFailed(GracefulError):
    """The generation's template could not import the code, or cannot fork."""


# --- the supervisor's side -----------------------------------------------------------


class Template:
    """A generation's template process, as the supervisor sees it."""

    def __init__(
        self, generation: int, process: Any, forks: socket.socket, release: str | None
    ) -> None:
        self.generation = generation
        #: the release directory it was started from
        self.release = release
        self.process = process
        self.forks = forks
        self._lock = anyio.Lock()
        self._imported = False
        self._failure: str | None = None
        #: no more forks: the socket closes once no exchange is under way
        self._stopping = False
        #: when it was told to stop (``time.monotonic()``), if it was
        self.stopped_at: float | None = None

    @property
    def pid(self) -> int:
        pid: int = self.process.pid
        return pid

    @property
    def imported(self) -> bool:
        """It has imported the code and forks workers on request."""
        return self._imported

    async def wait_imported(self) -> None:
        """Return once the template has imported the code.

        Raises:
            TemplateFailed: with the template's own cause, if it could not.
        """
        try:
            async with self._lock:
                self._check_open()
                if not self._imported and self._failure is None:
                    answer = await self._receive()
                    if "hello" in answer:
                        self._failure = _wire.hello_mismatch(answer["hello"], "template")
                        if self._failure is None:
                            answer = await self._receive()
                        else:
                            self.kill()
                            answer = {}
                    if answer.get("imported") is True:
                        self._imported = True
                    elif self._failure is None:
                        self._failure = str(answer.get("failed", answer))
        finally:
            self._close_if_stopping()
        if self._failure is not None:
            raise TemplateFailed(self._failure)

    async def fork(self, worker_id: int, fds: list[int]) -> int:
        """Have the template fork worker ``worker_id`` with ``fds`` (its control and fd
        channels); its PID. Not cancellable once asked: the answer is awaited (for
        at most a few seconds), so that no worker is forked unknown.

        Raises:
            TemplateFailed: if the template cannot fork, or is gone.
        """
        try:
            async with self._lock:
                self._check_open()
                answer, waited = await self._exchange(worker_id, fds)
        finally:
            self._close_if_stopping()
        if waited.cancelled_caught:
            self.kill()
            raise TemplateFailed(
                f"the template of generation {self.generation} did not answer a fork "
                f"within {_FORK_TIMEOUT:g}s; killed it"
            )
        if "forked" not in answer:
            raise TemplateFailed(str(answer.get("failed", answer)))
        return int(answer["forked"])

    async def _exchange(
        self, worker_id: int, fds: list[int]
    ) -> tuple[dict[str, Any], anyio.CancelScope]:
        """Ask for a fork and wait for the answer, shielded (see :meth:`fork`)."""
        with anyio.CancelScope(shield=True):
            try:
                send_with(self.forks, json.dumps({"fork": worker_id}).encode(), fds)
            except OSError as exc:
                gone = await self._gone()
                raise TemplateFailed(
                    gone
                    if _processes.has_exited(self.pid)
                    else f"cannot reach the template of generation {self.generation}: "
                    f"{exc.strerror or exc}"
                ) from None
            answer: dict[str, Any] = {}
            with anyio.move_on_after(_FORK_TIMEOUT) as waited:
                answer = await self._receive()
        return answer, waited

    async def _receive(self) -> dict[str, Any]:
        try:
            answer = await _wire.receive_object(self.forks, _wire.LINK_MESSAGE_BYTES)
        except _wire.NotAMessage as garbage:
            self.kill()
            raise TemplateFailed(
                f"the template of generation {self.generation} sent {garbage}; killed it"
            ) from None
        if answer is None:
            raise TemplateFailed(await self._gone())
        return answer

    async def _gone(self) -> str:
        """Why the template's socket closed: its exit, once it has exited (its
        descriptors close a moment before its status is there)."""
        with anyio.move_on_after(_EXIT_STATUS_WAIT):
            while not _processes.has_exited(self.pid):
                await anyio.sleep(0.005)
        # (not process.exitcode: it would reap the template, and its process group
        # could no longer be signalled safely)
        gone = (
            f"the template of generation {self.generation} exited "
            f"({_describe_status(_processes.exit_status(self.pid))})"
        )
        if self._imported:
            gone += ": the generation's workers cannot be replaced until the next reload"
        return gone

    def _check_open(self) -> None:
        if self._stopping:
            raise TemplateFailed(f"generation {self.generation} has ended: no more workers")

    def stop(self) -> None:
        """No more forks: the template exits once it sees its socket closed, which is
        at once, or once the exchange under way has ended (a fork asked for is
        answered, so that its worker is known and can be stopped)."""
        self._stopping = True
        if self.stopped_at is None:
            self.stopped_at = time.monotonic()
        self._close_if_stopping()

    def _close_if_stopping(self) -> None:
        if self._stopping and not self._lock.locked():
            self.forks.close()

    def kill(self) -> None:
        """SIGKILL the template and its process group (it is not reaped yet)."""
        _processes.kill_group_or_process(self.pid)

    def reap_if_exited(self) -> bool:
        """Reap it if it has exited (without waiting), and kill what it left in its
        process group (whatever the code started at import); True once reaped."""
        if not _processes.has_exited(self.pid):
            return False
        # safe while it is an unreaped zombie: its group's number is not reused
        _processes.signal_group(self.pid, signal.SIGKILL)
        self.process.join()
        self.process.close()
        return True

    def kill_and_reap(self) -> None:
        self.stop()
        self.kill()
        with contextlib.suppress(Exception):
            self.process.join()
            self.process.close()


def _describe_status(exitcode: int | None) -> str:
    if exitcode is None:
        return "status unknown"
    if exitcode < 0:
        return f"killed by signal {-exitcode}"
    return f"exit status {exitcode}"


@dataclass(kw_only=True)
class ForkedWorker(ChildWorker):
    """A worker forked from its generation's template and adopted by the supervisor,
    which reaps it with ``waitpid``."""

    process_id: int

    @property
    def pid(self) -> int:
        return self.process_id

    def abandon(self) -> int | None:
        with contextlib.suppress(Exception):
            if not self.has_exited():
                self.kill()
        exitcode = None
        with contextlib.suppress(Exception):
            exitcode = self._collect()
        return exitcode

    def _collect(self) -> int | None:
        try:
            _, status = os.waitpid(self.pid, 0)
            exitcode: int | None = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            exitcode = None
        self._close_channels()
        return exitcode


class TemplateFactory(SpawningFactory):
    """Starts each generation's workers by forking them from one template per
    generation (see the module docstring). Needs this process to be a child
    subreaper (:func:`graceful.base.processes.become_subreaper`)."""

    def __init__(self, launch: Launch) -> None:
        super().__init__(launch)
        self._templates: dict[int, Template] = {}
        #: held while a generation's template is being started
        self._starting = anyio.Lock()
        #: stopped, and not reaped yet
        self._ending: list[Template] = []
        #: generations that have ended: no template is started for them again
        self._ended: set[int] = set()

    async def start(self, spawn: SpawnWorker, setup: WorkerSetup) -> WorkerProcess:
        self.collect_exited()
        if spawn.generation in self._ended:
            raise TemplateFailed(f"generation {spawn.generation} has ended: no more workers")
        async with self._starting:
            template = self._templates.get(spawn.generation)
            if template is None:
                # (only a new template needs the release: a generation's template forks
                # its workers whatever the link names meanwhile)
                template = self._templates[spawn.generation] = await self._start_template(
                    spawn.generation, setup, self.release.resolve()
                )
        await template.wait_imported()
        with contextlib.ExitStack() as on_failure:
            channel, fd_channel, child_control, child_fd_channel = self.open_channels(on_failure)
            with child_fd_channel, contextlib.closing(child_control):
                pid = await template.fork(
                    spawn.worker_id, [child_control.fileno(), child_fd_channel.fileno()]
                )
            on_failure.callback(_kill_and_reap_pid, pid)
            handed = self.take_on(spawn, pid, channel, fd_channel, template.release)
            on_failure.pop_all()
        return ForkedWorker(process_id=pid, **handed)

    async def _start_template(
        self, generation: int, setup: WorkerSetup, runtime: Runtime
    ) -> Template:
        """Generation ``generation``'s template, from ``runtime``, as ``setup`` says:
        the warm standby if it can take the work, else a new process."""
        options = setup.options or self.options
        standby = await self.take_standby(
            setup,
            runtime,
            lambda: Assignment(
                runtime.cwd,
                template=self.generation_bootstrap(generation, options, runtime),
            ),
        )
        if standby is not None:
            return Template(generation, standby.process, standby.link, runtime.release)
        forks, child_forks = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        forks.setblocking(False)
        with child_forks:
            process = self._context.Process(
                target=start_template,
                args=(
                    wrap(self.generation_bootstrap(generation, options, runtime)),
                    child_forks,
                ),
                name=f"graceful gen {generation} template",
            )
            try:
                self.start_process(process, setup.environment, runtime)
            except BaseException:
                forks.close()
                raise
        return Template(generation, process, forks, runtime.release)

    def start_standby(self) -> Standby:
        """Spawn a standby that will become a template."""
        return self.spawn_standby(template=True)

    def generation_ended(self, number: int) -> None:
        self._ended.add(number)
        template = self._templates.pop(number, None)
        if template is not None:
            template.stop()
            if not template.imported:
                # still importing (hung, or the generation failed meanwhile): it would
                # never read its closed socket
                template.kill()
            self._ending.append(template)
        self.collect_exited()

    def collect_exited(self) -> None:
        """Reap the stopped templates that have exited, and stop what they left; kill
        those that were told to stop more than :data:`TEMPLATE_EXIT_GRACE` seconds ago
        and have not exited (stopped, or stuck: they never read their closed socket)."""
        now = time.monotonic()
        for template in self._ending:
            if template.stopped_at is not None and now - template.stopped_at > TEMPLATE_EXIT_GRACE:
                template.kill()
        self._ending = [template for template in self._ending if not template.reap_if_exited()]

    async def run(self) -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(super().run)
            while True:  # a template that does not exit when told is found in time
                await anyio.sleep(TEMPLATE_EXIT_GRACE / 2)
                if self._ending:
                    self.collect_exited()

    def helper_pids(self) -> set[int]:
        templates = [*self._templates.values(), *self._ending]
        return super().helper_pids() | {template.pid for template in templates}

    def close(self) -> None:
        super().close()
        for template in [*self._templates.values(), *self._ending]:
            template.kill_and_reap()
        self._templates.clear()
        self._ending.clear()


def _kill_and_reap_pid(pid: int) -> None:
    _processes.kill_group_or_process(pid)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
