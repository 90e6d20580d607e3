"""The supervisor's decisions: a state machine over events, with no I/O.

Theory of operation
-------------------
Everything the supervisor learns arrives as an *event* (:mod:`graceful.core.events`):
a signal, a command, a worker's control message or exit, a timer firing.
:meth:`SupervisorStateMachine.handle` takes one event and the current monotonic time,
updates the state, and returns the *actions* (:mod:`graceful.core.actions`) the
supervisor must carry out, in order: spawn a worker, tell one to shut down, park,
resume or kill one, start a timer, log a line, tell systemd, exit. The process, pipe,
signal and timer plumbing lives in :mod:`graceful.supervisor.loop` and does nothing
but translate between the world and these two vocabularies, so every rule is testable
with plain function calls.

Rule 1: everything that decides what the supervisor does next lives in
:mod:`graceful.core`. Nothing there reads a clock, a socket or a process, and nothing
there imports any of graceful but :mod:`graceful.base`.

The modules
~~~~~~~~~~~
This module is the core: the state, :meth:`~SupervisorStateMachine.handle`, the
handlers of the events, and the rules that combine concerns. Each concern is a module
of its own, which states its contract; the core calls it, and it hands back a decision
(a phase, whether it ordered anything) instead of calling back into the core
(``lint-imports`` checks the layers):

* :mod:`~graceful.core.fleet`: the workers, the generations, the :class:`Settings`,
  and the orders over workers (spawn, drain, park, resume, kill, retire);
* :mod:`~graceful.core.trial`: probation, rollback, and the rejected-code rule;
* :mod:`~graceful.core.verdict`: whether a new generation's answers fail it;
* :mod:`~graceful.core.canary`: a reload's first workers, judged beside the serving
  generation;
* :mod:`~graceful.core.rollout`: rolling reloads;
* :mod:`~graceful.core.scaling`: the number of workers per generation;
* :mod:`~graceful.core.crashes`: who handles a serving worker's crash, and restarts;
* :mod:`~graceful.core.replacement`: a hung or worn-out worker replaced in its slot
  first (the hang and recycling);
* :mod:`~graceful.core.stop`: the stop, announced, draining, killing.

The state
~~~~~~~~~
Each piece of state is held once, and everything else is computed from it (the
read-only properties :attr:`~SupervisorStateMachine.serving`,
:attr:`~SupervisorStateMachine.probation`, :attr:`~SupervisorStateMachine.rejected`,
:attr:`~SupervisorStateMachine.stop_announced`, ... that the loop, the control socket
and the health endpoint read):

=====================  ==============================================================
field                  holds
=====================  ==============================================================
``fleet``              each worker's :class:`WorkerState` and each generation's
                       :class:`Role` (:class:`~graceful.core.fleet.Fleet`)
``trial``              the trial of the newest code, always one of
                       :data:`graceful.core.trial.PHASES`
``canary``             the starting generation's canary, while it is one
``stop``               the service's stop, always one of :data:`graceful.core.stop.PHASES`
``reload_queued``      a reload was asked for while one could not start
``last_reload``,       what is reported: how the last reload ended, the exit status,
``exit_code``,         and whether :class:`Exit` was given
``exited``
=====================  ==============================================================

=========================  ===============================================  ====================
worker state               entered when                                     left when
=========================  ===============================================  ====================
``STARTING``               spawned                                          ready, told to stop,
                                                                            or exited
``READY``                  it reported ready                                told to drain, or
                                                                            exited
``DRAINING``               told to shut down (its generation retired, or    exited (it is then
                           the service stops)                               forgotten)
``PARKED``                 told to park (its generation was replaced, with  told to resume, or
                           probation on, and its server can be parked)      to shut down
``RESUMING``               told to resume (a rollback)                      ready, or exited
=========================  ===============================================  ====================

=========================  ===============================================  ====================
generation role            entered when                                     left when
=========================  ===============================================  ====================
``STARTING`` (at most 1)   started by ``Start`` or a reload                 promoted, or failed
``SERVING`` (at most 1)    every one of its workers is ready                replaced by the next
                                                                            one, or the stop
``RETIRED``                replaced, failed, or the service stops           its last worker
                                                                            exited (forgotten)
``PARKED`` (at most 1)     replaced, with probation on and every ready      the probation ends,
                           worker parkable                                  a rollback, the next
                                                                            promotion, the stop
``RESUMING`` (at most 1)   a rollback began                                 every worker resumed
                                                                            (serving) or none
                                                                            did (retired)
=========================  ===============================================  ====================

===============  ===============================================  ==========================
trial            entered when                                     left when
===============  ===============================================  ==========================
``NoTrial``      the start; a promotion that parks nothing; a     a promotion parks the
                 probation ends without a rollback (passed, cut   previous generation
                 short, the stop); a rollback fails, or the stop
                 ends it
``OnProbation``  a promotion parks the previous generation        ``ProbationOver``, the next
                                                                  promotion, the stop; a
                                                                  rollback begins
``RollingBack``  a crash, ``WorkerBroken``, a hang, a failing      no worker still resumes;
                 verdict on ``AnswersCounted`` or                 the stop
                 ``RollbackRequested`` during the probation
``Rejected``     a rollback completed                             the next promotion
===============  ===============================================  ==========================

=================  ==============================================  ========================
stop               entered when                                    left when
=================  ==============================================  ========================
``Running``        the start                                       the first stop request
``StopAnnounced``  the first stop request, with ``stop_delay``     ``StopDelayOver``, or a
                                                                   second request
``Draining``       the stop begins (or the first generation        a stop request while
                   failed: with its reason)                        draining
``Killing``        a stop request while draining                   (the exit)
=================  ==============================================  ========================

One step
~~~~~~~~
:meth:`~SupervisorStateMachine.handle` takes three steps:

1. **The event's own effect.** An event about a worker
   (:class:`~graceful.core.events.WorkerEvent`) that has exited is ignored: its worker
   is forgotten. Otherwise the event's handler does what the table below says.
2. **The fixed point.** The state-triggered rules, :data:`STATE_RULES`, are tried in
   order, over and over, until none fires (as h11's
   ``_fire_state_triggered_transitions``). No handler calls them: whatever an event
   changed, the rules see it.
3. **The answer** to a scale request (:class:`~graceful.core.actions.ScaleEnded`, after
   the status line it led to) comes last, so that it tells the state the request led
   to.

======================  ==========================================================
event                   its own effect
======================  ==========================================================
``Start``               generation 1 starts
``ReloadRequested``     a generation starts; while one is starting or a rollback
                        runs, one follow-up is queued; while stopping, ignored. In
                        development mode, a newer change first supersedes the
                        generation still starting
``WorkerReady``         the worker is ready (a starting generation is promoted by
                        the rules); a replacement rejoins its serving generation; a
                        worker of a retired generation is drained at once
``WorkerFailed``        the cause is kept for the worker's exit; a parked worker that
                        gives up its park is let go
``WorkerMisbehaved``    the worker is killed (and a starting generation fails)
``WorkerExited``        a starting generation fails; a serving worker's crash goes to
                        :mod:`~graceful.core.crashes`; a draining one is forgotten
``ReadyTimeout``        a starting generation fails; a late replacement, or a worker
                        that does not resume, is killed
``DrainTimeout``        the worker is killed
``WorkerHung``          its stack is dumped; then a replacement starts in its slot
                        (serving), its generation rolls back (on probation) or fails
                        (starting), or it is killed (parked, or a reload is starting)
``WorkerWornOut``       it is marked for recycling (the rules start it)
``AnswersCounted``      the generation on probation rolls back, or the canary or
                        the generation starting fails (its workers drain, the
                        reload fails), if the verdict says so
                        (:mod:`~graceful.core.verdict`)
``CanaryOver``          the canary passed: the reload goes on as configured (see
                        :mod:`~graceful.core.canary`)
``RestartDue``          the empty slot of the serving generation is filled
``StopRequested``,      see :mod:`~graceful.core.stop`
``StopDelayOver``
``ProbationOver``,      see :mod:`~graceful.core.trial`
``WorkerBroken``,
``RollbackRequested``
``ScaleRequested``      see :mod:`~graceful.core.scaling`
======================  ==========================================================

The fixed point
~~~~~~~~~~~~~~~
:data:`STATE_RULES`, in the order they are tried; each fires only when its condition
holds, and its condition no longer holds once it has fired:

1. **forget the canary** whose generation no longer starts (promoted, failed,
   retired);
2. **settle the rollback** (:func:`graceful.core.trial.settle`): no worker of the
   resuming generation is still resuming: it serves again, or the rollback failed;
3. **settle the take-back** of an upgrade (:func:`graceful.core.succession.settle`);
4. **start the canary's clock** once all its workers are ready
   (:func:`graceful.core.canary.start_clock`);
5. **advance the rollout** (:func:`graceful.core.rollout.advance`): a rolling
   generation starts and no rollback runs: an old worker is parked per new one ready,
   and new ones start within ``size + max_surge``;
6. **promote** the starting generation once its ``size`` workers are all ready, unless
   a rollback runs (then the newer code wins once it has ended) or its canary is not
   over: it serves, the previous one is parked for its probation
   (:func:`graceful.core.trial.park`) or drains, and the reload ends;
7. **recycle** the next worn-out worker of the serving generation
   (:func:`graceful.core.replacement.recycle_next`), while fewer than
   ``max_recycling`` are under way and no reload, rollback, stop or hand-over is;
8. **start the queued reload**, once no generation starts, no rollback runs and no
   stop was asked for;
9. **exit** once the stop has begun and no worker is left: :class:`Exit`, once.

Crashes
~~~~~~~
A worker of the serving generation that exits unexpectedly (it was not draining,
parked or resuming, and the stop has not begun) is handled by the first of
:data:`graceful.core.crashes.HANDLERS` that takes it, in this order: a rollback under
way, the probation (a rollback), a rollout, the rejected-code rule, the restart with
backoff. (A resumed worker of the serving generation that exits is refilled by the
restart alone.)

The rules of generations
~~~~~~~~~~~~~~~~~~~~~~~~
* A **generation** is the set of ``size`` worker processes started together. At most
  one generation is *serving*, at most one is *starting*; any number may be
  *retired* (draining, or failed and being cleaned up).
* A reload starts a new generation. While one is starting, further reload requests
  are coalesced into a single follow-up, started when the current one ends either
  way, so that the newest code on disk wins.
* A starting generation becomes the serving one when every worker has reported
  ready. Only then is the previous serving generation told to shut down.
* A starting generation *fails* if a worker exits, reports a failure, or misses
  ``ready_timeout``. The culprit is killed; its siblings, which may already have
  accepted connections, are drained like an old generation; the serving generation
  is untouched. If there is no serving generation (the first start), the
  supervisor stops, and exits with status 1 once everything is reaped (in
  development mode, it waits for the next change instead).
* A worker that writes anything but a control message on its channel is killed;
  its exit is then handled like any other.
* A draining worker that outlives ``drain_timeout`` (plus ``kill_grace`` for its
  cancelled handlers to clean up) is killed. When the service stops, a worker that
  never became ready is not waited for that long: it gets ``kill_grace`` to stop,
  then it is killed, without making the exit status 1.
* Every generation started is announced (:class:`GenerationStarted`), and every
  reload's end, either way (:class:`ReloadEnded`), so that whoever asked for a
  reload can be told how it ended. A reload still starting when the service stops
  ends as failed ("the service is stopping").

Invariants
~~~~~~~~~~
Checked by ``tests/core/test_decisions_properties.py`` over random event sequences:
the trial and the stop are each in one of their phases; at most one generation serves
and at most one starts; each slot names a live worker of its generation; no
generation has more than ``size`` workers holding the listeners (those being killed
aside); a rollout has at most ``size + max_surge``; once no reload or rollback runs,
only the serving generation has ready workers (never a mixed fleet, but for a canary,
which is a reload); a worker is told to shut down at most once and killed at most
once, and never after its exit; nothing is spawned once the service stops; a judged
rollback never begins before ``rollback_min_requests`` answers; a canary never
outlives a failed verdict, and is never promoted before its time is over; ``Exit``
comes once, and only when no worker is left.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace

from graceful.core import (
    canary,
    crashes,
    replacement,
    rollout,
    scaling,
    stop,
    succession,
    trial,
    verdict,
)
from graceful.core.actions import (
    STOPPING,
    SUPERSEDED,
    Action,
    Announce,
    DumpStack,
    Exit,
    GenerationServing,
    GenerationStarted,
    KillWorker,
    Log,
    ParkWorker,
    Phase,
    ProbationEnded,
    ReloadEnded,
    ReloadOutcome,
    ResumeWorker,
    RollbackEnded,
    ScaleEnded,
    ShutdownWorker,
    SpawnWorker,
    StartTimer,
    StopAccepting,
    WorkerOrder,
)
from graceful.core.canary import Canary
from graceful.core.crashes import Crash
from graceful.core.events import (
    AnswersCounted,
    CanaryOver,
    DrainTimeout,
    Event,
    HandOver,
    ProbationOver,
    ReadyTimeout,
    ReloadRequested,
    RestartDue,
    RollbackRequested,
    ScaleRequested,
    Start,
    StopDelayOver,
    StopRequested,
    SuccessorPassed,
    TakeBack,
    WorkerBroken,
    WorkerEvent,
    WorkerExited,
    WorkerFailed,
    WorkerHung,
    WorkerMisbehaved,
    WorkerReady,
    WorkerWornOut,
)
from graceful.core.fleet import (
    Counters,
    Fleet,
    Generation,
    Role,
    Settings,
    Strategy,
    Worker,
    WorkerState,
)
from graceful.core.stop import Draining, Killing, Running, Stop, StopAnnounced, Stopping
from graceful.core.succession import (
    NO_SUCCESSOR,
    ParkedForSuccessor,
    Succeeded,
    Succession,
    TakingBack,
)
from graceful.core.trial import NO_TRIAL, NoTrial, OnProbation, Rejected, RollingBack, Trial

__all__ = [
    "STOPPING",
    "SUPERSEDED",
    "Action",
    "Announce",
    "AnswersCounted",
    "CanaryOver",
    "Counters",
    "DrainTimeout",
    "DumpStack",
    "Event",
    "Exit",
    "Generation",
    "GenerationServing",
    "GenerationStarted",
    "HandOver",
    "KillWorker",
    "Log",
    "ParkWorker",
    "Phase",
    "ProbationEnded",
    "ProbationOver",
    "ReadyTimeout",
    "ReloadEnded",
    "ReloadOutcome",
    "ReloadRequested",
    "RestartDue",
    "ResumeWorker",
    "Role",
    "RollbackEnded",
    "RollbackRequested",
    "ScaleEnded",
    "ScaleRequested",
    "Settings",
    "ShutdownWorker",
    "SpawnWorker",
    "Start",
    "StartTimer",
    "StopAccepting",
    "StopDelayOver",
    "StopRequested",
    "Stopping",
    "Strategy",
    "SuccessorPassed",
    "SupervisorStateMachine",
    "TakeBack",
    "Worker",
    "WorkerBroken",
    "WorkerEvent",
    "WorkerExited",
    "WorkerFailed",
    "WorkerHung",
    "WorkerMisbehaved",
    "WorkerOrder",
    "WorkerReady",
    "WorkerState",
    "WorkerWornOut",
]


class SupervisorStateMachine:
    """The supervisor's state and rules. See the module docstring.

    Call :meth:`handle` with each event in the order it happened; carry out the
    returned actions in order.
    """

    def __init__(self, settings: Settings) -> None:
        #: the workers and generations
        self.fleet = Fleet(settings)
        #: the trial of the newest code: always one of :data:`graceful.core.trial.PHASES`
        self.trial: Trial = NO_TRIAL
        #: the service's stop: always one of :data:`graceful.core.stop.PHASES`
        self.stop: Stop = stop.RUNNING
        #: an upgrade's hand-over to a successor supervisor: always one of
        #: :data:`graceful.core.succession.PHASES`
        self.succession: Succession = NO_SUCCESSOR
        #: a reload was asked for while one could not start: it starts once one can
        self.reload_queued = False
        self.exit_code = 0
        self.exited = False
        #: how the last reload ended, for status reporting
        self.last_reload: ReloadOutcome | None = None
        #: the starting generation's canary, while it is one (see
        #: :mod:`graceful.core.canary`)
        self.canary: Canary | None = None
        #: the answer to the scale request being handled, given once the rules have
        #: settled (with a status line, if it scaled)
        self._answer: tuple[ScaleEnded, bool] | None = None

    # -- what the rest of the supervisor reads --------------------------------------

    @property
    def settings(self) -> Settings:
        return self.fleet.settings

    @property
    def workers(self) -> dict[int, Worker]:
        """Live workers by serial (a worker is forgotten once it has exited)."""
        return self.fleet.workers

    @property
    def generations(self) -> dict[int, Generation]:
        """Generations by number, until they are retired and empty."""
        return self.fleet.generations

    @property
    def size(self) -> int:
        """Workers per generation, as scaling left it."""
        return self.fleet.size

    @property
    def counters(self) -> Counters:
        return self.fleet.counters

    @property
    def serving(self) -> int | None:
        """The number of the generation that serves, if any."""
        return self._number_of(Role.SERVING)

    @property
    def starting(self) -> int | None:
        """The number of the generation that is starting, if any."""
        return self._number_of(Role.STARTING)

    @property
    def accepting(self) -> int:
        """How many workers accept connections now (ready, of whichever generation)."""
        return sum(1 for worker in self.workers.values() if worker.state is WorkerState.READY)

    @property
    def probation(self) -> OnProbation | None:
        """The serving generation's probation, while one runs."""
        return self.trial if isinstance(self.trial, OnProbation) else None

    @property
    def rollback(self) -> RollingBack | None:
        """The rollback under way, if any."""
        return self.trial if isinstance(self.trial, RollingBack) else None

    @property
    def rejected(self) -> Rejected | None:
        """Set by a completed rollback, until the next generation is promoted: crashed
        workers are not restarted from the (rejected) code on disk."""
        return self.trial if isinstance(self.trial, Rejected) else None

    @property
    def stopping(self) -> Stopping:
        """How far the stop has gone (an announced stop still serves: ``NO``)."""
        return stop.stopping(self.stop)

    @property
    def stop_announced(self) -> bool:
        """True from the first stop request on (for health checks), ``stop_delay``
        included."""
        return not isinstance(self.stop, Running)

    def can_park_for_successor(self) -> bool:
        """Whether a hand-over now could park the serving generation (see
        :func:`graceful.core.succession.can_park`)."""
        return succession.can_park(self.fleet, self.fleet.with_role(Role.SERVING))

    def empty_slots(self) -> int:
        """How many of the serving generation's slots have no worker, not even one
        starting (after a rollback, the rejected-code rule leaves them so)."""
        serving = self.fleet.with_role(Role.SERVING)
        return self.fleet.empty_slots(serving) if serving is not None else 0

    def status(self) -> str:
        """One line on the service's state, for ``STATUS=``."""
        fleet = self.fleet
        serving = fleet.with_role(Role.SERVING)
        stopping = stop.describe(fleet, self.stop)
        handed_over = succession.describe(self.succession)
        if stopping is not None:
            line = stopping
        elif handed_over:
            line = handed_over
        elif serving is None:
            line = "starting generation 1"
        else:
            ready = sum(1 for w in fleet.in_slots(serving) if w.state is WorkerState.READY)
            line = f"generation {serving.number} serving, {ready}/{self.size} workers ready"
            line += trial.describe(fleet, self.trial, serving)
            starting = fleet.with_role(Role.STARTING)
            if self.canary is not None:
                line += canary.describe(self.canary, self.settings.canary_seconds, fleet.now)
            elif starting is not None and starting.rolling:
                done = len(fleet.workers_in(starting, WorkerState.READY))
                line += f"; generation {starting.number} rolling in, {done}/{self.size} ready"
            elif starting is not None:
                line += f"; generation {starting.number} starting"
        if self.last_reload is not None:
            line += f"; last reload: {self.last_reload}"
        return line

    def _number_of(self, role: Role) -> int | None:
        generation = self.fleet.with_role(role)
        return generation.number if generation is not None else None

    @property
    def _stop_begun(self) -> bool:
        return isinstance(self.stop, Draining | Killing)

    # -- entry point ----------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Action]:
        """Apply ``event`` at monotonic time ``now``; return the actions to carry out."""
        if self.exited:
            return []
        self.fleet.out = []
        self.fleet.now = now
        self._dispatch(event)
        while any(rule(self) for rule in STATE_RULES):
            pass
        if self._answer is not None:
            answer, scaled = self._answer
            self._answer = None
            if scaled:
                self._announce(Phase.STATUS)
            self.fleet.out.append(answer)
        return self.fleet.out

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, WorkerEvent):
            worker = self.workers.get(event.serial)
            if worker is not None:  # else it has exited, and is forgotten
                self._dispatch_worker_event(worker, event)
            return
        match event:
            case Start():
                self._start_generation()
            case ReloadRequested():
                self._on_reload()
            case StopRequested(delay, exit_code):
                self.exit_code = max(self.exit_code, exit_code)
                self._on_stop_requested(delay)
            case StopDelayOver():
                if isinstance(self.stop, StopAnnounced):
                    self._on_stop()
            case RestartDue(generation, worker_id):
                crashes.restart_due(self.fleet, self.trial, generation, worker_id)
            case RollbackRequested(by):
                self._on_rollback_requested(by)
            case ProbationOver(generation):
                self._on_probation_over(generation)
            case AnswersCounted():
                self._on_answers(event)
            case CanaryOver(generation):
                self._on_canary_over(generation)
            case ScaleRequested():
                self._on_scale(event)
            case HandOver(park):
                self._hand_over(park)
            case TakeBack(cause):
                self._take_back(cause)
            case SuccessorPassed():
                if isinstance(self.succession, ParkedForSuccessor):
                    self.succession = Succeeded()
                    self.fleet.log(logging.INFO, "upgrade: the successor passed its probation")
                    self._begin_stop(Draining("handed over to the successor"), exit_code=0)

    def _dispatch_worker_event(
        self,
        worker: Worker,
        event: WorkerReady
        | WorkerFailed
        | WorkerMisbehaved
        | WorkerExited
        | ReadyTimeout
        | DrainTimeout
        | WorkerBroken
        | WorkerHung
        | WorkerWornOut,
    ) -> None:
        match event:
            case WorkerReady(parkable=parkable):
                self._on_ready(worker, parkable)
            case WorkerFailed(cause=cause):
                self._on_failed(worker, cause)
            case WorkerMisbehaved(detail=detail):
                self._on_misbehaved(worker, detail)
            case WorkerExited(exitcode=exitcode):
                self._on_exit(worker, exitcode)
            case ReadyTimeout():
                self._on_ready_timeout(worker)
            case DrainTimeout():
                self._on_drain_timeout(worker)
            case WorkerBroken(cause=cause):
                self._on_broken(worker, cause)
            case WorkerHung(silent=silent):
                self._on_hung(worker, silent)
            case WorkerWornOut(limit=limit, detail=detail):
                if worker.worn_out is None and worker.state is WorkerState.READY:
                    worker.worn_out = (limit, detail)

    # -- the state-triggered rules (STATE_RULES) ------------------------------------

    def _settle_rollback(self) -> bool:
        """A rollback whose workers are no longer resuming ends, either way."""
        if not isinstance(self.trial, RollingBack):
            return False
        rollback = self.trial
        settled = trial.settle(self.fleet, rollback)
        if settled is None:
            return False
        self.trial = settled
        last = self.last_reload
        if (
            isinstance(settled, Rejected)
            and last is not None
            and last.generation == rollback.from_generation
        ):
            self.last_reload = replace(last, outcome="rolled back", cause=rollback.cause)
        self._announce(Phase.READY)
        return True

    def _forget_canary(self) -> bool:
        """A canary is forgotten once its generation no longer starts (promoted,
        failed, superseded, retired by the stop or a hand-over)."""
        if self.canary is None:
            return False
        starting = self.fleet.with_role(Role.STARTING)
        if starting is not None and starting.number == self.canary.generation:
            return False
        self.canary = None
        return True

    def _start_canary_clock(self) -> bool:
        """A canary is judged from when all its workers are ready."""
        return self.canary is not None and canary.start_clock(self.fleet, self.canary)

    def _advance_rollout(self) -> bool:
        """A rolling reload takes its next step (none during a rollback)."""
        if isinstance(self.trial, RollingBack) or self._stop_begun:
            return False
        return rollout.advance(self.fleet)

    def _promote_ready(self) -> bool:
        """The starting generation serves once all its workers are ready; during a
        rollback, only once the rollback has ended (then the newer code wins)."""
        starting = self.fleet.with_role(Role.STARTING)
        if starting is None or isinstance(self.trial, RollingBack) or self.canary is not None:
            return False
        if not self.fleet.complete(starting):
            return False
        self._promote(starting)
        return True

    def _recycle(self) -> bool:
        """The next worn-out worker of the serving generation is replaced, while the
        serving generation is alone (see :mod:`graceful.core.replacement`)."""
        serving = self.fleet.with_role(Role.SERVING)
        if (
            serving is None
            or self.starting is not None
            or isinstance(self.trial, RollingBack)
            or self.stop_announced
            or self.succession is not NO_SUCCESSOR
        ):
            return False
        return replacement.recycle_next(self.fleet, serving)

    def _start_queued_reload(self) -> bool:
        """A reload queued behind a start or a rollback starts once neither runs."""
        if not self.reload_queued or not self._may_start_generation():
            return False
        self.reload_queued = False
        self._start_generation()
        return True

    def _settle_take_back(self) -> bool:
        """A take-back whose workers are no longer resuming ends: the resumed
        generation serves again, or, if none resumed, a new one starts."""
        if not isinstance(self.succession, TakingBack):
            return False
        settled = succession.settle(self.fleet, self.succession)
        if settled is None:
            return False
        self.succession = NO_SUCCESSOR
        if not settled and self._may_start_generation():
            self._start_generation()
        self._announce(Phase.READY)
        return True

    def _exit_once_stopped(self) -> bool:
        """The supervisor exits once it stops and no worker is left."""
        if self.exited or not stop.over(self.fleet, self.stop):
            return False
        self.exited = True
        self.fleet.out.append(Exit(self.exit_code))
        return True

    # -- generations ----------------------------------------------------------------

    def _may_start_generation(self) -> bool:
        return (
            not self.stop_announced
            and self.succession is NO_SUCCESSOR
            and self.starting is None
            and not isinstance(self.trial, RollingBack)
        )

    def _start_generation(self) -> None:
        fleet = self.fleet
        first = self.serving is None
        serving = fleet.with_role(Role.SERVING)
        for serial in sorted(serving.leaving) if serving is not None else ():
            if fleet.workers[serial].hung:  # new workers come: it need not wait for one
                fleet.put_down(fleet.workers[serial])
        generation = fleet.add_generation(Role.STARTING)
        fleet.out.append(GenerationStarted(generation.number, first))
        batches = 1
        if serving is not None and canary.wanted(fleet, serving):
            # the rest start once it passed (see graceful.core.canary)
            self.canary = canary.start(fleet, generation, serving)
            batches = 1 + -(-self.size // self.settings.max_surge)
            wait = batches * self.settings.ready_timeout + self.settings.canary_seconds
            self._announce(Phase.RELOADING, extend=wait + self.settings.kill_grace)
            return
        generation.rolling = rollout.may_roll(fleet)
        if generation.rolling:
            # its workers come from the rollout (a state-triggered rule)
            surge = self.settings.max_surge
            batches = -(-self.size // surge)
            fleet.log(
                logging.INFO,
                f"starting generation {generation.number} ({self.size} workers, "
                f"rolling: {surge} at a time)",
                narrative=not first,
            )
        else:
            fleet.log(
                logging.INFO,
                f"starting generation {generation.number} ({self.size} workers)",
                narrative=not first,
            )
            for worker_id in range(self.size):
                fleet.spawn(generation, worker_id)
        wait = batches * self.settings.ready_timeout + self.settings.kill_grace
        self._announce(Phase.STARTING if first else Phase.RELOADING, extend=wait)

    def _promote(self, generation: Generation) -> None:
        fleet = self.fleet
        previous = fleet.with_role(Role.SERVING)
        if previous is not None:
            previous.role = Role.RETIRED  # drained, or parked, below
        generation.role = Role.SERVING
        took = fleet.now - generation.started_at
        fleet.out.append(GenerationServing(generation.number, first=previous is None))
        if previous is None:
            fleet.log(
                logging.INFO, f"generation {generation.number} is serving (ready in {took:.3f}s)"
            )
            if self.last_reload is not None:
                # development mode: the first to serve after failed ones (see
                # _fail_generation), which was waited for as a reload is
                self._reload_served(generation, took)
        else:
            self._reload_served(generation, took)
            # the trial of the code it replaces ends; its own begins if it can
            if isinstance(self.trial, OnProbation):
                replaced = f"generation {generation.number} replaced it"
                trial.end_probation(fleet, self.trial, "cut short", replaced)
            self.trial = trial.park(fleet, previous, generation) or NO_TRIAL
            then = (
                f"generation {previous.number} parked for {self.settings.probation:g}s of probation"
                if isinstance(self.trial, OnProbation)
                else f"draining generation {previous.number}"
            )
            fleet.log(
                logging.INFO,
                f"generation {generation.number} is serving (ready in {took:.3f}s); {then}",
                narrative=True,
            )
        self._announce(Phase.READY)

    def _fail_generation(self, generation: Generation, culprit: Worker, cause: str) -> None:
        fleet = self.fleet
        fleet.kill(culprit)
        self._retire_starting(generation)
        if self.serving is None and self.settings.development:
            # nothing serves yet, and the next change may fix it: wait for it
            self._reload_failed(generation, cause)
            fleet.log(
                logging.ERROR,
                f"generation {generation.number} failed to start: {cause}; waiting for a change",
                narrative=True,
            )
            self._announce(Phase.STATUS)
            return
        if self.serving is None:
            failed = f"generation {generation.number} failed to start: {cause}"
            fleet.log(logging.ERROR, failed)
            self._begin_stop(Draining(failed), exit_code=1)
            return
        self._reload_failed(generation, cause)
        fleet.log(
            logging.ERROR,
            f"reload failed: generation {generation.number}: {cause}; "
            f"generation {self.serving} keeps serving",
            narrative=True,
        )
        self._announce(Phase.READY)

    def _supersede_starting(self) -> None:
        """Development mode: a change arrived while a generation starts. It will never
        serve the newest code, and it may hang: its workers still starting are
        killed, those ready drain, and the reload ends as superseded."""
        starting = self.fleet.with_role(Role.STARTING)
        if starting is None or isinstance(self.trial, RollingBack) or self.stop_announced:
            return
        for worker in self.fleet.members(starting):
            if worker.state is WorkerState.STARTING:
                worker.cause = worker.cause or SUPERSEDED
                self.fleet.kill(worker)
        self._retire_starting(starting)
        self._reload_failed(starting, SUPERSEDED)

    def _retire_starting(self, generation: Generation) -> None:
        """A starting generation will not serve: it drains, and if it was rolling in,
        the serving generation gets back every slot it had replaced."""
        self.fleet.retire(generation)
        serving = self.fleet.with_role(Role.SERVING)
        if generation.rolling and serving is not None:
            rollout.restore(self.fleet, serving)

    def _reload_served(self, generation: Generation, took: float) -> None:
        self._reload_ended(ReloadOutcome(generation.number, "serving", None, took))
        self.counters.reloads_serving += 1

    def _reload_failed(self, generation: Generation, cause: str) -> None:
        took = self.fleet.now - generation.started_at
        self._reload_ended(ReloadOutcome(generation.number, "failed", cause, took))
        self.counters.reloads_failed += 1

    def _reload_ended(self, outcome: ReloadOutcome) -> None:
        self.last_reload = outcome
        self.fleet.out.append(ReloadEnded(outcome))

    def _announce(self, phase: Phase, extend: float | None = None) -> None:
        self.fleet.out.append(Announce(phase, self.status(), extend))

    # -- requests -------------------------------------------------------------------

    def _on_reload(self) -> None:
        if self.settings.development:
            self._supersede_starting()
        if self.stop_announced:
            self.fleet.log(logging.INFO, "reload ignored: the service is stopping")
        elif isinstance(self.succession, ParkedForSuccessor | Succeeded):
            self.fleet.log(
                logging.INFO,
                "reload ignored: a successor supervisor serves (graceful upgrade); "
                "ask it, through the PID file",
            )
        elif isinstance(self.succession, TakingBack):
            if not self.reload_queued:
                self.fleet.log(
                    logging.INFO, "reload requested while an upgrade is rolled back; it will follow"
                )
            self.reload_queued = True
        elif isinstance(self.trial, RollingBack):
            if not self.reload_queued:
                self.fleet.log(
                    logging.INFO, "reload requested during a rollback; it will follow it"
                )
            self.reload_queued = True
        elif self.starting is not None:
            if not self.reload_queued:
                self.fleet.log(
                    logging.INFO,
                    f"reload requested while generation {self.starting} is starting; "
                    "one more reload will follow it",
                    narrative=True,
                )
            self.reload_queued = True
        else:
            self._start_generation()

    def _on_rollback_requested(self, by: str) -> None:
        phase = self.trial
        run = self.canary
        if run is not None and not self._stop_begun:
            # the newest code is the canary's: it is what a rollback takes back
            self._fail_on_answers(run.generation, run.beside, f"canary stopped by {by}", None)
            self.fleet.out.append(
                RollbackEnded(
                    True,
                    f"generation {run.generation}'s canary stopped; generation "
                    f"{run.beside} serves on",
                )
            )
            return
        if self._stop_begun:
            refused = "the service is stopping"
        elif isinstance(phase, RollingBack):
            return  # it is answered when the rollback under way ends
        elif not isinstance(phase, OnProbation):
            refused = "no generation is parked (no reload on probation)"
        elif not self._roll_back(phase, f"generation {phase.generation} rolled back by {by}"):
            refused = "no parked worker is left to resume"
        else:
            return
        self.fleet.log(logging.WARNING, f"rollback requested by {by} refused: {refused}")
        self.fleet.out.append(RollbackEnded(False, f"nothing to roll back to: {refused}"))

    def _roll_back(self, probation: OnProbation, cause: str) -> bool:
        """Begin a rollback from ``probation``; False (and the probation goes on) if
        no parked worker is left. A canary judged beside the generation rolled back
        is judged beside the one resuming from now on."""
        rollback = trial.roll_back(self.fleet, probation, cause)
        if rollback is None:
            return False
        self.trial = rollback
        if self.canary is not None and self.canary.beside == probation.generation:
            self.canary.beside = rollback.to_generation
        self._announce(Phase.STATUS)
        return True

    def _on_probation_over(self, number: int) -> None:
        probation = self.trial
        if not isinstance(probation, OnProbation) or probation.generation != number:
            return
        if probation.verdict is not None:
            # its answers failed it, and nothing was left to roll back to
            failed = f"generation {number}'s {probation.verdict}; nothing was left to roll back to"
            self.fleet.log(logging.ERROR, f"generation {number} failed its probation: {failed}")
            trial.end_probation(self.fleet, probation, "failed", failed)
            self.trial = NO_TRIAL
            self._announce(Phase.STATUS)
            return
        seconds = f"{self.settings.probation:g}s"
        unjudged = verdict.unjudged(probation.answers, self.settings)
        also = f"; {unjudged}" if unjudged else ""
        self.fleet.log(
            logging.INFO,
            f"generation {number} passed its probation ({seconds}{also}); "
            f"parked generation {probation.parked} exits",
        )
        passed = f"passed {seconds} of probation" + (f" ({unjudged})" if unjudged else "")
        trial.end_probation(self.fleet, probation, "passed", passed)
        self.trial = NO_TRIAL
        self._announce(Phase.STATUS)

    def _on_answers(self, counted: AnswersCounted) -> None:
        """A judged generation's answers: a verdict rolls back the one on probation,
        fails the canary, or fails a generation that answers as it starts (its
        first workers accept before the others are ready) before it is promoted (see
        :mod:`graceful.core.verdict`)."""
        phase = self.trial
        if isinstance(phase, OnProbation) and phase.generation == counted.generation:
            if phase.verdict is not None:  # judged: only its count is kept up to date
                self.trial = replace(phase, answers=counted.answers)
                return
            cause = verdict.judge(
                counted.answers,
                counted.baseline,
                self.settings,
                old=phase.parked,
                when="before the reload",
            )
            self.trial = replace(phase, answers=counted.answers, verdict=cause)
            if cause is not None:
                self._roll_back(self.trial, f"generation {counted.generation}'s {cause}")
            return
        run = self.canary
        if run is not None and run.generation == counted.generation:
            cause = canary.count(self.fleet, run, counted.answers, counted.baseline)
            if cause is not None:
                self._fail_on_answers(
                    run.generation, run.beside, f"canary failed: {cause}", run.share
                )
            return
        starting = self.fleet.with_role(Role.STARTING)
        serving = self.fleet.with_role(Role.SERVING)
        if (
            starting is None
            or serving is None
            or starting.number != counted.generation
            or isinstance(self.trial, RollingBack)
            or self.stop_announced
        ):
            return
        cause = verdict.judge(
            counted.answers, counted.baseline, self.settings, old=serving.number, when="meanwhile"
        )
        if cause is not None:
            self._fail_on_answers(starting.number, serving.number, f"judged as it started: {cause}")

    def _on_canary_over(self, number: int) -> None:
        run = self.canary
        if run is None or run.generation != number or run.judged_from is None:
            return
        starting = self.fleet.generations[number]
        detail = canary.passed(self.fleet, run)
        self.fleet.log(logging.INFO, f"generation {number}: {detail}", narrative=True)
        self.counters.canaries["passed"] = self.counters.canaries.get("passed", 0) + 1
        self.canary = None
        canary.proceed(self.fleet, starting)
        self._announce(Phase.STATUS)

    def _fail_on_answers(
        self, number: int, beside: int, failed: str, share: float | None = None
    ) -> None:
        """Starting generation ``number`` (a canary, or not) failed on its answers:
        its workers drain, generation ``beside`` goes on serving, and the reload
        fails with ``failed``."""
        starting = self.fleet.generations[number]
        if self.canary is not None and self.canary.generation == number:
            self.counters.canaries["failed"] = self.counters.canaries.get("failed", 0) + 1
        self.canary = None
        self._retire_starting(starting)
        self._reload_failed(starting, failed)
        if isinstance(self.trial, NoTrial | Rejected):
            # the code on disk was judged bad: a scale-up or a restart must not run
            # it (during another generation's probation, that probation goes on)
            self.trial = Rejected(number, failed, beside, rolled_back=False)
        had = f"; it had {share:.1%} of the traffic" if share is not None else ""
        self.fleet.log(
            logging.ERROR,
            f"reload failed: generation {number}'s {failed}{had}; its workers drain, "
            f"generation {beside} keeps serving",
            narrative=True,
        )
        self._announce(Phase.READY)

    def _hand_over(self, park: bool) -> None:
        """The successor supervisor serves: see :mod:`graceful.core.succession`."""
        if self.succession is not NO_SUCCESSOR or self.stop_announced:
            return
        fleet = self.fleet
        starting = fleet.with_role(Role.STARTING)
        if starting is not None:
            # (not _retire_starting: the workers a rollout parked are not resumed, they
            # go with the rest of the serving generation)
            fleet.retire(starting)
            self._reload_failed(starting, succession.UPGRADED)
        if isinstance(self.trial, OnProbation):
            trial.end_probation(fleet, self.trial, "cut short", succession.UPGRADED)
            self.trial = NO_TRIAL
        elif isinstance(self.trial, RollingBack):
            # (the loop hands over only once no rollback runs; one may have begun
            # since): the generation resuming will not serve
            resuming = fleet.generations.get(self.trial.to_generation)
            if resuming is not None:
                fleet.retire(resuming)
            self.fleet.out.append(RollbackEnded(False, succession.UPGRADED))
            self.trial = NO_TRIAL
        self.reload_queued = False
        parked = succession.hand_over(fleet, fleet.with_role(Role.SERVING), park=park)
        if parked is not None:
            self.succession = parked
            self._announce(Phase.STATUS)
            return
        self.succession = Succeeded()
        fleet.log(
            logging.INFO, f"upgrade: the successor serves; draining {len(self.workers)} workers"
        )
        self._begin_stop(Draining("handed over to the successor"), exit_code=0)

    def _take_back(self, cause: str) -> None:
        """The successor failed during its probation: resume the parked generation."""
        if not isinstance(self.succession, ParkedForSuccessor) or self._stop_begun:
            return
        taking_back = succession.take_back(self.fleet, self.succession, cause)
        if taking_back is not None:
            self.succession = taking_back
            self._announce(Phase.STATUS)
            return
        self.succession = NO_SUCCESSOR
        if self._may_start_generation():
            self._start_generation()

    def _on_scale(self, request: ScaleRequested) -> None:
        fleet = self.fleet
        workers = scaling.target(fleet, request)
        refused = scaling.refusal(fleet, workers, self.trial, stopping=self.stop_announced)
        if refused is None and self.canary is not None:
            refused = f"generation {self.canary.generation}'s canary is being judged"
        if refused is None and self.succession is not NO_SUCCESSOR:
            refused = "the service was handed over to a successor supervisor (graceful upgrade)"
        if refused is not None:
            fleet.log(logging.WARNING, f"scaling requested by {request.by} refused: {refused}")
            self._answer = ScaleEnded(False, f"not scaled: {refused}", request.by), False
            return
        before = self.size
        if workers == before:
            self._answer = ScaleEnded(True, f"already {workers} workers", request.by), False
            return
        fleet.log(
            logging.INFO, f"scaling from {before} to {workers} workers (asked by {request.by})"
        )
        scaling.resize(fleet, workers, may_promote=not isinstance(self.trial, RollingBack))
        scaled = f"scaling from {before} to {workers} workers"
        self._answer = ScaleEnded(True, scaled, request.by), True

    def _on_stop_requested(self, delayed: bool = True) -> None:
        delay = self.settings.stop_delay
        if isinstance(self.stop, Running) and delay > 0 and delayed:
            self.stop = StopAnnounced(self.fleet.now + delay)
            self.reload_queued = False
            self.fleet.log(
                logging.INFO,
                f"stopping in {delay:g}s (stop_delay): serving until then, "
                "health checks report the stop now",
            )
            self.fleet.out.append(StartTimer(delay, StopDelayOver()))
            self._announce(Phase.STATUS)
            return
        self._on_stop()

    def _on_stop(self) -> None:
        workers = len(self.workers)
        match self.stop:
            case Running() | StopAnnounced():
                self.fleet.log(
                    logging.INFO,
                    f"stopping: draining {workers} workers "
                    f"(up to drain_timeout={self.settings.drain_timeout:g}s)",
                )
                self._begin_stop(Draining(), exit_code=0)
            case Draining(reason):
                self.fleet.log(logging.WARNING, f"stopping now: killing {workers} workers")
                self._begin_stop(Killing(reason), exit_code=1)

    def _begin_stop(self, phase: Draining | Killing, exit_code: int) -> None:
        first = not self._stop_begun
        if first:
            starting = self.fleet.with_role(Role.STARTING)
            if starting is not None and self.serving is not None:
                self._reload_failed(starting, STOPPING)
            if isinstance(self.trial, RollingBack):
                self.fleet.out.append(RollbackEnded(False, STOPPING))
            elif isinstance(self.trial, OnProbation):
                trial.end_probation(self.fleet, self.trial, "stopped", STOPPING)
            if not isinstance(self.trial, Rejected):
                self.trial = NO_TRIAL
            if isinstance(self.succession, TakingBack):
                self.succession = NO_SUCCESSOR
        self.stop = phase
        self.exit_code = max(self.exit_code, exit_code)
        self.reload_queued = False
        stop.begin(self.fleet, phase)
        if first:
            self.fleet.out.append(StopAccepting())
            self._announce(Phase.STOPPING)

    # -- workers --------------------------------------------------------------------

    def _on_ready(self, worker: Worker, parkable: bool) -> None:
        if worker.killed:
            # a worker being killed (it missed ready_timeout) is not revived by a late
            # report: its kill is already on its way
            return
        fleet = self.fleet
        generation = self.generations[worker.generation]
        if worker.state is WorkerState.RESUMING:
            worker.state = WorkerState.READY
            worker.parkable = parkable
            if generation.role is Role.SERVING:
                # parked by a rollout that failed
                fleet.log(logging.INFO, f"{fleet.describe(worker)} is back in service")
                self._announce(Phase.STATUS)
            return
        if worker.state is not WorkerState.STARTING:
            return
        worker.state = WorkerState.READY
        worker.ready_at = fleet.now
        worker.parkable = parkable
        if generation.role is Role.SERVING and worker.replaces is not None:
            replacement.ready(fleet, worker)
            self._announce(Phase.STATUS)
        elif generation.role is Role.SERVING:
            if generation.crashes.get(worker.worker_id):
                fleet.log(logging.INFO, f"{fleet.describe(worker)} is back in service")
            else:  # scaled up, or refilled after a failed rollout
                ready = len(fleet.workers_in(generation, WorkerState.READY))
                fleet.log(
                    logging.INFO,
                    f"{fleet.describe(worker)} is ready ({ready}/{self.size} workers ready)",
                )
            self._announce(Phase.STATUS)
        elif generation.role is Role.RETIRED or self._stop_begun:
            fleet.drain(worker)

    def _on_failed(self, worker: Worker, cause: str) -> None:
        # reported just before the worker exits: its exit is described by it
        worker.cause = cause
        worker.reported = True
        if worker.state is WorkerState.PARKED:
            # it gave up its park: it cannot be resumed, and it gets kill_grace to go;
            # its slot is free at once (a refill takes its id, see Fleet.vacate)
            worker.state = WorkerState.DRAINING
            self.fleet.vacate(worker)
            self.fleet.log(
                logging.WARNING, f"parked {self.fleet.describe(worker)} cannot be resumed: {cause}"
            )
            self.fleet.out.append(StartTimer(self.settings.kill_grace, DrainTimeout(worker.serial)))

    def _on_misbehaved(self, worker: Worker, detail: str) -> None:
        if worker.killed:
            return
        problem = f"sent a malformed control message ({detail})"
        worker.cause = worker.cause or problem
        self.fleet.log(logging.WARNING, f"{self.fleet.describe(worker)} {problem}; killing it")
        generation = self.generations[worker.generation]
        if generation.role is Role.STARTING:
            # as for a missed ready_timeout: decided now, not when the kill lands
            self._fail_generation(generation, worker, f"worker {worker.worker_id}: {problem}")
        else:
            self.fleet.kill(worker)

    def _on_ready_timeout(self, worker: Worker) -> None:
        fleet = self.fleet
        if worker.state is WorkerState.RESUMING and not worker.killed:
            worker.cause = f"did not resume within {fleet.resume_timeout:g}s"
            fleet.log(logging.WARNING, f"{fleet.describe(worker)} {worker.cause}; killing it")
            fleet.kill(worker)
            return
        if worker.state is not WorkerState.STARTING or worker.killed:
            return
        cause = f"not ready within ready_timeout={self.settings.ready_timeout:g}s"
        worker.cause = worker.cause or cause
        generation = self.generations[worker.generation]
        if generation.role is Role.STARTING:
            # Failing the generation right away, rather than when the kill lands, keeps
            # the decision independent of how fast the process dies.
            self._fail_generation(generation, worker, f"worker {worker.worker_id} {cause}")
        else:
            fleet.kill(worker)

    def _on_drain_timeout(self, worker: Worker) -> None:
        fleet = self.fleet
        if worker.state is not WorkerState.DRAINING or worker.killed:
            return
        if worker.abandoned:
            fleet.log(
                logging.INFO,
                f"{fleet.describe(worker)} was still starting when the service stopped; killing it",
            )
            fleet.kill(worker)
            return
        self.exit_code = 1 if self._stop_begun else self.exit_code
        fleet.log(
            logging.WARNING,
            f"{fleet.describe(worker)} did not finish draining within "
            f"drain_timeout={self.settings.drain_timeout:g}s; killing it",
        )
        fleet.kill(worker)

    def _on_broken(self, worker: Worker, cause: str) -> None:
        if worker.killed or worker.declared_broken or worker.state is WorkerState.DRAINING:
            return
        worker.declared_broken = True
        generation = self.generations[worker.generation]
        declared = f"worker {worker.worker_id} declared itself broken: {cause}"
        phase = self.trial
        if generation.role is Role.STARTING:
            worker.cause = worker.cause or f"declared itself broken: {cause}"
            self._fail_generation(generation, worker, declared)
        elif (
            generation.role is Role.SERVING
            and isinstance(phase, OnProbation)
            and phase.generation == generation.number
        ):
            self._roll_back(phase, f"generation {generation.number} {declared}")
        else:
            self.fleet.log(
                logging.WARNING,
                f"{self.fleet.describe(worker)} declared itself broken ({cause}); there is no "
                "probation to roll back from, so it goes on",
            )

    def _on_hung(self, worker: Worker, silent: float) -> None:
        """``worker``'s heartbeat stopped: its stack is dumped, then it is replaced
        first (serving), rolled back from (on probation), fails its generation
        (starting), or is killed (parked). See :mod:`graceful.core.replacement`."""
        fleet = self.fleet
        judged = worker.state in (WorkerState.READY, WorkerState.PARKED)
        if worker.hung or worker.killed or not judged:
            return
        worker.hung = True
        fleet.counters.workers_hung += 1
        generation = self.generations[worker.generation]
        hung = (
            f"hung: its event loop has not beaten for {silent:.1f}s "
            f"(timeout={self.settings.timeout:g}s)"
        )
        fleet.log(logging.ERROR, f"{fleet.describe(worker)} is {hung}; its stack follows")
        fleet.out.append(DumpStack(worker.serial))
        phase = self.trial
        if worker.state is WorkerState.PARKED:
            fleet.log(logging.WARNING, f"parked {fleet.describe(worker)} is hung; killing it")
            fleet.put_down(worker)
        elif generation.role is Role.STARTING:
            worker.cause = worker.cause or hung
            self._fail_generation(generation, worker, f"worker {worker.worker_id} {hung}")
        elif (
            generation.role is Role.SERVING
            and isinstance(phase, OnProbation)
            and phase.generation == generation.number
            and self._roll_back(
                phase, f"generation {generation.number} worker {worker.worker_id} {hung}"
            )
        ):
            fleet.put_down(worker)
        elif generation.role is Role.SERVING and self.starting is not None:
            # a reload brings new workers already: this one goes now, and its slot is
            # refilled as a crashed one's (unless a rollout fills it)
            fleet.put_down(worker)
            if rollout.rolling_in(fleet) is None:
                fleet.out.append(
                    StartTimer(
                        self.settings.backoff_initial,
                        RestartDue(generation.number, worker.worker_id),
                    )
                )
        elif (
            generation.role is Role.SERVING
            and not self.stop_announced
            and self.succession is NO_SUCCESSOR
            and not isinstance(phase, RollingBack)
        ):
            if worker.replaced_by is None:  # (else its replacement is starting already)
                fleet.log(logging.INFO, f"starting a replacement for {fleet.describe(worker)}")
                if replacement.start(fleet, worker) is None:
                    fleet.put_down(worker)  # the generation has its workers without it
        else:
            fleet.put_down(worker)

    def _on_exit(self, worker: Worker, exitcode: int | None) -> None:
        fleet = self.fleet
        del self.workers[worker.serial]
        generation = self.generations[worker.generation]
        if generation.slots.get(worker.worker_id) == worker.serial:
            del generation.slots[worker.worker_id]
        generation.leaving.discard(worker.serial)
        how = worker.cause or _exit_description(exitcode)
        # what it did, as a verb phrase ("generation 1 worker 2 failed: RuntimeError...")
        did = f"failed: {how}" if worker.reported else how
        if worker.replaced_by is not None:
            # it leaves before its replacement is ready: that one simply takes the slot
            taking_over = self.workers.get(worker.replaced_by)
            if taking_over is not None:
                taking_over.replaces = None
        if (
            worker.replaces is not None
            and worker.ready_at is None
            and replacement.failed(fleet, worker, did)
        ):
            fleet.forget_if_done(generation)
            return
        if worker.state is WorkerState.DRAINING:
            if worker.killed or exitcode in (0, None):
                pass
            elif worker.ready_at is None and generation.role is Role.RETIRED:
                # a sibling of the worker that failed its generation: the same cause,
                # most likely, already reported
                fleet.log(
                    logging.INFO,
                    f"{fleet.describe(worker)} also failed before it was ready: {how}",
                    narrative=True,
                )
            else:
                fleet.log(logging.WARNING, f"{fleet.describe(worker)} exited while draining: {how}")
        elif worker.state is WorkerState.PARKED:
            fleet.log(
                logging.WARNING, f"parked {fleet.describe(worker)} {did}; it cannot be resumed"
            )
        elif worker.state is WorkerState.RESUMING:
            if not worker.killed:  # a kill was logged with its reason
                fleet.log(logging.WARNING, f"{fleet.describe(worker)} {did} while resuming")
            if generation.role is Role.SERVING and not self._stop_begun:
                # resumed after a failed rollout: its slot is refilled as for a crash
                crash = Crash(generation, worker, did)
                self._on_crash(crash, handlers=(crashes.restart,))
        elif generation.role is Role.STARTING:
            when = (
                "before it was ready"
                if worker.state is WorkerState.STARTING
                else "after it was ready"
            )
            cause = (
                f"worker {worker.worker_id} {how} {when}"
                if worker.cause is None
                else (f"worker {worker.worker_id}: {how}")
            )
            self._fail_generation(generation, worker, cause)
        elif generation.role is Role.SERVING and not self._stop_begun:
            self._on_crash(Crash(generation, worker, did))
        fleet.forget_if_done(generation)

    def _on_crash(
        self, crash: Crash, handlers: Sequence[crashes.Handler] = crashes.HANDLERS
    ) -> None:
        """A serving worker exited unexpectedly: see :mod:`graceful.core.crashes`."""
        handled = crashes.handle(self.fleet, self.trial, crash, handlers)
        if handled.trial is not None:
            self.trial = handled.trial
        if handled.announce:
            self._announce(Phase.STATUS)


#: The state-triggered rules, tried in this order after every event until none fires:
#: each returns whether it fired (see "The fixed point" in the module docstring).
STATE_RULES: tuple[Callable[[SupervisorStateMachine], bool], ...] = (
    SupervisorStateMachine._forget_canary,
    SupervisorStateMachine._settle_rollback,
    SupervisorStateMachine._settle_take_back,
    SupervisorStateMachine._start_canary_clock,
    SupervisorStateMachine._advance_rollout,
    SupervisorStateMachine._promote_ready,
    SupervisorStateMachine._recycle,
    SupervisorStateMachine._start_queued_reload,
    SupervisorStateMachine._exit_once_stopped,
)


def _exit_description(exitcode: int | None) -> str:
    if exitcode is None:
        return "vanished"
    if exitcode < 0:
        return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"
