"""A template's own side (``preload``): import the code once, then fork workers on
request (the concept and its wire: :mod:`graceful.spawn.template`)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
from typing import NoReturn

import multiprocess.connection

from graceful.base.errors import ConfigError, one_line
from graceful.base.log import logger, start_failures_logged
from graceful.child.worker import run_worker, settle_process
from graceful.code.entry import find_runnable, traits_of
from graceful.code.main_script import import_main_script
from graceful.wire import messages as _wire
from graceful.wire.bootstrap import TemplateBootstrap, WorkerBootstrap
from graceful.wire.fds import receive_with

#: A template's process name (``/proc/PID/comm``).
TEMPLATE_NAME = "graceful-tmpl"


def template_main(boot: TemplateBootstrap, forks: socket.socket) -> None:
    """The target of a template process: import, then fork workers on request until
    the supervisor closes ``forks``, its end of their socket."""
    settle_process(
        f"gen {boot.generation} template", boot.log_level, boot.options, name=TEMPLATE_NAME
    )
    try:
        import_main_script(boot.main)
        runnable = find_runnable(boot.entry, boot.options.backend)
        preload = traits_of(runnable.function).preload
        if preload is not None:
            preload(**boot.options.entry_options)
        _refuse_threads()
    except BaseException as exc:  # an exception at import, even KeyboardInterrupt
        cause = str(exc) if isinstance(exc, ConfigError) else one_line(exc, where=True)
        if not isinstance(exc, ConfigError) and start_failures_logged():
            logger.exception("preloading the code failed")
        _wire.send_or_exit(forks, failed=cause)
        sys.exit(1)
    _wire.send_or_exit(forks, imported=True)
    while True:
        try:
            data, fds = receive_with(forks, _wire.LINK_MESSAGE_BYTES, 2)
        except OSError:
            data, fds = b"", []
        if not data:
            return  # the supervisor is done with this generation (or gone)
        try:
            worker_id = int(json.loads(data)["fork"])
            if len(fds) != 2:
                raise ValueError(f"{len(fds)} descriptors instead of 2")
            pid = _fork_worker(boot, forks, worker_id, fds)
        except Exception as exc:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            _wire.send_or_exit(forks, failed=f"could not fork a worker: {one_line(exc)}")
        else:
            _wire.send_or_exit(forks, forked=pid)


def _refuse_threads() -> None:
    main = threading.main_thread()
    others = [thread.name for thread in threading.enumerate() if thread is not main]
    if others:
        raise ConfigError(
            f"preload: the code started {len(others)} thread(s) at import "
            f"({', '.join(others[:5])}); a fork copies none of them but may copy the "
            "locks they hold. Start them in the entry point (after the fork), or turn "
            "preload off"
        )
    try:
        native = len(os.listdir("/proc/self/task")) - 1
    except OSError:
        return
    if native > 0:
        logger.warning(
            "preload: %d thread(s) started outside Python run in the template (a native "
            "library's pool?); the forked workers start with none of them",
            native,
        )


def _fork_worker(
    boot: TemplateBootstrap, forks: socket.socket, worker_id: int, fds: list[int]
) -> int:
    """Fork a worker that the supervisor adopts (see the module docstring); its PID."""
    read_end, write_end = os.pipe()
    try:
        intermediate = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        raise
    if intermediate == 0:
        code = 1
        try:
            os.close(read_end)
            worker = os.fork()
            if worker == 0:
                os.close(write_end)
                forks.close()
                _become_worker(boot, worker_id, fds)
            os.write(write_end, str(worker).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    for fd in fds:
        os.close(fd)
    with open(read_end, "rb") as pid_pipe:
        answer = pid_pipe.read()
    os.waitpid(intermediate, 0)
    if not answer:
        raise OSError("the intermediate process could not fork")
    return int(answer)


def _become_worker(boot: TemplateBootstrap, worker_id: int, fds: list[int]) -> NoReturn:
    """In the forked worker: run as a worker of the template's generation."""
    code = 1
    try:
        control_fd, channel_fd = fds
        worker = WorkerBootstrap.of(boot, worker_id)
        settle_process(f"gen {boot.generation} worker {worker_id}", boot.log_level, boot.options)
        control = _wire.ControlChannel(multiprocess.connection.Connection(control_fd))
        control.send(_wire.own_hello())
        run_worker(worker, control, socket.socket(fileno=channel_fd))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        logger.exception("the worker failed")
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
