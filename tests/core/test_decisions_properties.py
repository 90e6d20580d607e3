"""The supervisor's state machine against random event sequences (Hypothesis stateful).

The test plays the world the supervisor lives in: workers that report ready (more
than once, if they lie), fail, misbehave and exit in any order, timers that fire
late or out of order, signals at any moment. After every step it checks the
invariants in the docstring of :mod:`graceful.core.machine` against its own record of
which processes exist, and at the end it drives every run to a stop and checks
that the supervisor exits once no process is left.
"""

from __future__ import annotations

from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from graceful.core import stop, succession, trial, verdict
from graceful.core.answers import NO_ANSWERS, Answers
from graceful.core.canary import Canary
from graceful.core.machine import (
    Action,
    AnswersCounted,
    CanaryOver,
    DumpStack,
    Event,
    Exit,
    GenerationServing,
    HandOver,
    KillWorker,
    ParkWorker,
    ReloadRequested,
    ResumeWorker,
    Role,
    RollbackRequested,
    ScaleRequested,
    Settings,
    ShutdownWorker,
    SpawnWorker,
    Start,
    StartTimer,
    Stopping,
    StopRequested,
    Strategy,
    SuccessorPassed,
    SupervisorStateMachine,
    TakeBack,
    WorkerBroken,
    WorkerExited,
    WorkerFailed,
    WorkerHung,
    WorkerMisbehaved,
    WorkerReady,
    WorkerState,
    WorkerWornOut,
)


