"""Development mode (``--watch``): saves reload the service with zero downtime, and
a broken save leaves the running code serving, named once in one status line.

Files are saved the way editors save them, written beside and renamed into place,
and each test waits for a save's status line before the next save.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest
from harness import ServiceProcess, connect, poll_until, read_line, running
from http_load import HttpLoad
from services import service_source, starlette_app

#: what each of 20 saves writes: a version that serves, or one of three broken ones
FAILING_LIFESPAN = "    raise RuntimeError('lifespan of save 16 failed')"
BROKEN = {
    5: ("syntax", "MESSAGE = 'v5'\ndef broken(:\n    pass\n"),
    11: ("import", starlette_app("v11", imports="import no_such_module_11")),
    16: ("lifespan", starlette_app("v16", lifespan=FAILING_LIFESPAN)),
}  # fmt: skip

#: what each broken save's status line must name: its file, line and message
NAMED = {
    5: r"SyntaxError: invalid syntax \(app\.py, line 2\)",
    11: r"ModuleNotFoundError: No module named 'no_such_module_11' \(app\.py, line 6\)",
    16: r"RuntimeError: lifespan of save 16 failed \(app\.py, line \d+\)",
}

#: a status line: served, failed, or neither (superseded, abandoned at the stop)
STATUS = re.compile(r"[✓✗·] generation \d+ ")


def save(path: Path, text: str) -> None:
    """Save as an editor does: beside the file, then renamed into place."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def status_lines(svc: ServiceProcess) -> list[str]:
    return [line for line in svc.lines if STATUS.search(line)]


def next_status(svc: ServiceProcess, seen: int) -> str:
    """Wait for the status line after the first ``seen`` ones; return it."""
    try:
        poll_until(lambda: len(status_lines(svc)) > seen, 30, f"status line {seen + 1}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; output:\n{svc.output}") from None
    return status_lines(svc)[seen]


