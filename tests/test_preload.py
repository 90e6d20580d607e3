"""One import per generation (``preload``), with real supervisors and real load.

The generation's template imports the code once and forks the workers: an edited
module is live in every worker after a reload, the workers share the template's
pages, workers started later (scaling, crash replacements) run their generation's
code rather than the files on disk, and code that cannot be forked safely is
refused in one line.
"""

from __future__ import annotations

import collections
import os
import signal
import textwrap
from pathlib import Path

import psutil
from echo_load import Load
from harness import ServiceProcess, ask, connect, poll_until, running
from http_load import HttpLoad
from services import minimal_asgi_app, service_source

from graceful import Control

#: ``before_serve`` code: the answers name the process (``v1 1234: ``).
PID_IN_PREFIX = """\
    global PREFIX
    PREFIX = PREFIX[:-2] + f" {os.getpid()}: ".encode()
"""


def handlers(tmp_path: Path, prefix: str, extra: str = "") -> None:
    (tmp_path / "handlers.py").write_text(f"PREFIX = {f'{prefix}: '.encode()!r}\n{extra}")


def preloaded(
    tmp_path: Path, workers: int = 3, before_serve: str = "", **more: str
) -> ServiceProcess:
    script = tmp_path / "svc.py"
    script.write_text(
        service_source(
            prefix_from_module=True,
            before_serve=PID_IN_PREFIX + before_serve,
            pid_file=tmp_path / "svc.pid",
        )
    )
    env = {
        "LISTEN": "127.0.0.1:0",
        "WORKERS": str(workers),
        "DRAIN_TIMEOUT": "5",
        "PROBATION": "0",
        "PRELOAD": "1",
        # the template runs the code imported from disk: no stale .pyc may hide it
        "PYTHONDONTWRITEBYTECODE": "1",
        **more,
    }
    return ServiceProcess(script, env=env)


def serving_pids(pid_file: Path) -> list[int]:
    """The PIDs of the serving generation's ready workers."""
    status = Control(pid_file).status()
    return sorted(
        worker["pid"]
        for generation in status["generations"]
        if generation["state"] == "serving"
        for worker in generation["workers"]
        if worker["state"] == "ready"
    )


def answers_by_pid(address: str, count: int) -> dict[int, set[str]]:
    """``count`` answers on new connections: which versions each PID answered."""
    seen: dict[int, set[str]] = collections.defaultdict(set)
    for _ in range(count):
        with connect(address) as client:
            answer = ask(client, "hello").decode()
        version, pid = answer.split(":")[0].split()
        seen[int(pid)].add(version)
    return seen


def named(svc: ServiceProcess, name: str) -> list[int]:
    """The service's processes named ``name`` (``/proc/PID/comm``)."""
    found = []
    for pid in svc.processes():
        try:
            if psutil.Process(pid).name() == name:
                found.append(pid)
        except psutil.NoSuchProcess:
            continue
    return found


def templates(svc: ServiceProcess) -> list[int]:
    """The service's template processes."""
    return named(svc, "graceful-tmpl")


def test_with_preload_an_edited_module_is_live_in_every_worker_after_a_reload(
    tmp_path: Path,
) -> None:
    handlers(tmp_path, "v1")
    pid_file = tmp_path / "svc.pid"
    with preloaded(tmp_path, workers=3, STRATEGY="rolling") as svc:
        svc.wait_serving(1)
        poll_until(pid_file.exists, 10, "the PID file")
        first = serving_pids(pid_file)
        [template] = templates(svc)
        # the workers are forked from the template, then adopted by the supervisor
        assert all(psutil.Process(pid).ppid() == svc.pid for pid in first)
        assert template not in first
        with Load(svc.address(), clients=12) as load:
            poll_until(lambda: load.tally.ok > 200, 20, "answers")
            handlers(tmp_path, "v2")
            mark = svc.mark()
            svc.send(signal.SIGHUP)
            svc.wait_serving(2, after=mark)
            poll_until(lambda: len(svc.worker_pids()) == 4, 30, "generation 1 gone")
            before = load.tally.ok
            poll_until(lambda: load.tally.ok > before + 300, 20, "more answers")
        assert load.tally.failed == 0, load.tally.as_dict()
        second = serving_pids(pid_file)
        assert len(second) == 3
        assert not set(second) & set(first)
        seen = answers_by_pid(svc.address(), 60)
        assert set(seen) <= set(second)
        assert all(versions == {"v2"} for versions in seen.values()), seen
        # generation 1's template has gone with it; generation 2 has its own
        assert psutil.pid_exists(template) is False or template not in svc.processes()
        assert len(templates(svc)) == 1


