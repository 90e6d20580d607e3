"""The commands' settings from a configuration file and the environment: one
precedence, one-line refusals, and what a reload reads again
(``graceful/api/configuration.py``, ``graceful/supervisor/reconfigure.py``)."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import pytest
from harness import ServiceProcess, graceful_cli, poll_until

from graceful.api.configuration import gather, read_again
from graceful.base.errors import ConfigError
from graceful.control.client import Control

#: An ASGI app that answers its worker's environment.
ENVIRONMENT_APP = """\
import json
import os


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    seen = {
        name: os.environ.get(name)
        for name in ("DATABASE_URL", "FROM_ENV_FILE", "SHADOWED")
    }
    seen["pid"] = os.getpid()
    seen["root_path"] = scope.get("root_path")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": json.dumps(seen).encode()})
"""

CONFIGURATION = """\
# the deploy's configuration
workers = 3
ready_timeout = 30
root_path = "/file"
env_file = ".env"
headers = ["X-Config: {header}"]

[env]
DATABASE_URL = "{database}"
"""


def get(address: str) -> dict[str, object]:
    host, _, port = address.rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        assert response.status == 200
        answer: dict[str, object] = json.loads(response.read())
        answer["x-config"] = response.getheader("x-config")
        return answer
    finally:
        connection.close()


def reload_and_wait(pid_file: Path) -> tuple[int, str]:
    result = graceful_cli("reload", "--pid-file", str(pid_file), "--wait", "--timeout", "60")
    return result.returncode, (result.stdout + result.stderr).strip()


def test_the_precedence_and_what_a_reload_reads_again(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(ENVIRONMENT_APP)
    config = tmp_path / "graceful.toml"
    config.write_text(CONFIGURATION.format(header="one", database="postgres://one"))
    (tmp_path / ".env").write_text("FROM_ENV_FILE=first\nSHADOWED=from-the-file\n")
    pid_file = tmp_path / "graceful.pid"
    environment = {
        "GRACEFUL_WORKERS": "2",  # over the file's 3
        "WEB_CONCURRENCY": "9",  # under the file's
        "GRACEFUL_ROOT_PATH": "/environment",  # under the command line's
        "SHADOWED": "from-the-supervisor",  # over the env file's
    }
    command = [
        "serve", "app:app", "--listen", "127.0.0.1:0", "--root-path", "/command-line",
        "--pid-file", str(pid_file), "--probation", "0",
    ]  # fmt: skip
    app = tmp_path / "app.py"
    with ServiceProcess(app, module="graceful", args=command, env=environment) as svc:
        svc.wait_serving(1)
        address = svc.address()
        status = Control(pid_file).status()
        assert status["workers"] == 2
        first = get(address)
        assert first == {
            "DATABASE_URL": "postgres://one",
            "FROM_ENV_FILE": "first",
            "SHADOWED": "from-the-supervisor",
            "pid": first["pid"],
            "root_path": "/command-line",
            "x-config": "one",
        }

        # a deploy edits the env file and the configuration: the next generation
        # runs with both; the supervisor's ready_timeout needs graceful upgrade
        (tmp_path / ".env").write_text("FROM_ENV_FILE=second\nSHADOWED=from-the-file\n")
        config.write_text(
            CONFIGURATION.format(header="two", database="postgres://two").replace(
                "ready_timeout = 30", "ready_timeout = 40"
            )
        )
        mark = svc.mark()
        code, said = reload_and_wait(pid_file)
        assert code == 0, said
        svc.wait_for(
            r"ready_timeout changed in the configuration \(40.0, was 30.0\): it needs "
            "graceful upgrade",
            after=mark,
        )
        second = get(address)
        assert second["pid"] != first["pid"]
        assert (second["DATABASE_URL"], second["FROM_ENV_FILE"]) == ("postgres://two", "second")
        assert (second["SHADOWED"], second["x-config"]) == ("from-the-supervisor", "two")
        status = Control(pid_file).status()
        assert status["workers"] == 2
        [serving] = [g for g in status["generations"] if g["state"] == "serving"]
        assert serving["settings"]["headers"] == ["X-Config: two"]
        assert serving["settings"]["environment"] == ["DATABASE_URL", "FROM_ENV_FILE"]
        shown = graceful_cli("status", "--pid-file", str(pid_file)).stdout
        assert (
            f"generation {serving['generation']} configured with root_path /command-line; "
            "env_file .env; headers X-Config: two; environment DATABASE_URL, FROM_ENV_FILE"
        ) in shown, shown

        # a broken file fails that reload only: the running generation serves on
        for broken, said_in_it in (
            ("workers = [\n", "graceful.toml: not valid TOML"),
            ("wokers = 2\n", "graceful.toml, line 1: wokers: unknown setting (did you mean"),
            ("threads = 'many'\n", "graceful.toml, line 1: threads: threads='many' must be"),
        ):
            config.write_text(broken)
            code, said = reload_and_wait(pid_file)
            assert code == 1, said
            assert said_in_it in said, said
            assert len(said.splitlines()) == 1, said
            assert get(address)["pid"] in {w["pid"] for w in status_workers(pid_file)}
            assert get(address)["x-config"] == "two"
        config.write_text(CONFIGURATION.format(header="three", database="postgres://three"))
        (tmp_path / ".env").write_text("FROM_ENV_FILE='unterminated\n")
        code, said = reload_and_wait(pid_file)
        assert code == 1, said
        assert "env file .env, line 1: cannot parse" in said, said
        assert get(address)["x-config"] == "two"

        (tmp_path / ".env").unlink()
        code, said = reload_and_wait(pid_file)
        assert code == 1, said
        assert "env file .env: cannot read it" in said, said

        (tmp_path / ".env").write_text("FROM_ENV_FILE=third\n")
        code, said = reload_and_wait(pid_file)
        assert code == 0, said
        third = get(address)
        assert (third["DATABASE_URL"], third["FROM_ENV_FILE"]) == ("postgres://three", "third")
        assert third["x-config"] == "three"


def status_workers(pid_file: Path) -> list[dict[str, object]]:
    status = Control(pid_file).status()
    return [w for g in status["generations"] if g["state"] == "serving" for w in g["workers"]]


def test_a_crashed_worker_restarts_as_its_generation_was_configured(tmp_path: Path) -> None:
    """A replacement after a crash is started with its generation's configuration,
    not with the file as it is now."""
    (tmp_path / "app.py").write_text(ENVIRONMENT_APP)
    config = tmp_path / "graceful.toml"
    config.write_text("[env]\nDATABASE_URL = 'one'\n")
    pid_file = tmp_path / "graceful.pid"
    command = ["serve", "app:app", "--listen", "127.0.0.1:0", "--pid-file", str(pid_file)]
    with ServiceProcess(tmp_path / "app.py", module="graceful", args=command) as svc:
        svc.wait_serving(1)
        address = svc.address()
        config.write_text("[env]\nDATABASE_URL = 'two'\n")  # not reloaded
        [worker] = status_workers(pid_file)
        svc.wait_for(r"generation 1 is serving")
        import os  # noqa: PLC0415
        import signal  # noqa: PLC0415

        os.kill(int(str(worker["pid"])), signal.SIGKILL)
        poll_until(
            lambda: any(
                w["state"] == "ready" and w["pid"] != worker["pid"]
                for w in status_workers(pid_file)
            ),
            30,
            "a replacement worker ready",
        )
        assert get(address)["DATABASE_URL"] == "one"


# -- without processes: the precedence, and the refusals --------------------------------


def sources_of(
    tmp_path: Path, command_line: dict[str, object], environ: dict[str, str], text: str | None
) -> dict[str, object]:
    if text is not None:
        (tmp_path / "graceful.toml").write_text(text)
    return gather("graceful serve", command_line, environ, str(tmp_path)).merged()


def test_command_line_over_environment_over_file_over_web_concurrency(tmp_path: Path) -> None:
    file = "workers = 3\nprobation = 5.0\ndrain_timeout = 7\n"
    environ = {"GRACEFUL_WORKERS": "2", "GRACEFUL_PROBATION": "4", "WEB_CONCURRENCY": "9"}
    merged = sources_of(tmp_path, {"probation": 3.0}, environ, file)
    assert (merged["workers"], merged["probation"], merged["drain_timeout"]) == (2, 3.0, 7.0)
    assert sources_of(tmp_path, {}, {"WEB_CONCURRENCY": "9"}, "")["workers"] == 9
    assert sources_of(tmp_path, {}, {"WEB_CONCURRENCY": "9"}, "workers = 3")["workers"] == 3


def test_the_workers_environment_merges_name_by_name(tmp_path: Path) -> None:
    merged = sources_of(
        tmp_path, {"env": {"B": "cli"}}, {}, "[env]\nA = 'file'\nB = 'file'\nPORT = 8000\n"
    )
    assert merged["env"] == {"A": "file", "B": "cli", "PORT": "8000"}


def test_a_pyproject_is_read_from_its_tool_graceful_table_and_only_when_named(
    tmp_path: Path,
) -> None:
    (tmp_path / "pyproject.toml").write_text(
        "[project]\nname = 'x'\n\n[tool.graceful]\nworkers = 5\n\n[tool.graceful.env]\nA = 'b'\n"
    )
    assert "workers" not in gather("graceful serve", {}, {}, str(tmp_path)).merged()
    named = gather("graceful serve", {"config": "pyproject.toml"}, {}, str(tmp_path)).merged()
    assert (named["workers"], named["env"]) == (5, {"A": "b"})


@pytest.mark.parametrize(
    ("text", "environ", "said"),
    [
        ("workers = 0\n", {}, "graceful.toml, line 1: workers: workers=0 must be a whole number"),
        ("\n\nlisten = ':80'\n", {}, "graceful.toml, line 3: listen: listen=':80' must be a list"),
        ("wrkers = 2\n", {}, "line 1: wrkers: unknown setting (did you mean 'workers'?)"),
        ("pid-file = 'x'\n", {}, "unknown setting (the file names settings: 'pid_file')"),
        ("entry = 1\n[env]\nA = true\n", {}, "line 1: entry: unknown setting"),
        ("[env]\nA = true\n", {}, "graceful.toml, line 2: env.A: A=True must be a string"),
        ("config = 'other.toml'\n", {}, "a configuration file cannot name another"),
        ("[env]\nNOTIFY_SOCKET = '/x'\n", {}, "line 2: env.NOTIFY_SOCKET: NOTIFY_SOCKET is"),
        ("workers = [\n", {}, "graceful.toml: not valid TOML: "),
        ("", {"GRACEFUL_WORKERS": "two"}, "environment variable GRACEFUL_WORKERS='two': 'two'"),
        ("", {"WEB_CONCURRENCY": "0"}, "environment variable WEB_CONCURRENCY='0'"),
        ("", {"GRACEFUL_PRELOAD": "maybe"}, "GRACEFUL_PRELOAD='maybe': 'maybe' must be one of"),
        ("", {"GRACEFUL_CONFIG": "missing.toml"}, "missing.toml: cannot read it: No such file"),
    ],
)
def test_a_bad_value_is_one_line_naming_where_it_is(
    tmp_path: Path, text: str, environ: dict[str, str], said: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        sources_of(tmp_path, {}, environ, text)
    assert said in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_reload_reads_the_file_again_and_not_the_environment(tmp_path: Path) -> None:
    (tmp_path / "graceful.toml").write_text("workers = 3\n")
    sources = gather("graceful serve", {}, {"GRACEFUL_PROBATION": "4"}, str(tmp_path))
    (tmp_path / "graceful.toml").write_text("workers = 5\n")
    again = read_again(sources, "graceful serve", str(tmp_path)).merged()
    assert (again["workers"], again["probation"]) == (5, 4.0)


@pytest.mark.parametrize(
    ("files", "options", "said"),
    [
        ({"graceful.toml": "workers = 'x'\n"}, [], "graceful.toml, line 1: workers: workers='x'"),
        ({}, ["-c", "nowhere.toml"], "configuration file nowhere.toml: cannot read it"),
        ({"e.env": "A='x\n"}, ["--env-file", "e.env"], "env file e.env, line 1: cannot parse"),
        ({}, ["--env", "NOEQUALS"], "'NOEQUALS' must look like NAME=VALUE"),
        ({"gunicorn.conf.py": "workers = 2\n"}, ["-c", "gunicorn.conf.py"], "reads TOML, not"),
        ({}, ["--check-config"], "--check-config is not supported: graceful check APP"),
    ],
)
def test_graceful_serve_refuses_a_bad_configuration_before_starting_anything(
    tmp_path: Path, files: dict[str, str], options: list[str], said: str
) -> None:
    (tmp_path / "app.py").write_text(ENVIRONMENT_APP)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    result = graceful_cli("serve", "app:app", "--listen", "127.0.0.1:0", *options, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert said in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


NEEDS_ITS_ENVIRONMENT = """\
import os