def test_twenty_saves_under_load_with_three_broken_lose_no_request(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    save(app, starlette_app("v0"))
    with running(
        app,
        module="graceful",
        args=["serve", "app:app", "--watch", "--listen", "127.0.0.1:0", "--no-access-log",
              "--drain-timeout", "5"],
        cwd=tmp_path,
        env={"FORCE_COLOR": "1", "PYTHONDONTWRITEBYTECODE": "1"},
    ) as svc:  # fmt: skip
        svc.wait_serving(1)
        svc.wait_for(r"watching .* \(\*\.py\): a save reloads")
        with HttpLoad(f"http://{svc.address()}/", clients=12) as load:
            load.wait_for_body("v0")
            for number in range(1, 21):
                broken = BROKEN.get(number)
                text = broken[1] if broken else starlette_app(f"v{number}")
                save(app, text)
                line = next_status(svc, number - 1)
                if broken:
                    assert "✗" in line, line
                    assert re.search(NAMED[number], line), line
                    assert "keeps serving" in line
                else:
                    assert "✓" in line, line
                    load.wait_for_body(f"v{number}")  # the new code answers
        assert load.tally.failures == {}, load.tally.failures
        assert load.tally.ok > 1000
    output = svc.output
    # one status line per save: a save is one reload
    assert len(status_lines(svc)) == 20
    # each broken save is named once, in colour
    for number in BROKEN:
        pattern = NAMED[number].split(r" \(")[0]
        assert len(re.findall(pattern, output)) == 1, (number, output)
    assert "\x1b[1;31m✗ generation" in output
    assert "\x1b[32m✓ generation" in output
    # the supervisor's own account of each reload is replaced by the status line
    assert output.count("starting generation") == 1
    assert "reload failed" not in output
    # uvicorn's start and stop narrative too
    assert "Waiting for application startup" not in output.split("generation 1 is serving")[1]


def test_graceful_run_watch_follows_the_include_and_exclude_globs(tmp_path: Path) -> None:
    (tmp_path / "skipped").mkdir()
    with watched_echo(
        tmp_path,
        "--watch", "--watch-include", "*.py", "--watch-include", "*.toml",
        "--watch-exclude", "skipped",
        workers=3,  # a broken save is still named once, not once per worker
    ) as svc:  # fmt: skip
        svc.wait_serving(1)

        assert answer_of(svc) == b"v1: hello\n"
        save(tmp_path / "helper.py", "PREFIX = b'v2: '\n")
        assert "✓ generation 2 serving" in next_status(svc, 0)
        poll_until(lambda: answer_of(svc) == b"v2: hello\n", 10, "the new code")
        # not a watched name, and a watched name in an excluded directory: no reload
        (tmp_path / "notes.txt").write_text("hello")
        (tmp_path / "skipped" / "ignored.py").write_text("x = 1\n")
        # a watched name of another kind: a reload
        save(tmp_path / "settings.toml", "debug = true\n")
        assert "generation 3 serving" in next_status(svc, 1)
        assert len(status_lines(svc)) == 2
        # a module that raises at import: named once, no traceback, old code serves
        save(tmp_path / "helper.py", "PREFIX = b'v4: '\nraise LookupError('no config v4')\n")
        line = next_status(svc, 2)
        assert "✗ generation 4 failed" in line
        assert "LookupError: no config v4 (helper.py, line 2)" in line, line
        assert svc.output.count("no config v4") == 1
        assert "Traceback" not in svc.output
        assert answer_of(svc) == b"v2: hello\n"
        # the next good save recovers, with no action
        save(tmp_path / "helper.py", "PREFIX = b'v5: '\n")
        assert "✓ generation 5 serving" in next_status(svc, 3)
        poll_until(lambda: answer_of(svc) == b"v5: hello\n", 10, "the fixed code")
        # a reload asked for otherwise is named as such, not after the last save
        svc.send(signal.SIGHUP)
        assert "✓ generation 6 serving" in next_status(svc, 4)
        assert status_lines(svc)[4].endswith("(reload)"), status_lines(svc)[4]
        # not a terminal: no colour
        assert "\x1b[" not in svc.output
        # Ctrl-C as ever
        svc.send(signal.SIGINT)
        assert svc.wait_exit() == 0


def test_watch_in_the_decorator_follows_the_scripts_directory(tmp_path: Path) -> None:
    (tmp_path / "handlers.py").write_text("PREFIX = b'v1: '\n")
    script = tmp_path / "svc.py"
    script.write_text(
        service_source(prefix_from_module=True).replace(
            "@graceful.service(\n", "@graceful.service(\n    watch=True,\n"
        )
    )
    with running(script, env={"LISTEN": "127.0.0.1:0", "PROBATION": "0"}) as svc:
        svc.wait_serving(1)
        svc.wait_for(rf"watching {re.escape(str(tmp_path))} ")
        save(tmp_path / "handlers.py", "PREFIX = b'v2: '\n")
        assert "✓ generation 2 serving" in next_status(svc, 0)


@pytest.mark.parametrize(
    ("watch", "why"),
    [
        ("['/no/such/dir']", "cannot watch '/no/such/dir': no such file or directory"),
        ("'yes'", "watch='yes' must be True, a list of directories, or a graceful.Watch"),
        ("graceful.Watch(include=('',))", "watch pattern '' must be a non-empty glob"),
    ],
)
def test_a_watch_that_cannot_work_is_one_line(tmp_path: Path, watch: str, why: str) -> None:
    script = tmp_path / "svc.py"
    script.write_text(
        service_source().replace(
            "@graceful.service(\n", f"@graceful.service(\n    watch={watch},\n"
        )
    )
    with running(script, env={"LISTEN": "127.0.0.1:0"}) as svc:
        assert svc.wait_exit() == 2
        errors = [line for line in svc.lines if "ERROR" in line]
        assert len(errors) == 1, svc.output
        assert why in errors[0]
        assert "starting generation" not in svc.output


def test_the_watchers_thread_takes_no_signal(tmp_path: Path) -> None:
    """As the bytecode check's: SIGTTIN or SIGUSR2 while the supervisor stops must not
    reach a thread that lives on (see tests/test_lifecycle.py for the race)."""
    script = tmp_path / "svc.py"
    script.write_text(textwrap.dedent(service_source()).replace(
        "@graceful.service(\n", "@graceful.service(\n    watch=True,\n"
    ))  # fmt: skip
    with running(script, env={"LISTEN": "127.0.0.1:0"}) as svc:
        svc.wait_serving(1)
        poll_until(lambda: len(os.listdir(f"/proc/{svc.pid}/task")) > 1, 10, "the thread")
        for task in os.listdir(f"/proc/{svc.pid}/task"):
            if int(task) == svc.pid:
                continue  # the main thread: it takes them, on purpose
            with open(f"/proc/{svc.pid}/task/{task}/status") as status:
                blocked = next(line for line in status if line.startswith("SigBlk:"))
            mask = int(blocked.split()[1], 16)
            for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGUSR2, signal.SIGTTIN):
                assert mask & (1 << (signum - 1)), (task, blocked)


