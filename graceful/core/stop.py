"""The service's stop: announced, draining, killing.

The first stop request drains every worker and releases the listeners the supervisor
bound (new connections are refused, not queued for nobody); a second kills them all at
once (:func:`begin`). The supervisor exits once no worker is left: 0 if every worker
finished on its own, 1 if any had to be killed or the first generation failed.

With ``stop_delay``, the first stop request only announces the stop
(:class:`StopAnnounced`, which health checks report) and starts a timer; the service
keeps serving, and restarting crashed workers, until ``StopDelayOver``, or until a
second request drains at once. Reloads are ignored from the first request on.

The stop is always in exactly one of these phases (:data:`PHASES`): :class:`Running`,
:class:`StopAnnounced`, :class:`Draining`, :class:`Killing`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TypeAlias

from graceful.core.fleet import Fleet, Role


@dataclass(frozen=True)
class Running:
    """No stop was asked for."""


@dataclass(frozen=True)
class StopAnnounced:
    """A stop was asked for with ``stop_delay``: the service still serves until
    ``until``, and health checks already report the stop."""

    until: float


@dataclass(frozen=True)
class Draining:
    """Every worker was told to shut down; ``reason``: why the service stops, if not
    by request."""

    reason: str | None = None


@dataclass(frozen=True)
class Killing:
    """Every worker was killed (a second stop request, while draining)."""

    reason: str | None = None


Stop: TypeAlias = Running | StopAnnounced | Draining | Killing
#: Every phase a stop can be in.
PHASES = (Running, StopAnnounced, Draining, Killing)
RUNNING = Running()


class Stopping(Enum):
    """How far the stop has gone, for readers outside the machine: an announced stop
    still serves (``NO``)."""

    NO = "no"
    DRAINING = "draining"
    NOW = "now"


def stopping(stop: Stop) -> Stopping:
    """``stop`` as a :class:`Stopping`."""
    match stop:
        case Draining():
            return Stopping.DRAINING
        case Killing():
            return Stopping.NOW
    return Stopping.NO


def begin(fleet: Fleet, stop: Draining | Killing) -> None:
    """Carry out ``stop``: no generation serves any more; every worker drains, or is
    killed."""
    for generation in fleet.generations.values():
        generation.role = Role.RETIRED
    for worker in list(fleet.workers.values()):
        if isinstance(stop, Killing):
            fleet.kill(worker)
        elif worker.hung and not worker.killed:
            fleet.put_down(worker)  # it would not drain
        elif not worker.killed:
            fleet.drain(worker, stopping=True)


def over(fleet: Fleet, stop: Stop) -> bool:
    """The stop has begun and no worker is left: the supervisor exits."""
    return isinstance(stop, Draining | Killing) and not fleet.workers


def describe(fleet: Fleet, stop: Stop) -> str | None:
    """The status line of a stopping service; None while it runs."""
    match stop:
        case Draining(reason) | Killing(reason):
            return f"stopping: {reason or f'{len(fleet.workers)} workers draining'}"
        case StopAnnounced():
            return f"stopping after stop_delay={fleet.settings.stop_delay:g}s, still serving"
    return None
