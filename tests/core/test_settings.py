"""The settings' declaration (graceful.core.settings): what the reference shows, the
checks every entry point shares, overrides, and what ``status`` shows."""

from __future__ import annotations

import pytest

from graceful.base.errors import ConfigError
from graceful.core.machine import Settings, Strategy
from graceful.core.settings import (
    SETTINGS,
    CommandLine,
    ServerSettings,
    ServiceSettings,
    Supervision,
    Watch,
    checked,
    for_status,
    overridden,
)


def test_every_setting_says_what_the_reference_shows() -> None:
    names = [setting.name for setting in SETTINGS]
    assert len(names) == len(set(names))
    flags = [setting.flag for setting in SETTINGS if setting.flag is not None]
    assert len(flags) == len(set(flags))
    for setting in SETTINGS:
        assert setting.name.isidentifier()
        assert setting.type_label
        assert setting.default_label
        assert setting.help
        assert "\n" not in setting.help
        assert setting.scope in ("supervisor", "generation")
        assert setting.flag is None or setting.flag.startswith("--")
        assert setting.env in (None, f"GRACEFUL_{setting.name.upper()}")
        assert setting.entries


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({}, "@graceful.service needs listen=[...], as in listen=[':8080']"),
        ({"listen": ":8080"}, "listen=':8080' must be a list of specs, as in listen=[':8080']"),
        ({"listen": 8080}, "listen=8080 must be a list of listen specs (strings) or sockets"),
        ({"workers": 0}, "workers=0 must be a whole number of at least 1"),
        ({"workers": True}, "workers=True must be a whole number of at least 1"),
        ({"ready_timeout": 10**400}, "ready_timeout=1000000000000000000000000000000000000..."),
        ({"drain_timeout": float("nan")}, "drain_timeout=nan must be a finite number of seconds"),
        ({"backend": "tornado"}, "backend='tornado' must be one of asyncio, trio"),
        ({"probation": -1}, "probation=-1 must be a finite number of seconds (0 for none)"),
        ({"strategy": "sideways"}, "strategy='sideways' must be 'all-at-once' or 'rolling'"),
        ({"max_surge": 0}, "max_surge=0 must be a whole number of at least 1"),
        ({"preload": "yes"}, "preload='yes' must be True or False"),
        ({"standby": 1}, "standby=1 must be True or False"),
        ({"watch": "yes"}, "watch='yes' must be True, a list of directories, or a graceful.Watch"),
        ({"watch": Watch(include=("",))}, "watch pattern '' must be a non-empty glob, as '*.py'"),
    ],
)
def test_a_setting_that_can_never_work_is_refused_in_one_line_naming_it(
    given: dict[str, object], message: str
) -> None:
    given = {"listen": [":8080"], **given} if given and "listen" not in given else given
    with pytest.raises(ConfigError) as refused:
        checked(ServiceSettings, given, "@graceful.service")
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    ("group", "given", "message"),
    [
        (
            ServerSettings,
            {"server": "tornado"},
            "server='tornado' must be 'uvicorn' or 'hypercorn'",
        ),
        (ServerSettings, {"interface": "asgi4"}, "interface='asgi4' must be one of auto, asgi3"),
        (ServerSettings, {"threads": 0}, "threads=0 must be a whole number of at least 1"),
        (ServerSettings, {"ready_hook": "nohook"}, "ready hook 'nohook' must look like"),
        (
            Supervision,
            {"health": 9000},
            "health=9000 must be a listen spec, as in '127.0.0.1:9000'",
        ),
        (Supervision, {"stop_delay": -1}, "stop_delay=-1 must be a finite number of seconds"),
    ],
)
def test_the_other_groups_refuse_in_one_line_too(
    group: type[object], given: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        checked(group, given, "serve_asgi")


def test_what_is_not_given_takes_the_declared_default_and_values_are_normalised() -> None:
    settings = checked(
        ServiceSettings, {"listen": [":8080"], "probation": 0, "watch": True}, "serve_asgi"
    )
    assert settings.listen == (":8080",)
    assert settings.probation == 0.0
    assert settings.workers == 1
    assert settings.watching == Watch()
    assert checked(ServiceSettings, {}, "serve_asgi").listen == ("127.0.0.1:8000",)
    assert checked(CommandLine, {}, "graceful serve").watch_include == ("*.py",)


def test_an_override_is_checked_as_the_decorator_checks_it() -> None:
    settings = checked(ServiceSettings, {"listen": [":8080"], "workers": 2}, "@graceful.service")
    assert overridden(settings, {"max_surge": 3}, "graceful run").max_surge == 3
    assert overridden(settings, {"max_surge": 3}, "graceful run").workers == 2
    with pytest.raises(ConfigError, match=r"^max_surge=0 must be a whole number of at least 1$"):
        overridden(settings, {"max_surge": 0}, "graceful run")


def test_status_shows_the_settings_declared_for_it_from_either_side() -> None:
    shown = {
        "strategy": "rolling",
        "max_surge": 2,
        "preload": True,
        "timeout": 30.0,
        "max_requests": 0,
        "max_worker_lifetime": 0.0,
        "max_worker_memory": 0,
        "rollback_on_error_rate": 0.05,
        "rollback_min_requests": 100,
        "rollback_on_p99": 0.0,
        "canary": 0,
        "canary_seconds": 30.0,
    }
    machine = Settings(strategy=Strategy.ROLLING, max_surge=2, preload=True)
    assert for_status(machine) == shown
    service = checked(
        ServiceSettings,
        {"strategy": "rolling", "max_surge": 2, "preload": True},
        "serve_asgi",
    )
    assert for_status(service) == shown


@pytest.mark.parametrize(
    ("group", "given", "message"),
    [
        (Supervision, {"pid_file": 1}, "pid_file=1 must be a path"),
        (Supervision, {"pid_file": b"app.pid"}, "pid_file=b'app.pid' must be a path"),
        (Supervision, {"pid_file": ["app.pid"]}, "pid_file=['app.pid'] must be a path"),
        (Supervision, {"pid_file": "app\x00.pid"}, "pid_file='app\\x00.pid' must be a path"),
        (Supervision, {"release_link": 1}, "release_link=1 must be a path"),
        (Supervision, {"release_link": b"current"}, "release_link=b'current' must be a path"),
    ],
)
def test_a_path_setting_of_another_type_is_refused_in_one_line(
    group: type[object], given: dict[str, object], message: str
) -> None:
    """A path is checked further where it is used (its directory, its link), but a
    value that is no path at all is refused here, not by a TypeError there."""
    with pytest.raises(ConfigError) as refused:
        checked(group, given, "Service.run")
    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value)