def answer_of(svc: ServiceProcess) -> bytes:
    with connect(svc.address()) as client:
        client.sendall(b"hello\n")
        return read_line(client)


def watched_echo(
    tmp_path: Path, *args: str, prefix: str = "v1", workers: int = 1
) -> ServiceProcess:
    """``graceful run svc:main ARGS`` on the echo service, whose answers' prefix comes
    from ``helper.py`` (a module the script imports through ``handlers.py``)."""
    (tmp_path / "helper.py").write_text(f"PREFIX = b'{prefix}: '\n")
    (tmp_path / "handlers.py").write_text("from helper import PREFIX\n")
    (tmp_path / "svc.py").write_text(service_source(prefix_from_module=True))
    return ServiceProcess(
        tmp_path / "svc.py",
        module="graceful",
        args=["run", "svc:main", *args],
        cwd=tmp_path,
        env={"LISTEN": "127.0.0.1:0", "PROBATION": "0", "READY_TIMEOUT": "60",
             "PYTHONDONTWRITEBYTECODE": "1", "WORKERS": str(workers)},
    )  # fmt: skip


def test_a_save_that_hangs_is_superseded_by_the_next_one(tmp_path: Path) -> None:
    with watched_echo(tmp_path, "--watch") as svc:
        svc.wait_serving(1)
        hanging = tmp_path / "hanging"
        save(
            tmp_path / "helper.py",
            f"import time\nopen({str(hanging)!r}, 'w').close()\ntime.sleep(3600)\n",
        )
        poll_until(hanging.exists, 20, "a worker hanging in the import")
        # the fix does not wait for ready_timeout (60 s) to run out
        save(tmp_path / "helper.py", "PREFIX = b'v3: '\n")
        poll_until(lambda: "✓" in "".join(status_lines(svc)), 20, "the fix serving")
        *superseded, served = status_lines(svc)
        assert "✓ generation" in served, served
        assert superseded, svc.output
        assert all("superseded by a newer change" in line for line in superseded), superseded
        # (generation 1 answers until it has closed its listener, a moment later)
        poll_until(lambda: answer_of(svc) == b"v3: hello\n", 10, "v3 answering")
        poll_until(lambda: len(svc.worker_pids()) == 1, 10, "the hanging worker killed")