DATABASE_URL = os.environ["DATABASE_URL"]  # read at import, as settings modules do


async def app(scope, receive, send):
    pass
"""


def test_graceful_check_prints_the_effective_settings_and_loads_the_app_as_a_worker(
    tmp_path: Path,
) -> None:
    (tmp_path / "app.py").write_text(NEEDS_ITS_ENVIRONMENT)
    (tmp_path / "graceful.toml").write_text("workers = 3\nroot_path = '/file'\n")
    # without the variable the workers need, the app's import fails: one line, 2
    result = graceful_cli("check", "app:app", "--port", "9", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "KeyError: 'DATABASE_URL' (app.py, line 3)" in result.stderr, result.stderr
    # with it, in the file's [env]: loaded; each setting with where it comes from
    (tmp_path / "graceful.toml").write_text(
        "workers = 3\nroot_path = '/file'\n[env]\nDATABASE_URL = 'x'\n"
    )
    result = graceful_cli("check", "app:app", "--port", "9", "--root-path", "/cli", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = {line.split("=")[0].strip(): line for line in result.stdout.splitlines()}
    assert lines["workers"].endswith("= 3  (graceful.toml)")
    assert lines["root_path"].endswith("= /cli  (command line)")
    assert lines["listen"].endswith("= 127.0.0.1:9  (command line)")
    assert lines["environment"].endswith("= DATABASE_URL (names only)  (command line, file)")
    assert "app app:app: an ASGI 3 app, imported as a worker imports it" in result.stdout
    # a missing attribute, a bad value: one line, 2, nothing started
    result = graceful_cli("check", "app:nothing", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "module 'app' has no 'nothing'" in result.stderr
    (tmp_path / "graceful.toml").write_text("workers = -1\n")
    result = graceful_cli("check", "app:app", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "graceful.toml, line 1: workers: workers=-1" in result.stderr


def test_the_log_format_and_level_come_from_the_file_too(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(ENVIRONMENT_APP)
    (tmp_path / "graceful.toml").write_text("log_format = 'json'\nlog_level = 'info'\n")
    command = ["serve", "app:app", "--listen", "127.0.0.1:0", "--no-access-log"]
    with ServiceProcess(tmp_path / "app.py", module="graceful", args=command) as svc:
        svc.wait_serving(1)
        serving = [json.loads(line) for line in svc.output.splitlines() if "is serving" in line]
        assert serving[0]["role"] == "supervisor", serving
        assert serving[0]["level"] == "INFO", serving


def test_a_reload_reads_the_files_of_the_release_the_link_names_now(tmp_path: Path) -> None:
    """A deploy switches the release link: the reload reads the new release's
    configuration file and env file (relative paths, from its directory), even once
    the old release is deleted."""
    releases = tmp_path / "releases"
    for name in ("r1", "r2"):
        release = releases / name
        release.mkdir(parents=True)
        (release / "app.py").write_text(ENVIRONMENT_APP)
        (release / "graceful.toml").write_text(
            f"env_file = '.env'\n[env]\nDATABASE_URL = '{name}'\n"
        )
        (release / ".env").write_text(f"FROM_ENV_FILE={name}\n")
    current = tmp_path / "current"
    current.symlink_to(releases / "r1")
    pid_file = tmp_path / "graceful.pid"
    command = [
        "serve", "app:app", "--listen", "127.0.0.1:0", "--pid-file", str(pid_file),
        "--release-link", str(current), "--probation", "0",
    ]  # fmt: skip
    app = current / "app.py"
    with ServiceProcess(app, module="graceful", args=command, env={"PWD": str(current)}) as svc:
        svc.wait_serving(1)
        address = svc.address()
        first = get(address)
        assert (first["DATABASE_URL"], first["FROM_ENV_FILE"]) == ("r1", "r1")
        switched = tmp_path / "current.new"
        switched.symlink_to(releases / "r2")
        switched.rename(current)
        code, said = reload_and_wait(pid_file)
        assert code == 0, said
        second = get(address)
        assert (second["DATABASE_URL"], second["FROM_ENV_FILE"]) == ("r2", "r2")
        for path in sorted((releases / "r1").iterdir()):
            path.unlink()
        (releases / "r1").rmdir()
        code, said = reload_and_wait(pid_file)
        assert code == 0, said
        assert get(address)["DATABASE_URL"] == "r2"


def toml_value(value: object) -> str:
    """``value`` written as TOML (the kinds of values settings take)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    assert isinstance(value, list | tuple), value
    return "[" + ", ".join(toml_value(item) for item in value) + "]"