def test_a_path_setting_takes_a_string_or_a_path_object() -> None:
    from pathlib import Path  # noqa: PLC0415

    supervision = checked(
        Supervision, {"pid_file": Path("app.pid"), "release_link": "current"}, "Service.run"
    )
    assert supervision.pid_file == Path("app.pid")
    assert supervision.release_link == "current"
    assert checked(Supervision, {}, "Service.run").pid_file is None


@pytest.mark.parametrize(
    ("group", "given", "message"),
    [
        (ServiceSettings, {"listen": [":8080"], "probation": False}, "probation=False must be"),
        (ServiceSettings, {"listen": [":8080"], "probation": 0j}, "probation=0j must be"),
        (Supervision, {"stop_delay": False}, "stop_delay=False must be"),
        (Supervision, {"stop_delay": 0j}, "stop_delay=0j must be"),
    ],
)
def test_seconds_that_may_be_0_refuse_a_bool_or_a_complex_zero(
    group: type[object], given: dict[str, object], message: str
) -> None:
    """``probation`` and ``stop_delay`` take 0 for "none", but False (or 0j) is not a
    number of seconds, as ``ready_timeout=True`` is not."""
    with pytest.raises(ConfigError) as refused:
        checked(group, given, "serve_asgi")
    assert str(refused.value).startswith(message)


@pytest.mark.parametrize("hook", [["app:hook"], b"app:hook", ("app", "hook")])
def test_a_ready_hook_that_is_not_a_string_is_refused_naming_it(hook: object) -> None:
    with pytest.raises(ConfigError) as refused:
        checked(ServerSettings, {"ready_hook": hook}, "serve_asgi")
    assert str(refused.value) == f"ready hook {hook!r} must look like 'package.module:function'"