def private_and_shared_mib(pid: int) -> tuple[float, float]:
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            name, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                fields[name] = int(value.split()[0]) / 1024
    return fields["Private_Dirty"], fields["Shared_Dirty"]


BIG_IMPORT = """\
BIG = bytearray(64 * 1024 * 1024)
for _page in range(0, len(BIG), 4096):
    BIG[_page] = 1  # touched: really allocated, at import
"""


def test_the_workers_of_a_preloaded_generation_share_their_imported_pages(
    tmp_path: Path,
) -> None:
    handlers(tmp_path, "v1", BIG_IMPORT)
    pid_file = tmp_path / "svc.pid"
    for preload, check in (("1", "shared"), ("0", "private")):
        with preloaded(tmp_path, workers=2, PRELOAD=preload) as svc:
            svc.wait_serving(1)
            poll_until(pid_file.exists, 10, "the PID file")
            for pid in serving_pids(pid_file):
                private, shared = private_and_shared_mib(pid)
                if check == "shared":
                    # the 64 MiB written at import is the template's, shared
                    assert shared >= 64, (private, shared)
                    assert private < 32, (private, shared)
                else:
                    assert private >= 64, (private, shared)
            svc.send(signal.SIGTERM)
            assert svc.wait_exit() == 0


def test_with_preload_workers_started_later_run_the_generations_code(tmp_path: Path) -> None:
    handlers(tmp_path, "v1")
    pid_file = tmp_path / "svc.pid"
    with preloaded(tmp_path, workers=1) as svc:
        svc.wait_serving(1)
        poll_until(pid_file.exists, 10, "the PID file")
        handlers(tmp_path, "v2")  # on disk, not reloaded
        mark = svc.mark()
        svc.send(signal.SIGTTIN)
        svc.wait_for(r"generation 1 worker 1 is ready \(2/2 workers ready\)", after=mark)
        victim = serving_pids(pid_file)[0]
        mark = svc.mark()
        os.kill(victim, signal.SIGKILL)
        svc.wait_for(r"generation 1 worker \d is back in service", after=mark)
        pids = serving_pids(pid_file)
        assert victim not in pids
        assert len(pids) == 2
        seen = answers_by_pid(svc.address(), 40)
        assert all(versions == {"v1"} for versions in seen.values()), seen
        status = Control(pid_file).status()
        assert status["preload"] is True
        assert status["generations"][0]["may_be_mixed"] is False


def test_preload_refuses_code_that_starts_a_thread_at_import(tmp_path: Path) -> None:
    handlers(
        tmp_path,
        "v1",
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(60,), name='poller', daemon=True).start()\n",
    )
    with preloaded(tmp_path, workers=2) as svc:
        assert svc.wait_exit() == 1
        assert "preload: the code started 1 thread(s) at import (poller)" in svc.output
        assert svc.output.count("thread(s) at import") <= 3  # the template, and its workers
        poll_until(lambda: svc.processes() == [], 10, "no process left")


def test_with_preload_new_code_that_fails_at_import_fails_the_reload_once(
    tmp_path: Path,
) -> None:
    handlers(tmp_path, "v1")
    pid_file = tmp_path / "svc.pid"
    with preloaded(tmp_path, workers=3) as svc:
        svc.wait_serving(1)
        poll_until(pid_file.exists, 10, "the PID file")
        first = serving_pids(pid_file)
        with Load(svc.address(), clients=12) as load:
            poll_until(lambda: load.tally.ok > 200, 20, "answers")
            handlers(tmp_path, "v2", "raise RuntimeError('no database')\n")
            mark = svc.mark()
            svc.send(signal.SIGHUP)
            svc.wait_for(r"reload failed: generation 2: .*no database", after=mark)
            before = load.tally.ok
            poll_until(lambda: load.tally.ok > before + 200, 20, "more answers")
        assert load.tally.failed == 0, load.tally.as_dict()
        assert serving_pids(pid_file) == first
        # imported once, by the template: one traceback, not one per worker
        assert svc.output[svc.output.index("SIGHUP") :].count("Traceback") == 1
        poll_until(lambda: len(templates(svc)) == 1, 10, "the failed template gone")


