"""The contract between a running supervisor and the newer (or older) graceful its
children import from disk (``graceful/_version.py``).

The pinned shapes below change only together with ``PROTOCOL``: a test failure here
after a change to a bootstrap or a message means "bump the protocol and pin the new
shape", never "update the pin".
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from harness import ROOT, ask, connect, graceful_cli, running
from services import pid_service

from graceful import _boot, _version
from graceful.wire import bootstrap, messages

#: The shape of everything that crosses from a supervisor to its children, by protocol.
PINNED = {
    2: {
        "start_worker": ["control", "fd_channel", "bootstrap"],
        "start_standby": ["bootstrap", "hidden", "link", "control", "fd_channel"],
        "start_template": ["bootstrap", "forks"],
        "WorkerBootstrap": [
            "entry", "generation", "worker_id", "supervisor_pid", "listeners", "options",
            "log_level", "main",
        ],
        "TemplateBootstrap": [
            "entry", "generation", "supervisor_pid", "listeners", "options", "log_level",
            "main",
        ],
        "StandbyBootstrap": [
            "entry", "options", "log_level", "started_ns", "template", "sys_path",
        ],
        "Assignment": ["cwd", "worker", "template"],
        "WorkerOptions": [
            "drain_timeout", "backend", "entry_options", "backend_options", "report_only",
        ],
        "MainScript": ["module", "path", "sys_path"],
        "EntryRef": ["module", "qualname"],
        "Hello": ["graceful", "protocol", "python", "executable"],
    },
    3: {
        "start_worker": ["control", "fd_channel", "bootstrap"],
        "start_standby": ["bootstrap", "hidden", "link", "control", "fd_channel"],
        "start_template": ["bootstrap", "forks"],
        "WorkerBootstrap": [
            "entry", "generation", "supervisor_pid", "listeners", "options", "log_level",
            "main", "worker_id",
        ],
        "TemplateBootstrap": [
            "entry", "generation", "supervisor_pid", "listeners", "options", "log_level",
            "main",
        ],
        "StandbyBootstrap": [
            "entry", "options", "log_level", "started_ns", "template", "sys_path",
        ],
        "Assignment": ["cwd", "worker", "template"],
        "WorkerOptions": [
            "drain_timeout", "backend", "entry_options", "backend_options", "report_only",
        ],
        "MainScript": ["module", "path", "sys_path"],
        "EntryRef": ["module", "qualname"],
        "Hello": ["graceful", "protocol", "python", "executable"],
        # a pickle names each type by its module: moving one is a new protocol
        "modules": ["graceful.wire.bootstrap", "graceful.wire.messages"],
    },
    # the vitals page follows the listeners on the fd channel at a worker's start
    4: {
        "start_worker": ["control", "fd_channel", "bootstrap"],
        "start_standby": ["bootstrap", "hidden", "link", "control", "fd_channel"],
        "start_template": ["bootstrap", "forks"],
        "WorkerBootstrap": [
            "entry", "generation", "supervisor_pid", "listeners", "options", "log_level",
            "main", "worker_id",
        ],
        "TemplateBootstrap": [
            "entry", "generation", "supervisor_pid", "listeners", "options", "log_level",
            "main",
        ],
        "StandbyBootstrap": [
            "entry", "options", "log_level", "started_ns", "template", "sys_path",
        ],
        "Assignment": ["cwd", "worker", "template"],
        "WorkerOptions": [
            "drain_timeout", "backend", "entry_options", "backend_options", "report_only",
            "heartbeat",
        ],
        "MainScript": ["module", "path", "sys_path"],
        "EntryRef": ["module", "qualname"],
        "Hello": ["graceful", "protocol", "python", "executable"],
        "modules": ["graceful.wire.bootstrap", "graceful.wire.messages"],
    },
}  # fmt: skip


def current_shape() -> dict[str, list[str]]:
    shape: dict[str, list[str]] = {
        name: list(inspect.signature(getattr(_boot, name)).parameters)
        for name in ("start_worker", "start_standby", "start_template")
    }
    classes = (
        bootstrap.WorkerBootstrap,
        bootstrap.TemplateBootstrap,
        bootstrap.StandbyBootstrap,
        bootstrap.Assignment,
        bootstrap.WorkerOptions,
        bootstrap.MainScript,
        bootstrap.EntryRef,
        messages.Hello,
    )
    for cls in classes:
        shape[cls.__name__] = [field.name for field in dataclasses.fields(cls)]
    shape["modules"] = sorted({cls.__module__ for cls in classes})
    return shape


#: What crosses to a successor supervisor (graceful upgrade), by succession version:
#: kept between every pair of versions, so only ever added to.
SUCCESSION_PINNED = {
    1: {
        "start_supervisor": ["bootstrap", "link"],
        "bootstrap": [
            "argv", "log_level", "main", "notify_socket", "pid_file", "predecessor",
            "release_link", "sockets", "succession",
        ],
        "main": ["module", "path", "sys_path"],
        "predecessor": ["graceful", "pid", "python"],
        "socket": ["owned", "role", "spec"],
    },
}  # fmt: skip


def test_what_crosses_to_a_successor_supervisor_is_pinned() -> None:
    from graceful.spawn import successor  # noqa: PLC0415

    assert vars(successor)["start_supervisor"] is _boot.start_supervisor
    assert (_boot.start_supervisor.__module__, _boot.start_supervisor.__qualname__) == (
        "graceful._boot",
        "start_supervisor",
    )
    one, other = socket.socketpair()
    with one, other:
        handed = [successor.Handed("listener", ":8080", one)]
        boot = successor.successor_bootstrap(
            bootstrap.MainScript(None, "/srv/app.py", []),
            handed,
            pid_file=None,
            notify_socket=None,
            log_level=20,
        )
    pinned = SUCCESSION_PINNED[_version.SUCCESSION]
    assert list(inspect.signature(_boot.start_supervisor).parameters) == pinned["start_supervisor"]
    assert sorted(boot) == pinned["bootstrap"]
    assert sorted(boot["main"]) == pinned["main"]
    assert sorted(boot["predecessor"]) == pinned["predecessor"]
    assert sorted(boot["sockets"][0]) == pinned["socket"]
    # JSON, whatever version reads it
    assert json.loads(json.dumps(boot)) == boot


def test_what_crosses_to_children_is_pinned_to_the_protocol() -> None:
    assert _version.PROTOCOL in PINNED, "a new protocol: pin its shape here"
    assert current_shape() == PINNED[_version.PROTOCOL]


def test_the_boot_entries_stay_where_running_supervisors_name_them() -> None:
    """A running supervisor names its spawn targets by module and function: they
    never move, whatever the layout around them becomes."""
    assert (ROOT / "graceful" / "_boot.py").is_file()
    for name in ("start_worker", "start_standby", "start_template"):
        target = getattr(_boot, name)
        assert (target.__module__, target.__qualname__) == ("graceful._boot", name)


def test_every_process_graceful_spawns_starts_at_a_boot_entry() -> None:
    """The spawn target is pickled by module and name: the spawner and the template
    factory must hand multiprocess the boot entries themselves, not a wrapper."""
    from graceful.spawn import spawner, template  # noqa: PLC0415

    assert vars(spawner)["start_worker"] is _boot.start_worker
    assert vars(spawner)["start_standby"] is _boot.start_standby
    assert vars(template)["start_template"] is _boot.start_template


def test_hello_is_one_line_of_every_protocol() -> None:
    line = _version.hello_line()
    assert line.endswith(b"\n")
    [hello] = [messages.decode(line[:-1])]
    assert isinstance(hello, messages.Hello)
    assert (hello.graceful, hello.protocol) == (_version.VERSION, _version.PROTOCOL)
    # keys a supervisor does not know are ignored; a hello without a protocol is not one
    newer = b'["hello",{"graceful":"9.0","protocol":7,"python":"3.14.0","tls":true}]'
    assert messages.decode(newer) == messages.Hello("9.0", 7, "3.14.0", "?")
    with pytest.raises(ValueError, match="protocol"):
        messages.decode(b'["hello",{"graceful":"9.0"}]')


def test_a_bootstrap_of_another_protocol_is_not_unpickled(tmp_path: Path) -> None:
    assert _boot.wrap({"x": 1}).startswith(_version.BOOTSTRAP_HEADER)
    assert _version.mismatch("9.9.9", 99, "worker") is not None
    assert _version.mismatch("0.0.1", _version.PROTOCOL, "worker") is None


def install_graceful_beside(app_dir: Path, version: str, protocol: int) -> None:
    """What a ``pip install -U`` does to the next child: a graceful of ``version``
    speaking ``protocol``, which the service's children import first (the app's
    directory is first on their ``sys.path``)."""
    copy = app_dir / "graceful"
    shutil.copytree(ROOT / "graceful", copy, ignore=shutil.ignore_patterns("__pycache__"))
    source = (copy / "_version.py").read_text()
    source = source.replace(f'VERSION = "{_version.VERSION}"', f'VERSION = "{version}"')
    source = source.replace(f"PROTOCOL = {_version.PROTOCOL}", f"PROTOCOL = {protocol}")
    (copy / "_version.py").write_text(source)


def reload_with_graceful_beside(
    tmp_path: Path, version: str, protocol: int
) -> subprocess.CompletedProcess[str]:
    """Install graceful ``version`` (speaking ``protocol``) beside the service in
    ``tmp_path`` (:func:`install_graceful_beside`), write its code anew (``v2``), and
    ``graceful reload --wait``: the reload's result."""
    install_graceful_beside(tmp_path, version, protocol)
    _, pid_file = pid_service(tmp_path, prefix="v2")
    return graceful_cli("reload", "--wait", "--pid-file", str(pid_file))