def test_every_setting_of_the_commands_reads_its_default_back_from_a_file(
    tmp_path: Path,
) -> None:
    """Each declaration's default, written under its name, reads back as itself: the
    file takes every setting, under the name the reference gives it."""
    from graceful.core.settings import Watch, taken_by  # noqa: PLC0415

    for entry in ("graceful serve", "graceful run"):
        for declared in taken_by(entry):
            default = declared.default
            if default is None or declared.name == "config" or isinstance(default, Watch):
                continue
            (tmp_path / "graceful.toml").write_text(f"{declared.name} = {toml_value(default)}\n")
            merged = gather(entry, {}, {}, str(tmp_path)).merged()
            assert merged[declared.name] == declared.check(default), declared.name


def test_graceful_upgrade_applies_what_a_reload_cannot(tmp_path: Path) -> None:
    """The reload logs a changed worker count as needing graceful upgrade; the
    upgrade's new supervisor reads the file anew and runs it."""
    (tmp_path / "app.py").write_text(ENVIRONMENT_APP)
    config = tmp_path / "graceful.toml"
    config.write_text("workers = 1\n[env]\nDATABASE_URL = 'one'\n")
    pid_file = tmp_path / "graceful.pid"
    command = [
        "serve", "app:app", "--listen", "127.0.0.1:0", "--pid-file", str(pid_file),
        "--probation", "0",
    ]  # fmt: skip
    with ServiceProcess(tmp_path / "app.py", module="graceful", args=command) as svc:
        svc.wait_serving(1)
        address = svc.address()
        config.write_text("workers = 2\n[env]\nDATABASE_URL = 'two'\n")
        mark = svc.mark()
        code, said = reload_and_wait(pid_file)
        assert code == 0, said
        svc.wait_for(r"workers changed in the configuration \(2, was 1\)", after=mark)
        assert Control(pid_file).status()["workers"] == 1
        assert get(address)["DATABASE_URL"] == "two"
        result = graceful_cli("upgrade", "--pid-file", str(pid_file), "--wait", "--timeout", "90")
        assert result.returncode == 0, result.stdout + result.stderr
        status = Control(pid_file).status()
        assert status["pid"] != svc.pid
        assert status["workers"] == 2
        assert get(address)["DATABASE_URL"] == "two"
