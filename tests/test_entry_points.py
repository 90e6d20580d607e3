"""Every entry point takes exactly the settings declared for it
(graceful.core.settings): the typed signatures written out by hand cannot drift from
the declaration, the command line's options are the declared flags, and the
supervisor passes the checked values on."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import pytest

import graceful
from graceful.api.service import Service
from graceful.cli import REFUSED_SERVER_OPTIONS, THEIR_OPTIONS, build_parser
from graceful.core.configured import Configured
from graceful.core.machine import Strategy
from graceful.core.settings import SETTINGS, Entry, ServiceSettings, Supervision, checked, taken_by
from graceful.supervisor.run import _decided, _worker_options


def keyword_defaults(function: Callable[..., Any]) -> dict[str, object]:
    parameters = inspect.signature(function).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


@pytest.mark.parametrize(
    ("function", "entry"), [(graceful.serve_asgi, "serve_asgi"), (Service.run, "Service.run")]
)
def test_a_signature_written_out_names_declared_settings_with_their_defaults(
    function: Callable[..., Any], entry: Entry
) -> None:
    """What a signature writes out (for the type checker) cannot drift from the
    declaration. A setting it does not write out yet is still taken: ``serve_asgi``
    finds it among its ``**server_options`` and checks it (a new setting is one
    declaration; its line in the signature only adds its type for callers)."""
    declared = {setting.name: setting.default for setting in taken_by(entry)}
    written = keyword_defaults(function)
    assert written.items() <= declared.items()
    parameters = inspect.signature(function).parameters.values()
    if all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in parameters):
        assert written == declared  # it takes nothing else: it must name them all


def test_the_decorator_takes_the_declared_settings_and_no_other() -> None:
    fields = {field.name for field in dataclasses.fields(ServiceSettings)}
    assert fields == {setting.name for setting in taken_by("@graceful.service")}
    with pytest.raises(TypeError, match="unexpected keyword argument 'server'"):
        graceful.service(listen=[":8080"], server="uvicorn")  # type: ignore[call-overload]


def options(command: str) -> set[str]:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {
        option
        for action in commands.choices[command]._actions
        for option in action.option_strings
        if option not in {"--help", "-h"}
    }


@pytest.mark.parametrize(
    ("command", "entry"), [("serve", "graceful serve"), ("run", "graceful run")]
)
def test_the_commands_options_are_the_declared_flags(command: str, entry: Entry) -> None:
    declared = set()
    for setting in taken_by(entry):
        if setting.flag is not None:
            declared |= {setting.flag, *setting.aliases}
            if setting.kind.cli == "toggle":
                declared.add("--no-" + setting.flag.removeprefix("--"))
    refused = set(REFUSED_SERVER_OPTIONS) if command == "serve" else set()
    assert options(command) == declared | refused


def test_every_setting_is_taken_somewhere() -> None:
    assert all(setting.entries for setting in SETTINGS)


def test_the_state_machine_and_the_workers_are_told_the_checked_settings() -> None:
    settings = checked(
        ServiceSettings,
        {
            "workers": 3,
            "ready_timeout": 4,
            "drain_timeout": 5,
            "backend": "trio",
            "probation": 0,
            "strategy": "rolling",
            "max_surge": 2,
            "preload": True,
        },
        "serve_asgi",
    )
    supervision = checked(Supervision, {"stop_delay": 6}, "serve_asgi")
    decided = _decided(settings, supervision)
    options = _worker_options(
        Configured(settings, {"app": "x:y"}, {}, {}, {}),
        development=decided.development,
        heartbeat=0.2,
    )
    assert (decided.workers, decided.ready_timeout, decided.drain_timeout) == (3, 4.0, 5.0)
    assert (decided.probation, decided.stop_delay) == (0.0, 6.0)
    assert (decided.strategy, decided.max_surge, decided.preload) == (Strategy.ROLLING, 2, True)
    assert not decided.development
    assert (options.drain_timeout, options.backend, options.entry_options) == (
        5.0,
        "trio",
        {"app": "x:y"},
    )
    assert not options.report_only


def test_a_hypercorn_command_line_has_an_answer_for_each_of_its_options() -> None:
    """Each option of hypercorn's command line is taken by ``graceful serve`` (under
    the same meaning) or refused with why: none is an unknown option."""
    taken = options("serve")
    assert set(THEIR_OPTIONS["hypercorn"]) <= taken
    assert set(THEIR_OPTIONS["gunicorn"]) - taken <= {
        "--worker-connections", "--pythonpath", "-e", "--env", "--ssl-version", "-n",
        "--name", "--check-config", "--worker-tmp-dir",
    }  # fmt: skip
