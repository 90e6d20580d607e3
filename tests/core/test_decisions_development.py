"""Development mode's decisions (``--watch``), event by event (no processes).

A newer change supersedes a generation still starting, and a generation that fails
with nothing serving waits for the next change. The integration tests are in
``tests/test_watch.py``.
"""

from __future__ import annotations

import dataclasses

from sim import SETTINGS, Sim, exits, killed, of_type, shut_down, spawned

from graceful.core.machine import (
    SUPERSEDED,
    ReloadEnded,
    ReloadRequested,
    Start,
    WorkerExited,
    WorkerFailed,
    WorkerReady,
)

DEVELOPMENT = dataclasses.replace(SETTINGS, workers=2, development=True)


def test_a_change_while_a_generation_starts_supersedes_it() -> None:
    sim = Sim(DEVELOPMENT)
    first = spawned(sim.send(Start()))
    sim.send_all(WorkerReady(serial) for serial in first)
    second = spawned(sim.send(ReloadRequested()))
    sim.send(WorkerReady(second[0]))  # one is ready (and may hold connections)
    actions = sim.send(ReloadRequested())
    assert killed(actions) == {second[1]}  # still starting, perhaps hung: killed
    assert shut_down(actions) == {second[0]}  # ready: drained
    [ended] = of_type(actions, ReloadEnded)
    assert (ended.reload.generation, ended.reload.cause) == (2, SUPERSEDED)
    third = spawned(actions)
    assert len(third) == 2
    assert sim.machine.starting == 3


def test_without_development_mode_a_change_waits_for_the_starting_generation() -> None:
    sim = Sim(dataclasses.replace(DEVELOPMENT, development=False))
    first = spawned(sim.send(Start()))
    sim.send_all(WorkerReady(serial) for serial in first)
    spawned(sim.send(ReloadRequested()))
    actions = sim.send(ReloadRequested())
    assert killed(actions) == set()
    assert spawned(actions) == []
    assert sim.machine.reload_queued


def test_a_first_generation_that_fails_waits_for_the_next_change() -> None:
    sim = Sim(DEVELOPMENT)
    first = spawned(sim.send(Start()))
    sim.send(WorkerFailed(first[0], "SyntaxError: invalid syntax (app.py, line 2)"))
    actions = sim.send(WorkerExited(first[0], 1))
    assert exits(actions) == []
    assert sim.machine.stopping.value == "no"
    [ended] = of_type(actions, ReloadEnded)
    assert ended.reload.outcome == "failed"
    sim.send(WorkerExited(first[1], 0))
    fixed = spawned(sim.send(ReloadRequested()))
    actions = sim.send_all(WorkerReady(serial) for serial in fixed)
    [served] = of_type(actions, ReloadEnded)
    assert (served.reload.generation, served.reload.outcome) == (2, "serving")
    assert sim.machine.serving == 2