#: the app counts its imports: one line per import in the file $IMPORTS
COUNTED_IMPORT = """\
with open(os.environ["IMPORTS"], "a") as imports:
    imports.write(f"{os.getpid()}\\n")
"""


def counted_app(message: str) -> str:
    return minimal_asgi_app(message, header=COUNTED_IMPORT, body='f"{MESSAGE} {os.getpid()}"')


def test_graceful_serve_preload_imports_the_app_once_per_generation(tmp_path: Path) -> None:
    imports = tmp_path / "imports"
    app = tmp_path / "app.py"
    app.write_text(counted_app("v1"))
    with running(
        app,
        module="graceful",
        args=["serve", "app:app", "--listen", "127.0.0.1:0", "--no-access-log",
              "--workers", "3", "--preload", "--probation", "0", "--drain-timeout", "5"],
        cwd=tmp_path,
        env={"IMPORTS": str(imports), "PYTHONDONTWRITEBYTECODE": "1"},
    ) as svc:  # fmt: skip
        svc.wait_serving(1)
        assert len(imports.read_text().split()) == 1
        url = f"http://{svc.address()}/"
        with HttpLoad(url, clients=12) as load:
            poll_until(lambda: load.tally.ok > 200, 20, "answers")
            app.write_text(counted_app("v2"))
            mark = svc.mark()
            svc.send(signal.SIGHUP)
            svc.wait_serving(2, after=mark)
            poll_until(lambda: len(svc.worker_pids()) == 4, 30, "generation 1 gone")
            before = collections.Counter(load.tally.bodies)
            poll_until(lambda: load.tally.ok > sum(before.values()) + 300, 20, "more answers")
            after = collections.Counter(load.tally.bodies) - before
        assert load.tally.failures == {}, load.tally.failures
        assert {body.split()[0] for body in after} == {"v2"}, after
        old_pids = {body.split()[1] for body in before if body.startswith("v1")}
        assert not old_pids & {body.split()[1] for body in after}
        assert len(imports.read_text().split()) == 2  # one import per generation


def test_preload_is_refused_without_a_boolean(tmp_path: Path) -> None:
    script = tmp_path / "svc.py"
    script.write_text(
        textwrap.dedent(
            """\
            import graceful

            @graceful.service(listen=["127.0.0.1:0"], preload="yes")
            async def main(ctx):
                await ctx.serve(lambda stream: None)

            if __name__ == "__main__":
                main.run()
            """
        )
    )
    with running(script) as svc:
        assert svc.wait_exit() == 2
        assert "preload='yes' must be True or False" in svc.output


def test_a_killed_template_fails_its_reload_and_a_dead_serving_template_is_named(
    tmp_path: Path,
) -> None:
    handlers(tmp_path, "v1")
    pid_file = tmp_path / "svc.pid"
    gate = tmp_path / "gate"
    with preloaded(tmp_path, workers=2) as svc:
        svc.wait_serving(1)
        poll_until(pid_file.exists, 10, "the PID file")
        first = serving_pids(pid_file)
        [template] = templates(svc)
        # a new generation whose import waits: its template dies in the middle
        handlers(
            tmp_path,
            "v2",
            f"import os, time\nwhile not os.path.exists({str(gate)!r}):\n    time.sleep(0.01)\n",
        )
        mark = svc.mark()
        svc.send(signal.SIGHUP)
        poll_until(lambda: len(templates(svc)) == 2, 20, "the new template")
        [new_template] = [pid for pid in templates(svc) if pid != template]
        os.kill(new_template, signal.SIGKILL)
        svc.wait_for(
            r"reload failed: generation 2: .*the template of generation 2 exited "
            r"\(killed by signal 9\)",
            after=mark,
        )
        assert serving_pids(pid_file) == first
        # the serving generation's template dies too: a crashed worker cannot be
        # replaced, and the log says why
        os.kill(template, signal.SIGKILL)
        mark = svc.mark()
        os.kill(first[0], signal.SIGKILL)
        svc.wait_for(
            r"the template of generation 1 exited \(killed by signal 9\): the generation's "
            "workers cannot be replaced until the next reload",
            after=mark,
        )
        assert answers_by_pid(svc.address(), 10).keys() == {first[1]}
        # a reload brings a new template and every worker back
        gate.touch()
        handlers(tmp_path, "v3")
        mark = svc.mark()
        svc.send(signal.SIGHUP)
        svc.wait_serving(3, after=mark)
        poll_until(lambda: len(serving_pids(pid_file)) == 2, 20, "two workers")
        poll_until(lambda: first[1] not in svc.worker_pids(), 20, "generation 1 gone")
        seen = answers_by_pid(svc.address(), 30)
        assert all(versions == {"v3"} for versions in seen.values()), seen