class SupervisorWorld(RuleBasedStateMachine):
    """The supervisor's state machine, and a record of the processes it started."""

    def __init__(self) -> None:
        super().__init__()
        self.machine: SupervisorStateMachine | None = None
        self.now = 0.0
        #: spawned and not yet exited
        self.alive: set[int] = set()
        self.ever_spawned: set[int] = set()
        self.told_to_shut_down: set[int] = set()
        self.killed: set[int] = set()
        #: told to park and not resumed since
        self.parked: set[int] = set()
        #: events of timers started and not yet fired
        self.timers: list[Event] = []
        self.exit_codes: list[int] = []
        #: workers told to dump their stack (found hung)
        self.dumped: set[int] = set()
        #: crashes and restarts counted before the event being handled
        self.counted: tuple[int, int] = (0, 0)
        #: generations started as canaries, and those whose canary time was over
        #: while it was judged (the only way one passes)
        self.canaries: set[int] = set()
        self.canaries_over: set[int] = set()

    # -- driving the machine --------------------------------------------------------

    @property
    def sm(self) -> SupervisorStateMachine:
        assert self.machine is not None
        return self.machine

    def send(self, event: Event) -> list[Action]:
        before_exit = bool(self.exit_codes)
        parked_before = {n for n, g in self.sm.generations.items() if g.role is Role.PARKED}
        canary = self.sm.canary
        if (
            isinstance(event, CanaryOver)
            and canary is not None
            and canary.generation == event.generation
            and canary.judged_from is not None
        ):
            self.canaries_over.add(event.generation)
        on_probation = self.sm.probation
        starting = self.sm.starting
        # (a generation is judged as it starts beside one that serves, and neither
        # during a rollback nor once the service stops)
        judged_safely = (
            self.sm.serving is not None and not self.sm.rollback and not self.sm.stop_announced
        )
        actions = self.sm.handle(event, self.now)
        if self.sm.canary is not None:
            self.canaries.add(self.sm.canary.generation)
        if isinstance(event, AnswersCounted):
            self.check_verdict(event, on_probation, canary, starting if judged_safely else None)
        if before_exit:
            assert actions == [], f"{event} after Exit gave {actions}"
        for action in actions:
            self.check_action(action)
        for number, generation in self.sm.generations.items():
            if generation.role is Role.PARKED and number not in parked_before:
                # a generation announced as parked has workers parked for the rollback
                kept = [
                    self.sm.workers[serial]
                    for serial in generation.slots.values()
                    if self.sm.workers[serial].state is WorkerState.PARKED
                ]
                assert kept, f"generation {number} parked with no parked worker after {event}"
        return actions

    def check_verdict(
        self,
        counted: AnswersCounted,
        on_probation: trial.OnProbation | None,
        canary: Canary | None,
        starting: int | None,
    ) -> None:
        """A judged rollback never fires before ``rollback_min_requests`` answers, and
        a canary never outlives a failed verdict."""
        settings = self.sm.settings
        if (
            self.sm.rollback is not None
            and on_probation is not None
            and on_probation.generation == counted.generation
        ):
            assert counted.answers.total >= settings.rollback_min_requests, counted
        failed = verdict.judge(counted.answers, counted.baseline, settings, old=0, when="")
        if canary is None or canary.generation != counted.generation:
            # a generation judged as it starts: a failing verdict ends its start
            if failed is not None and starting == counted.generation and canary is None:
                assert self.sm.starting != counted.generation, "judged, and still starting"
            return
        if failed is not None and canary.judged_from is not None:
            # (a queued reload may have started the next canary at once)
            assert self.sm.canary is None or self.sm.canary.generation != counted.generation, (
                "a canary outlived its failed verdict"
            )
            assert self.sm.starting != counted.generation
            for worker in self.sm.workers.values():
                if worker.generation == counted.generation:
                    assert worker.state is WorkerState.DRAINING or worker.killed, worker
        elif self.sm.starting == counted.generation:
            assert self.sm.canary is canary, "a canary ended without a verdict"

    def check_action(self, action: Action) -> None:
        match action:
            case SpawnWorker(serial, generation, worker_id):
                assert serial not in self.ever_spawned, f"serial {serial} spawned twice"
                assert self.sm.stopping is Stopping.NO, "spawned while stopping"
                assert not isinstance(self.sm.succession, succession.ParkedForSuccessor), (
                    "spawned while parked for a successor"
                )
                role = self.sm.generations[generation].role
                assert role in (Role.STARTING, Role.SERVING), f"spawned into a {role} generation"
                # ids stay within 0 .. size-1, one process per slot
                assert 0 <= worker_id < self.sm.size, (worker_id, self.sm.size)
                assert self.sm.generations[generation].slots[worker_id] == serial
                self.ever_spawned.add(serial)
                self.alive.add(serial)
            case ShutdownWorker(serial, _):
                assert serial in self.alive, f"shutdown sent to {serial}, which has exited"
                assert serial not in self.told_to_shut_down, f"{serial} told to shut down twice"
                assert serial not in self.killed, f"{serial} told to shut down after its kill"
                self.told_to_shut_down.add(serial)
            case KillWorker(serial):
                assert serial in self.alive, f"kill sent to {serial}, which has exited"
                assert serial not in self.killed, f"{serial} killed twice"
                if self.sm.workers[serial].hung:
                    assert serial in self.dumped, f"hung {serial} killed before its stack dump"
                self.killed.add(serial)
            case DumpStack(serial):
                assert serial in self.alive, f"stack dump asked of {serial}, which has exited"
                assert serial not in self.dumped, f"{serial} asked for its stack twice"
                self.dumped.add(serial)
            case ParkWorker(serial, _):
                assert serial in self.alive, f"park sent to {serial}, which has exited"
                assert serial not in self.parked, f"{serial} parked twice"
                assert serial not in self.told_to_shut_down | self.killed
                assert self.sm.workers[serial].parkable, f"{serial} cannot be parked"
                self.parked.add(serial)
            case ResumeWorker(serial):
                assert serial in self.parked, f"resume sent to {serial}, which is not parked"
                assert serial in self.alive, f"resume sent to {serial}, which has exited"
                assert serial not in self.told_to_shut_down | self.killed
                assert self.sm.stopping is Stopping.NO, "resumed while stopping"
                self.parked.discard(serial)
            case StartTimer(_, event):
                self.timers.append(event)
            case GenerationServing(number, _):
                if number in self.canaries:
                    assert number in self.canaries_over, f"canary {number} promoted unjudged"
                promoted = self.sm.generations[number]
                assert promoted.role is Role.SERVING
                # (a worker being recycled since counts, not its replacement: the
                # rules that ran after the promotion may have started one)
                serving = [
                    self.sm.workers[s]
                    for s in [*promoted.slots.values(), *promoted.leaving]
                    if self.sm.workers[s].state is not WorkerState.DRAINING
                    and self.sm.workers[s].replaces is None
                ]
                assert len(serving) == self.sm.size
                assert all(w.state is WorkerState.READY for w in serving)
            case Exit(code):
                assert not self.alive, f"exit while {sorted(self.alive)} still run"
                assert not self.exit_codes, "Exit twice"
                assert code in (0, 1)
                self.exit_codes.append(code)
            case _:
                pass

    # -- the world ------------------------------------------------------------------

    @initialize(
        workers=st.integers(min_value=1, max_value=4),
        probation=st.sampled_from([0, 10, 10]),
        strategy=st.sampled_from(Strategy),
        max_surge=st.integers(min_value=1, max_value=2),
        preload=st.booleans(),
        development=st.booleans(),
        max_recycling=st.integers(min_value=1, max_value=2),
        canary=st.sampled_from([0, 0, 1, 2]),
    )
    def start(  # noqa: PLR0917 - one per setting drawn
        self,
        workers: int,
        probation: float,
        strategy: Strategy,
        max_surge: int,
        preload: bool,
        development: bool,
        max_recycling: int,
        canary: int,
    ) -> None:
        self.machine = SupervisorStateMachine(
            Settings(
                workers=workers,
                ready_timeout=5.0,
                drain_timeout=3.0,
                kill_grace=1.0,
                probation=probation,
                strategy=strategy,
                max_surge=max_surge,
                preload=preload,
                development=development,
                max_recycling=max_recycling,
                canary=canary,
                canary_seconds=5.0,
                rollback_min_requests=20,
                rollback_on_p99=0.5,
            )
        )
        self.send(Start())

    @rule(workers=st.integers(min_value=0, max_value=5))
    def scale_to(self, workers: int) -> None:
        self.send(ScaleRequested("a test", workers=workers))

    @rule(step=st.sampled_from([1, -1]))
    def scale_by_one(self, step: int) -> None:
        self.send(ScaleRequested("a signal", step=step))

    @rule()
    def rollback(self) -> None:
        self.send(RollbackRequested("a test"))

    @rule(data=st.data())
    @precondition(lambda self: bool(self.alive))
    def worker_declares_itself_broken(self, data: st.DataObject) -> None:
        self.send(WorkerBroken(data.draw(st.sampled_from(sorted(self.alive))), "bad"))

    @rule(data=st.data())
    @precondition(lambda self: bool(self.alive))
    def worker_hangs(self, data: st.DataObject) -> None:
        self.send(WorkerHung(data.draw(st.sampled_from(sorted(self.alive))), 31.0))

    @rule(data=st.data(), limit=st.sampled_from(["max_requests", "max_worker_memory"]))
    @precondition(lambda self: bool(self.alive))
    def worker_wears_out(self, data: st.DataObject, limit: str) -> None:
        counters = self.sm.counters
        before = (counters.worker_crashes, counters.worker_restarts, counters.rollbacks)
        trial_before = self.sm.trial
        self.send(WorkerWornOut(data.draw(st.sampled_from(sorted(self.alive))), limit, "far"))
        # wearing out is no crash: nothing is counted, nothing rolled back
        assert (counters.worker_crashes, counters.worker_restarts, counters.rollbacks) == before
        assert not isinstance(self.sm.trial, trial.RollingBack) or trial_before == self.sm.trial

    @rule(park=st.booleans())
    def a_successor_serves(self, park: bool) -> None:
        self.send(HandOver(park))

    @rule()
    def the_successor_fails(self) -> None:
        self.send(TakeBack("a test"))

    @rule()
    def the_successor_passes(self) -> None:
        self.send(SuccessorPassed())

    @rule()
    def reload(self) -> None:
        self.send(ReloadRequested())

    @rule()
    def stop(self) -> None:
        self.send(StopRequested())

    @rule(data=st.data())
    @precondition(lambda self: bool(self.alive))
    def worker_reports_ready(self, data: st.DataObject) -> None:
        serial = data.draw(st.sampled_from(sorted(self.alive)))
        self.send(WorkerReady(serial, parkable=data.draw(st.booleans())))

    @rule()
    @precondition(lambda self: bool(self.alive))
    def every_starting_worker_reports_ready(self) -> None:
        # the common case, which random single reports rarely complete: a generation
        # (or a rollout's batch) whose workers all start well
        for serial in sorted(self.alive):
            worker = self.sm.workers.get(serial)
            if worker is not None and worker.state is WorkerState.STARTING:
                self.send(WorkerReady(serial, parkable=True))

    @rule(data=st.data())
    @precondition(lambda self: bool(self.alive))
    def worker_reports_failure(self, data: st.DataObject) -> None:
        self.send(WorkerFailed(data.draw(st.sampled_from(sorted(self.alive))), "boom"))

    @rule(data=st.data())
    @precondition(lambda self: bool(self.alive))
    def worker_misbehaves(self, data: st.DataObject) -> None:
        self.send(WorkerMisbehaved(data.draw(st.sampled_from(sorted(self.alive))), "junk"))

    @rule(data=st.data(), exitcode=st.sampled_from([0, 1, -9, -15, None]))
    @precondition(lambda self: bool(self.alive))
    def worker_exits(self, data: st.DataObject, exitcode: int | None) -> None:
        serial = data.draw(st.sampled_from(sorted(self.alive)))
        self.alive.discard(serial)
        self.parked.discard(serial)
        self.send(WorkerExited(serial, exitcode))

    @rule(data=st.data())
    @precondition(lambda self: bool(self.timers))
    def a_timer_fires(self, data: st.DataObject) -> None:
        # in any order: the loop delivers timers late when it is busy
        event = self.timers.pop(data.draw(st.integers(0, len(self.timers) - 1)))
        self.send(event)

    @rule(canary_over=st.booleans())
    @precondition(lambda self: self.machine is not None and self.sm.starting is not None)
    def the_starting_workers_report_ready(self, canary_over: bool) -> None:
        # a shortcut to the judged phases (a canary, a probation), which single
        # steps reach rarely
        for serial in sorted(self.alive):
            worker = self.sm.workers.get(serial)
            if worker is not None and worker.state is WorkerState.STARTING:
                self.send(WorkerReady(serial, parkable=True))
        canary = self.sm.canary
        if canary_over and canary is not None and canary.judged_from is not None:
            over = CanaryOver(canary.generation)
            if over in self.timers:
                self.timers.remove(over)
            self.send(over)

    @rule(
        data=st.data(),
        total=st.sampled_from([0, 5, 19, 20, 100, 1000]),
        failed=st.sampled_from([0.0, 0.02, 0.3, 1.0]),
        slow=st.booleans(),
    )
    @precondition(lambda self: self.machine is not None and bool(self.sm.generations))
    def answers_are_counted(
        self, data: st.DataObject, total: int, failed: float, slow: bool
    ) -> None:
        # mostly about the generation being judged, sometimes about any other
        judged = [self.sm.probation.generation] if self.sm.probation is not None else []
        judged += [self.sm.canary.generation] if self.sm.canary is not None else []
        number = data.draw(st.sampled_from(judged or sorted(self.sm.generations)))
        errors = int(total * failed)
        bucket = 8 if slow else 0
        buckets = tuple(total if i == bucket else 0 for i in range(12))
        answers = Answers((total - errors, 0, 0, errors, 0), buckets, 0.0)
        self.send(AnswersCounted(number, answers, NO_ANSWERS))

    @rule(seconds=st.sampled_from([0.1, 1.0, 20.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    # -- invariants -----------------------------------------------------------------

    @invariant()
    def one_serving_and_one_starting_at_most(self) -> None:
        if self.machine is None:
            return
        roles = [g.role for g in self.sm.generations.values()]
        assert roles.count(Role.SERVING) <= 1
        assert roles.count(Role.STARTING) <= 1
        assert roles.count(Role.PARKED) + roles.count(Role.RESUMING) <= 1

    @invariant()
    def the_trial_and_the_stop_are_each_in_one_of_their_phases(self) -> None:
        if self.machine is None:
            return
        assert type(self.sm.trial) in trial.PHASES, f"trial is {self.sm.trial!r}"
        assert type(self.sm.stop) in stop.PHASES, f"stop is {self.sm.stop!r}"
        assert type(self.sm.succession) in succession.PHASES, self.sm.succession

    @invariant()
    def probation_and_rollback_name_the_right_generations(self) -> None:
        if self.machine is None:
            return
        probation, rollback = self.sm.probation, self.sm.rollback
        assert probation is None or rollback is None, "a probation during a rollback"
        if probation is not None:
            assert self.sm.serving == probation.generation
            parked = self.sm.generations.get(probation.parked)
            assert parked is None or parked.role is Role.PARKED
        if rollback is not None:
            resuming = self.sm.generations.get(rollback.to_generation)
            assert resuming is not None
            assert resuming.role is Role.RESUMING
        handed = self.sm.succession
        for generation in self.sm.generations.values():
            if generation.role is Role.RESUMING:
                assert rollback is not None or isinstance(handed, succession.TakingBack)
            if generation.role is Role.PARKED and isinstance(handed, succession.ParkedForSuccessor):
                assert handed.generation == generation.number
                assert self.sm.serving is None
            elif generation.role is Role.PARKED:
                assert probation is not None
                assert probation.parked == generation.number
                states = {
                    self.sm.workers[s].state
                    for s in generation.slots.values()
                    if not self.sm.workers[s].killed
                }
                assert states <= {WorkerState.PARKED, WorkerState.DRAINING}, states

    @invariant()
    def the_parked_workers_are_those_told_to_park(self) -> None:
        if self.machine is None:
            return
        parked = {s for s, w in self.sm.workers.items() if w.state is WorkerState.PARKED}
        assert parked <= self.parked

    @invariant()
    def the_machine_knows_exactly_the_live_processes(self) -> None:
        if self.machine is None:
            return
        assert set(self.sm.workers) == self.alive

    @invariant()
    def slots_name_live_workers_of_their_generation(self) -> None:
        if self.machine is None:
            return
        for generation in self.sm.generations.values():
            for worker_id, serial in generation.slots.items():
                worker = self.sm.workers[serial]
                assert (worker.generation, worker.worker_id) == (generation.number, worker_id)

    @invariant()
    def no_generation_holds_more_than_workers_listening_processes(self) -> None:
        if self.machine is None:
            return
        for generation in self.sm.generations.values():
            holding = [
                w
                for w in self.sm.workers.values()
                if w.generation == generation.number
                and w.state not in (WorkerState.DRAINING, WorkerState.PARKED)
                and not w.killed  # SIGKILLed: gone in a moment, whatever is spawned
                and w.replaced_by is None  # its replacement, starting, is counted
            ]
            assert len(holding) <= self.sm.size
            recycling = [
                w
                for w in self.sm.workers.values()
                if w.generation == generation.number and w.replaced_by is not None and not w.hung
            ]
            assert len(recycling) <= self.sm.settings.max_recycling

    @invariant()
    def a_rollout_holds_no_more_than_size_plus_max_surge(self) -> None:
        if self.machine is None or self.sm.starting is None:
            return
        starting = self.sm.generations[self.sm.starting]
        if not starting.rolling or self.sm.rollback is not None:
            return
        holding = [
            w
            for w in self.sm.workers.values()
            if w.generation in (self.sm.starting, self.sm.serving)
            and w.state in (WorkerState.STARTING, WorkerState.READY, WorkerState.RESUMING)
            and not w.killed
            and w.replaced_by is None  # being recycled: its replacement is counted
        ]
        assert len(holding) <= self.sm.size + self.sm.settings.max_surge

    @invariant()
    def one_generation_serves_once_no_reload_runs(self) -> None:
        # never a mixed fleet: a failed rollout leaves no new worker serving
        if self.machine is None or self.sm.starting is not None or self.sm.rollback is not None:
            return
        if isinstance(self.sm.succession, succession.TakingBack):
            return
        holding = {
            w.generation
            for w in self.sm.workers.values()
            if w.state in (WorkerState.READY, WorkerState.RESUMING) and not w.killed
        }
        assert holding <= {self.sm.serving}, holding

    @invariant()
    def a_stopped_service_with_no_process_left_has_exited(self) -> None:
        if self.machine is None:
            return
        if self.sm.stopping is not Stopping.NO and not self.alive:
            assert self.exit_codes, "stopping, nothing left, and no Exit"

    def teardown(self) -> None:
        """Stop, let every process exit, and expect exactly one Exit."""
        if self.machine is None:
            return
        self.send(StopRequested())
        for serial in sorted(self.alive):
            self.alive.discard(serial)
            self.parked.discard(serial)
            self.send(WorkerExited(serial, 0))
        assert len(self.exit_codes) == 1


SupervisorWorld.TestCase.settings = hypothesis_settings(
    max_examples=300, stateful_step_count=40, deadline=None
)
test_supervisor_state_machine = SupervisorWorld.TestCase