def test_an_app_broken_at_start_waits_for_a_fix(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    save(app, starlette_app("v1", imports="import no_such_module_yet"))
    with running(
        app,
        module="graceful",
        args=["serve", "app:app", "--watch", "--listen", "127.0.0.1:0", "--no-access-log"],
        cwd=tmp_path,
        env={"PYTHONDONTWRITEBYTECODE": "1"},
    ) as svc:  # fmt: skip
        line = next_status(svc, 0)
        assert "✗ generation 1 failed" in line, line
        assert "No module named 'no_such_module_yet' (app.py, line 6)" in line, line
        assert "nothing serves yet: waiting for a change" in line
        assert svc.proc.poll() is None  # still there, its listener bound
        with HttpLoad(f"http://{svc.address()}/", clients=4) as load:
            save(app, starlette_app("v2"))
            assert "✓ generation 2 serving" in next_status(svc, 1)
            # what waited in the backlog meanwhile is answered by the fixed code
            load.wait_for_body("v2")
        assert load.tally.failures == {}, load.tally.failures


def test_a_watched_file_is_followed_across_saves_whatever_its_name(tmp_path: Path) -> None:
    settings = tmp_path / "settings.toml"
    settings.write_text("version = 0\n")
    with watched_echo(tmp_path, "--watch-dir", str(settings)) as svc:
        svc.wait_serving(1)
        for number in (1, 2, 3):
            save(settings, f"version = {number}\n")  # renamed into place, each time
            assert f"generation {number + 1} serving" in next_status(svc, number - 1)
        save(tmp_path / "helper.py", "PREFIX = b'v9: '\n")  # not watched
        assert answer_of(svc) == b"v1: hello\n"
        assert len(status_lines(svc)) == 3


def test_a_watched_directory_deleted_and_made_again_is_followed_again(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    with watched_echo(tmp_path, "--watch-dir", str(source)) as svc:
        svc.wait_serving(1)
        mark = svc.mark()
        (source).rmdir()
        svc.wait_for(rf"cannot watch {re.escape(str(source))}: no such directory", after=mark)
        source.mkdir()
        svc.wait_for(rf"watching {re.escape(str(source))} again", after=mark)
        # what was written there while it was not watched may be new code: reloaded
        assert "✓ generation 2 serving" in next_status(svc, 0)
        assert status_lines(svc)[0].endswith(f"({source.name})"), status_lines(svc)


def test_too_few_inotify_watches_fall_back_to_polling_and_keep_serving(tmp_path: Path) -> None:
    """The tree has more directories than the user may watch (in a user namespace of
    its own, with max_inotify_watches=5): the supervisor says once what is wrong and
    how to raise the limit, watches by polling instead, and a save still reloads."""
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "true"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"no user namespace here: {probe.stderr.decode().strip()}")
    for index in range(20):
        (tmp_path / "tree" / f"d{index}").mkdir(parents=True)
    limited = (
        "unshare", "--user", "--map-root-user", "sh", "-c",
        'echo 5 > /proc/sys/user/max_inotify_watches && exec "$@"', "sh",
    )  # fmt: skip
    (tmp_path / "helper.py").write_text("PREFIX = b'v1: '\n")
    (tmp_path / "handlers.py").write_text("from helper import PREFIX\n")
    (tmp_path / "svc.py").write_text(service_source(prefix_from_module=True))
    with ServiceProcess(
        tmp_path / "svc.py",
        module="graceful",
        args=["run", "svc:main", "--watch"],
        cwd=tmp_path,
        wrapper=limited,
        env={"LISTEN": "127.0.0.1:0", "PROBATION": "0", "PYTHONDONTWRITEBYTECODE": "1"},
    ) as svc:
        svc.wait_serving(1)
        svc.wait_for(r"max_user_watches")

        def saved_and_reloaded() -> bool:
            # saved again until the polling watcher (set up a moment after the
            # warning, with a first look at the tree) sees a save
            save(tmp_path / "helper.py", "PREFIX = b'v2: '\n")
            return answer_of(svc) == b"v2: hello\n"

        poll_until(saved_and_reloaded, 30, "a save reloaded")
        assert svc.proc.poll() is None
        assert "Traceback" not in svc.output
        assert svc.output.count("max_user_watches") == 1, svc.output


def test_a_save_of_thousands_of_files_is_one_short_status_line(tmp_path: Path) -> None:
    with watched_echo(tmp_path, "--watch") as svc:
        svc.wait_serving(1)
        seen = len(status_lines(svc))
        batch = tmp_path / "generated"
        batch.mkdir()
        for index in range(2000):
            (batch / f"m{index}.py").write_text("X = 1\n")
        next_status(svc, seen)
        lines = status_lines(svc)[seen:]
        # (the saves may come in more than one batch: every line is short, and a big
        # batch names a few files and counts the rest)
        assert all(len(line) < 400 for line in lines), lines
        assert any(re.search(r"and \d+ more\)", line) for line in lines), lines