def test_a_generation_retired_while_its_template_forks_leaves_the_next_reload_whole(
    tmp_path: Path,
) -> None:
    # slow forks; worker 0 of v2 fails in its entry point while worker 1 is forked
    slow_forks = "import os, time\nos.register_at_fork(before=lambda: time.sleep(0.3))\n"
    handlers(tmp_path, "v1", slow_forks)
    broken = (
        "    if CTX.worker_id == 0 and PREFIX.startswith(b'v2'):\n"
        "        raise RuntimeError('worker 0 of v2 is broken')\n"
    )
    with preloaded(tmp_path, workers=3, before_serve=broken) as svc:
        svc.wait_serving(1)
        handlers(tmp_path, "v2", slow_forks)
        mark = svc.mark()
        svc.send(signal.SIGHUP)
        svc.wait_for(r"reload failed: generation 2: worker 0: .*v2 is broken", after=mark)
        handlers(tmp_path, "v3", slow_forks)
        svc.send(signal.SIGHUP)
        svc.wait_serving(3, after=mark)
        poll_until(lambda: len(svc.worker_pids()) == 3 + 1, 20, "generation 1 gone")
        seen = answers_by_pid(svc.address(), 20)
        assert all(versions == {"v3"} for versions in seen.values()), seen
        since = "\n".join(svc.lines[mark:])
        assert "BusyResourceError" not in since
        assert "BrokenPipeError" not in since
        assert "did not finish draining" not in since
        started = svc.mark()
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0
        assert "killing it" not in "\n".join(svc.lines[started:])


def test_what_a_retired_template_started_at_import_is_stopped_when_it_exits(
    tmp_path: Path,
) -> None:
    helper = "import subprocess\nHELPER = subprocess.Popen(['sleep', '1000'])\n"
    handlers(tmp_path, "v1", helper)
    with preloaded(tmp_path, workers=1) as svc:
        svc.wait_serving(1)

        def helpers() -> list[int]:
            return named(svc, "sleep")

        # one started by the supervisor's own import of the script, one by the template
        poll_until(lambda: len(helpers()) == 2, 10, "the helpers")
        mark = svc.mark()
        svc.send(signal.SIGHUP)
        svc.wait_serving(2, after=mark)
        # generation 1's template exits, and what it started goes with it, without
        # waiting for another reload or the stop
        poll_until(lambda: len(helpers()) == 2, 10, "one template's helper left")
        poll_until(lambda: len(templates(svc)) == 1, 10, "one template left")


def test_a_template_whose_import_hangs_is_killed_when_its_generation_fails(
    tmp_path: Path,
) -> None:
    """Three reloads into code whose import hangs, each failing at ready_timeout:
    no template is left behind."""
    handlers(tmp_path, "v1")
    with preloaded(tmp_path, workers=2, READY_TIMEOUT="1") as svc:
        svc.wait_serving(1)
        assert len(templates(svc)) == 1
        handlers(tmp_path, "v2", "import time\ntime.sleep(3600)\n")
        for generation in (2, 3, 4):
            mark = svc.mark()
            svc.send(signal.SIGHUP)
            svc.wait_for(rf"reload failed: generation {generation}: ", after=mark)
        poll_until(lambda: len(templates(svc)) == 1, 10, "only the serving template left")
        with connect(svc.address()) as client:
            assert ask(client, "still").startswith(b"v1 ")
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0


def test_a_template_that_does_not_exit_when_its_generation_ends_is_killed(
    tmp_path: Path,
) -> None:
    """Generation 1's template is stopped (SIGSTOP) when a reload retires it: it can
    never read its closed socket, and is killed a few seconds later instead of
    holding the whole imported app until the service stops."""
    handlers(tmp_path, "v1")
    with preloaded(tmp_path, workers=1) as svc:
        svc.wait_serving(1)
        [first] = templates(svc)
        os.kill(first, signal.SIGSTOP)
        handlers(tmp_path, "v2")
        mark = svc.mark()
        svc.send(signal.SIGHUP)
        svc.wait_serving(2, after=mark)
        poll_until(lambda: first not in templates(svc), 20, "the stopped template killed")
        assert len(templates(svc)) == 1
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0
