"""What a supervisor tells each process it spawns: the bootstrap data, pickled.

These types are part of the contract between graceful versions
(:mod:`graceful._version`): their module, names and fields change only with
``PROTOCOL``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from graceful.sockets.listeners import Address


@dataclass(frozen=True)
class EntryRef:
    """Where a fresh interpreter finds the entry point: ``module`` and ``qualname``.

    ``module`` is ``"__main__"`` for an entry defined in the script the user ran; a
    spawn child imports that script as ``__mp_main__``.
    """

    module: str
    qualname: str

    def __str__(self) -> str:
        return f"{self.module}:{self.qualname}"


@dataclass(frozen=True)
class MainScript:
    """The script the user ran, for the worker to import as ``__mp_main__``: by
    ``module`` name (``python -m``) or by ``path``; neither for none. ``sys_path``
    is the application's ``sys.path`` entries, in the release the worker is started
    from, which go before its interpreter's own (:mod:`graceful.code.release`)."""

    module: str | None
    path: str | None
    sys_path: list[str]


@dataclass(frozen=True)
class WorkerOptions:
    """How every worker of the service runs, whatever its generation."""

    drain_timeout: float
    backend: str
    #: keyword arguments for the entry function (used by library entry points such
    #: as the ASGI worker; a user's ``@service`` function gets none)
    entry_options: dict[str, Any]
    #: passed to ``anyio.run`` as ``backend_options`` (e.g. ``use_uvloop``)
    backend_options: dict[str, Any]
    #: development mode: a failure before the worker is ready is only reported to
    #: the supervisor, which prints it in one line, not logged here as well
    report_only: bool = False
    #: seconds between two heartbeats of an ``async def`` entry's event loop, which
    #: also publish its request count (:mod:`graceful.wire.vitals`); 0: none
    heartbeat: float = 0.0


@dataclass
class TemplateBootstrap:
    """Everything a generation's template is told at its start (its socket to the
    supervisor travels beside it): what each of the generation's workers is told,
    but which worker it is."""

    entry: EntryRef
    generation: int
    supervisor_pid: int
    listeners: list[tuple[str, Address]]
    options: WorkerOptions
    log_level: int
    main: MainScript


@dataclass
class WorkerBootstrap(TemplateBootstrap):
    """Everything a worker receives from the supervisor in its ``Process`` args (its
    channels to the supervisor travel beside it), or from its template."""

    worker_id: int

    @classmethod
    def of(cls, generation: TemplateBootstrap, worker_id: int) -> WorkerBootstrap:
        """Worker ``worker_id`` of the generation ``generation`` describes."""
        fields = {
            field.name: getattr(generation, field.name) for field in dataclasses.fields(generation)
        }
        return cls(**fields, worker_id=worker_id)


@dataclass(frozen=True)
class StandbyBootstrap:
    """What a standby is told at its start (its channels travel beside it)."""

    entry: EntryRef
    options: WorkerOptions
    log_level: int
    #: the supervisor's wall clock (``time.time_ns()``) before it started the standby
    started_ns: int
    #: it will become a template (preload), not a worker
    template: bool
    #: the application's ``sys.path`` entries, before the interpreter's own
    sys_path: list[str]


@dataclass(frozen=True)
class Assignment:
    """The work a standby is given: exactly one of ``worker`` and ``template``."""

    #: the working directory a process spawned now would start in
    cwd: str
    worker: WorkerBootstrap | None = None
    template: TemplateBootstrap | None = None