@pytest.mark.parametrize("standby", ["1", "0"])
def test_a_child_of_another_protocol_fails_the_reload_in_one_line(
    tmp_path: Path, standby: str
) -> None:
    script, _ = pid_service(tmp_path, prefix="v1")
    env = {"LISTEN": "127.0.0.1:0", "PROBATION": "0", "STANDBY": standby}
    with running(script, env=env) as svc:
        svc.wait_serving(1)
        if standby == "1":
            svc.warm_standby()
        result = reload_with_graceful_beside(tmp_path, "9.9.9", 99)
        assert result.returncode == 1, result.stdout + result.stderr
        expected = (
            f"the worker runs graceful 9.9.9 (protocol 99), which this supervisor "
            f"(graceful {_version.VERSION}, protocol {_version.PROTOCOL}) cannot speak to: "
            "restart the service to run graceful 9.9.9"
        )
        assert expected in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert expected in svc.output
        assert "Traceback" not in svc.output
        with connect(svc.address()) as client:
            assert ask(client, "still") == b"v1: still\n"
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0, svc.output


def test_a_child_of_a_newer_compatible_graceful_is_named_once_and_in_status(
    tmp_path: Path,
) -> None:
    script, pid_file = pid_service(tmp_path, prefix="v1")
    env = {"LISTEN": "127.0.0.1:0", "PROBATION": "0", "WORKERS": "2"}
    with running(script, env=env) as svc:
        svc.wait_serving(1)
        result = reload_with_graceful_beside(tmp_path, "0.1.1", _version.PROTOCOL)
        assert result.returncode == 0, result.stdout + result.stderr
        line = (
            f"generation 2 runs graceful 0.1.1 under supervisor {_version.VERSION} "
            f"(protocol {_version.PROTOCOL})"
        )
        assert svc.output.count(line) == 1, svc.output
        status = json.loads(graceful_cli("status", "--json", "--pid-file", str(pid_file)).stdout)
        assert status["graceful"] == _version.VERSION
        [serving] = [g for g in status["generations"] if g["state"] == "serving"]
        assert (serving["graceful"], serving["protocol"]) == ("0.1.1", _version.PROTOCOL)
        human = graceful_cli("status", "--pid-file", str(pid_file)).stdout
        assert "graceful 0.1.1" in human
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0, svc.output
