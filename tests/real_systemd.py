"""Both shipped unit recipes under a real systemd (257, Debian 13), booted with
systemd-nspawn: ``nox -s real_systemd`` (root; not part of CI: it builds a Debian
root file system, about 300 MB, on first use).

What it checks, with the echo example and ``examples/systemd/``:

* ``graceful-echo.service`` (``Type=notify-reload``): start through socket
  activation, a good ``systemctl reload`` (exit 0, the new code answers, the
  MainPID stays), and a reload whose new code raises at import. The old code keeps
  serving and the status names the cause, but ``systemctl reload`` exits 0 and
  systemd records ``ReloadResult=success``: what systemd cannot be told (README).
* ``graceful-echo-checked.service`` (``Type=notify``, ``ExecReload=graceful reload
  --wait``): a good reload exits 0; a failed one makes ``systemctl reload`` fail,
  the service stays active, and the old code keeps serving.
* Both stop cleanly (``systemctl stop``: the drain, exit 0).
* ``graceful upgrade --pid-file P --wait`` on each recipe. First to a release whose
  script raises in the supervisor process: exit 1 with the cause, the MainPID
  unchanged, the unit active and not restarted, the old code serving. Then to a
  good release (the ``current`` link switched), under light load from inside the
  container (tests/real_systemd_load.py) with a connection of the old code held
  open across it: exit 0; systemd's MainPID moves to the successor (the PID
  file's content), the unit stays active with no restart (NRestarts unchanged); a
  new connection gets the new code; the old supervisor exits once the successor's
  probation has passed; the held connection is answered by the old code to its
  end and no request fails. Then, with the link switched again, ``systemctl
  reload`` reloads the successor (the MainPID stays, the new release answers), and
  ``systemctl stop`` stops it: no process left in the cgroup, none SIGKILLed.
* With ``NotifyAccess=main`` (what the units had before ``graceful upgrade``), what
  an upgrade does is printed, not checked: systemd ignores the successor's
  ``MAINPID=``.

It prints each step and exits 1 at the first one that does not hold, or, for a
check that later ones do not depend on, goes on and exits 1 at the end, listing
the checks that did not hold. The facts it relies on are in the README of this
project's shared notes (REAL_SYSTEMD.md).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("GRACEFUL_SYSTEMD_ROOT", "/var/tmp/graceful-systemd/root"))
MIRROR = os.environ.get("GRACEFUL_DEBIAN_MIRROR", "http://deb.debian.org/debian")
APP = Path("/opt/graceful-echo")
PORT = 8080
#: each recipe's PID file (ECHO_PID_FILE= in examples/systemd/*.service)
PID_FILES = {
    "graceful-echo.service": "/run/graceful-echo/echo.pid",
    "graceful-echo-checked.service": "/run/graceful-echo-checked/echo.pid",
}
#: the light load stops once this file exists (the same path inside the container)
LOAD_STOP = APP / "load.stop"
#: the echo example's script, as the old code's supervisor runs it
SCRIPT_MAIN = 'if __name__ == "__main__":\n'


def step(text: str) -> None:
    print(f"--- {text}", flush=True)


def run(*command: str, check: bool = True, **options: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, text=True, capture_output=True, check=False, **options)  # type: ignore[call-overload]
    if check and result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{result.stdout}{result.stderr}")
    return result  # type: ignore[no-any-return]


def build_root() -> None:
    if (CACHE / "usr/lib/systemd/systemd").exists():
        return
    step(f"building a Debian 13 root file system in {CACHE} (about 2 minutes)")
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    run(
        "debootstrap",
        "--variant=minbase",
        "--include=systemd,systemd-sysv,dbus,python3,python3-venv,procps,iproute2",
        "trixie",
        str(CACHE),
        MIRROR,
    )


def install_project() -> None:
    step("installing this tree into the container's /opt/graceful-echo")
    source = CACHE / "opt/graceful-echo/src"
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(".venv", ".nox", ".git", "__pycache__", "*.egg-info"),
    )
    certificates = Path("/etc/ssl/certs/ca-certificates.crt")
    shutil.copy(certificates, CACHE / "opt/graceful-echo/ca.crt")
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "PIP_CERT": "/opt/graceful-echo/ca.crt",
        "HOME": "/root",
    }
    if not (CACHE / "opt/graceful-echo/.venv/bin/python").exists():
        run("chroot", str(CACHE), "python3", "-m", "venv", str(APP / ".venv"), env=env)
    run(
        "chroot", str(CACHE), str(APP / ".venv/bin/pip"), "install", "-q", str(APP / "src"),
        env=env,
    )  # fmt: skip
    shutil.rmtree(CACHE / "opt/graceful-echo/releases", ignore_errors=True)
    release = CACHE / "opt/graceful-echo/releases/r1"
    release.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "examples/echo_asyncio.py", release / "echo_asyncio.py")
    current = CACHE / "opt/graceful-echo/current"
    if current.is_symlink() or current.exists():
        current.unlink()
    current.symlink_to("releases/r1")
    shutil.copy(ROOT / "tests/real_systemd_load.py", CACHE / "opt/graceful-echo/light_load.py")
    shutil.rmtree(CACHE / "etc/systemd/system/graceful-echo.service.d", ignore_errors=True)
    units = CACHE / "etc/systemd/system"
    for unit in (
        "graceful-echo.socket",
        "graceful-echo.service",
        "graceful-echo-checked.socket",
        "graceful-echo-checked.service",
    ):
        shutil.copy(ROOT / "examples/systemd" / unit, units / unit)


class Container:
    """A booted systemd-nspawn container, driven through nsenter."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [
                "systemd-nspawn", "-D", str(CACHE), "-b", "--private-network",
                "--register=no", "--keep-unit", "--console=pipe", "-M", "graceful-check",
            ],
            env={**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            self.pid = self._init_pid()
            self.wait_until_running()
        except BaseException:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise

    def _init_pid(self) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            children = run("ps", "-o", "pid=", "--ppid", str(self.process.pid), check=False)
            for pid in children.stdout.split():
                try:
                    comm = Path(f"/proc/{pid}/comm").read_text().strip()
                except OSError:
                    continue  # a short-lived child of systemd-nspawn, gone already
                if comm == "systemd":
                    return int(pid)
            time.sleep(0.2)
        raise SystemExit("the container's systemd did not start within 60 s")

    def sh(self, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("nsenter", "-t", str(self.pid), "-a", "sh", "-c", command, check=check)

    def wait_until_running(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            state = self.sh("systemctl is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.5)
        raise SystemExit("the container's systemd did not finish booting within 120 s")

    def answer(self) -> str:
        """One line through the echo service, from inside the container."""
        script = (
            "import socket; s = socket.create_connection(('127.0.0.1', 8080), timeout=10); "
            "s.sendall(b'hi\\n'); print(s.makefile('rb').readline().decode().strip())"
        )
        return self.sh(f'python3 -c "{script}"').stdout.strip()

    def set_prefix(self, source_change: str) -> None:
        """Edit the release ``current`` points to: the echo example with ``source_change``."""
        path = (CACHE / "opt/graceful-echo/current").resolve() / "echo_asyncio.py"
        text = (ROOT / "examples/echo_asyncio.py").read_text()
        path.write_text(text.replace('PREFIX = b"echo: "', source_change))

    def deploy(self, release: str, source_change: str, *, supervisor_raises: bool = False) -> None:
        """Write ``releases/<release>`` (the echo example with ``source_change``; with
        ``supervisor_raises``, its script raises in the supervisor process alone, not
        in workers) and switch the ``current`` link to it (atomically)."""
        directory = CACHE / "opt/graceful-echo/releases" / release
        directory.mkdir(parents=True, exist_ok=True)
        text = (ROOT / "examples/echo_asyncio.py").read_text()
        assert 'PREFIX = b"echo: "' in text
        assert SCRIPT_MAIN in text
        text = text.replace('PREFIX = b"echo: "', source_change)
        if supervisor_raises:
            boom = '    raise RuntimeError("boom in the supervisor")\n'
            text = text.replace(SCRIPT_MAIN, SCRIPT_MAIN + boom)
        (directory / "echo_asyncio.py").write_text(text)
        self.switch(release)

    def switch(self, release: str) -> None:
        """Point the ``current`` link at ``releases/<release>`` (atomically)."""
        current = CACHE / "opt/graceful-echo/current"
        staged = current.with_name("current.new")
        if staged.is_symlink() or staged.exists():
            staged.unlink()
        staged.symlink_to(f"releases/{release}")
        staged.replace(current)

    def start(self, unit: str, source_change: str) -> None:
        """``systemctl start unit`` on the echo example with ``source_change``, in
        release r1."""
        self.deploy("r1", source_change)
        started = self.sh(f"systemctl start {unit}", check=False)
        if started.returncode != 0:
            journal = self.sh(f"journalctl -u {unit} --no-pager -n 40", check=False).stdout
            raise SystemExit(f"FAILED: systemctl start {unit}\n{started.stderr}{journal}")

    def reload(self, unit: str, source_change: str) -> subprocess.CompletedProcess[str]:
        """``systemctl reload unit`` once the release has the echo example with
        ``source_change``; its result."""
        self.set_prefix(source_change)
        return self.sh(f"systemctl reload {unit}", check=False)

    def show(self, unit: str, prop: str) -> str:
        return self.sh(f"systemctl show -P {prop} {unit}").stdout.strip()

    def graceful(self, arguments: str) -> tuple[subprocess.CompletedProcess[str], float]:
        """``graceful ARGUMENTS`` inside the container: its result, and how long it took."""
        started = time.monotonic()
        result = self.sh(f"{APP}/.venv/bin/graceful {arguments}", check=False)
        return result, time.monotonic() - started

    def alive(self, pid: str) -> bool:
        """Whether the process ``pid`` (in the container) exists."""
        return self.sh(f"test -d /proc/{pid}", check=False).returncode == 0

    def cgroup_processes(self, unit: str) -> list[str]:
        """The processes in ``unit``'s cgroup (with their command lines)."""
        group = self.show(unit, "ControlGroup")
        if not group:
            return []
        pids = self.sh(f"cat /sys/fs/cgroup{group}/cgroup.procs", check=False).stdout.split()
        described = []
        for pid in pids:
            command = self.sh(f"ps -o args= -p {pid}", check=False).stdout.strip()
            described.append(f"{pid} {command[:70]}")
        return described

    def journal(self, unit: str, lines: int = 40) -> str:
        return self.sh(f"journalctl -u {unit} --no-pager -n {lines}", check=False).stdout

    def http_status(self, url: str) -> str:
        """The HTTP status of a GET of ``url`` from inside the container (or the error)."""
        script = (
            "import urllib.request, urllib.error\n"
            "try:\n"
            f'    print(urllib.request.urlopen("{url}", timeout=5).status)\n'
            "except urllib.error.HTTPError as exc:\n"
            "    print(exc.code)\n"
            "except OSError as exc:\n"
            "    print(type(exc).__name__)\n"
        )
        return self.sh(f"python3 -c '{script}'", check=False).stdout.strip()

    def close(self) -> None:
        self.sh("systemctl poweroff", check=False)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


class Load:
    """tests/real_systemd_load.py, running inside the container until :meth:`stop`."""

    def __init__(self, box: Container, hold: float) -> None:
        host_stop = CACHE / str(LOAD_STOP).lstrip("/")
        host_stop.unlink(missing_ok=True)
        self._stop = host_stop
        self.process = subprocess.Popen(
            [
                "nsenter", "-t", str(box.pid), "-a", "python3", str(APP / "light_load.py"),
                "--clients", "4", "--hold", str(hold), "--stop", str(LOAD_STOP),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        first = self.process.stdout.readline().strip()
        expect(first == "ready", f"the light load runs, its held connection open ({first})")

    def stop(self) -> dict[str, object]:
        self._stop.touch()
        out, _ = self.process.communicate(timeout=60)
        self._stop.unlink(missing_ok=True)
        tally: dict[str, object] = json.loads(out.strip().splitlines()[-1])
        return tally


#: the checks that did not hold but let the run go on (``expect(..., fatal=False)``)
FAULTS: list[str] = []


def expect(condition: bool, what: str, *, fatal: bool = True) -> None:
    """Print the check; one that does not hold ends the run, or, not ``fatal`` (later
    checks do not depend on it), is recorded in FAULTS and makes the run fail at
    its end."""
    if not condition:
        if fatal:
            raise SystemExit(f"FAILED: {what}")
        FAULTS.append(what)
        print(f"    FAILED (going on): {what}", flush=True)
        return
    print(f"    ok: {what}", flush=True)


def check_notify_reload(box: Container) -> None:
    unit = "graceful-echo.service"
    step(f"{unit}: Type=notify-reload")
    box.start(unit, 'PREFIX = b"v1: "')
    expect(box.answer() == "v1: hi", "it serves generation 1")
    main_pid = box.show(unit, "MainPID")
    reload = box.reload(unit, 'PREFIX = b"v2: "')
    expect(reload.returncode == 0, "systemctl reload exits 0 on good code")
    expect(box.answer() == "v2: hi", "the new code answers once systemctl reload returns")
    expect(box.show(unit, "MainPID") == main_pid, "the MainPID stays")
    reload = box.reload(unit, 'PREFIX = b"v3: "\nraise RuntimeError("boom")')
    expect(box.answer() == "v2: hi", "after a reload whose code raises, the old code serves")
    status = box.show(unit, "StatusText")
    expect("RuntimeError: boom" in status, f"StatusText names the cause: {status!r}")
    print(
        f"    seen: systemctl reload exit {reload.returncode}, "
        f"ReloadResult={box.show(unit, 'ReloadResult')} (systemd cannot be told it failed)"
    )
    box.sh(f"systemctl stop {unit} graceful-echo.socket")
    expect(box.show(unit, "Result") == "success", "systemctl stop drains and exits cleanly")


def check_checked_reload(box: Container) -> None:
    unit = "graceful-echo-checked.service"
    step(f"{unit}: Type=notify with ExecReload=graceful reload --wait")
    box.start(unit, 'PREFIX = b"v1: "')
    expect(box.answer() == "v1: hi", "it serves generation 1")
    reload = box.reload(unit, 'PREFIX = b"v2: "')
    expect(reload.returncode == 0, "systemctl reload exits 0 on good code")
    expect(box.answer() == "v2: hi", "the new code answers once systemctl reload returns")
    reload = box.reload(unit, 'PREFIX = b"v3: "\nraise RuntimeError("boom")')
    expect(reload.returncode != 0, "systemctl reload fails when the new code raises")
    expect(box.show(unit, "ActiveState") == "active", "the service stays active")
    expect(box.answer() == "v2: hi", "the old code keeps serving")
    result = box.show(unit, "ReloadResult")
    expect(result != "success", f"systemd records the failed reload: ReloadResult={result}")
    journal = box.sh(f"journalctl -u {unit} --no-pager -n 30", check=False).stdout
    expect("RuntimeError: boom" in journal, "the journal names the cause")
    box.sh(f"systemctl stop {unit}")
    expect(box.show(unit, "Result") == "success", "systemctl stop drains and exits cleanly")


#: what systemd shows of the main process, before and after an upgrade
MAIN_PROPERTIES = (
    "MainPID", "ExecMainPID", "ExecMainStartTimestamp", "NRestarts", "ActiveState", "SubState",
)  # fmt: skip


def main_properties(box: Container, unit: str) -> dict[str, str]:
    return {prop: box.show(unit, prop) for prop in MAIN_PROPERTIES}


def wait_gone(box: Container, pid: str, timeout: float) -> float | None:
    """Seconds until process ``pid`` has exited, or None if it is still there."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if not box.alive(pid):
            return time.monotonic() - started
        time.sleep(0.5)
    return None


def systemd_lines(journal: str) -> list[str]:
    """The journal's lines from systemd itself (not the service's output)."""
    return [line for line in journal.splitlines() if " systemd[1]: " in line]


def upgrade(box: Container, pid_file: str, release: str) -> tuple[int, str]:
    """``graceful upgrade --wait`` once ``current`` names ``release``: its exit status
    and output, printed with how long it took."""
    result, seconds = box.graceful(f"upgrade --pid-file {pid_file} --wait --timeout 120")
    output = (result.stdout + result.stderr).strip()
    print(
        f"    graceful upgrade --wait (current -> {release}): exit {result.returncode} in "
        f"{seconds:.2f}s: {output}"
    )
    return result.returncode, output


def check_upgrade(box: Container, unit: str, health: str | None = None) -> None:
    """``graceful upgrade`` on ``unit``: one that fails, one under load, then a
    reload of the successor and a stop."""
    pid_file = PID_FILES[unit]
    step(f"{unit}: an upgrade to a release whose script raises in the supervisor")
    box.start(unit, 'PREFIX = b"v1: "')
    expect(box.answer() == "v1: hi", "it serves release r1 (v1)")
    before = main_properties(box, unit)
    print(f"    before: {before}")
    old = before["MainPID"]
    expect(box.sh(f"cat {pid_file}").stdout.strip() == old, f"{pid_file} names MainPID {old}")
    box.deploy("r2", 'PREFIX = b"v2: "', supervisor_raises=True)
    code, output = upgrade(box, pid_file, "r2")
    expect(code == 1, "graceful upgrade --wait exits 1")
    expect("boom in the supervisor" in output, "and names the cause")
    now = main_properties(box, unit)
    expect(now["MainPID"] == old, f"MainPID stays {old}")
    expect(now["ActiveState"] == "active", "the unit stays active")
    expect(now["NRestarts"] == before["NRestarts"], "no restart")
    expect(box.answer() == "v1: hi", "the running code (v1) keeps serving")
    print(f"    StatusText: {box.show(unit, 'StatusText')!r}")

    step(f"{unit}: graceful upgrade under light load, a connection held across it")
    load = Load(box, hold=12)
    box.deploy("r3", 'PREFIX = b"v3: "')
    code, output = upgrade(box, pid_file, "r3")
    answered = time.monotonic()
    expect(code == 0, "graceful upgrade --wait exits 0")
    after = main_properties(box, unit)
    print(f"    before: {before}")
    print(f"    after:  {after}")
    successor = box.sh(f"cat {pid_file}").stdout.strip()
    expect(successor != old, f"the PID file names the successor {successor}, not {old}")
    expect(after["MainPID"] == successor, f"MainPID moves {old} -> {successor}")
    expect(
        (after["ActiveState"], after["SubState"]) == ("active", "running"),
        "the unit stays active (running)",
    )
    restarts = after["NRestarts"]
    expect(restarts == before["NRestarts"], f"no restart (NRestarts={restarts})")
    print(
        f"    seen: ExecMainPID {before['ExecMainPID']} -> {after['ExecMainPID']}, "
        f"ExecMainStartTimestamp {before['ExecMainStartTimestamp']!r} -> "
        f"{after['ExecMainStartTimestamp']!r}"
    )
    expect(box.answer() == "v3: hi", "a new connection gets release r3 (v3)")
    if health is not None:
        ready = box.http_status(f"http://{health}/ready")
        expect(ready == "200", f"the health endpoint, now the successor's, answers /ready {ready}")
    status, _ = box.graceful(f"status --pid-file {pid_file}")
    for line in status.stdout.splitlines():
        if "upgrade" in line:
            print(f"    graceful status: {line.strip()}")
    print(f"    the unit's cgroup: {box.cgroup_processes(unit)}")
    gone = wait_gone(box, old, 60)
    since = time.monotonic() - answered
    expect(
        gone is not None,
        f"the old supervisor {old} exits ({since:.1f}s after graceful upgrade returned: the "
        "successor's probation, then its drain)",
        fatal=False,
    )
    if gone is None:
        print(f"    the unit's cgroup: {box.cgroup_processes(unit)}")
        wchan = box.sh(f"cat /proc/{old}/wchan", check=False).stdout.strip()
        children = box.sh(f"ps -o pid=,stat=,wchan:16=,args= --ppid {old}", check=False)
        print(f"    supervisor {old} waits in the kernel at {wchan!r}; its children:")
        for line in children.stdout.strip().splitlines():
            print(f"      {line.strip()[:150]}")
        print("    its last lines in the journal:")
        mine = [line for line in box.journal(unit, 200).splitlines() if f"[{old}]" in line]
        for line in mine[-3:]:
            print(f"      {line}")
    later = main_properties(box, unit)
    expect(
        later["MainPID"] == successor and later["ActiveState"] == "active",
        f"MainPID is still {successor} and the unit active (NRestarts={later['NRestarts']})",
    )
    tally = load.stop()
    print(f"    light load: {tally}")
    expect(tally["failed"] == 0, f"no request failed ({tally['ok']} answered)")
    prefixes = tally["prefixes"]
    assert isinstance(prefixes, dict)
    expect("v3: " in prefixes, "the load reached the successor's code (v3)")
    held = tally["held"]
    assert isinstance(held, dict)
    expect(
        not held["failures"] and set(held["answers"]) == {"v1: "} and held["seconds"] >= 12,
        f"the held connection was answered by the old code to its end: {held}",
    )

    step(f"{unit}: systemctl reload of the successor, once current -> r4")
    box.deploy("r4", 'PREFIX = b"v4: "')
    reload = box.sh(f"systemctl reload {unit}", check=False)
    expect(reload.returncode == 0, "systemctl reload exits 0")
    expect(box.show(unit, "MainPID") == successor, f"MainPID stays {successor}")
    answer = box.answer()
    expect(
        answer == "v4: hi",
        f"the release the link names now (r4, v4) answers once systemctl reload returns: "
        f"{answer!r}",
        fatal=False,
    )
    follows = [
        line
        for line in box.journal(unit, 300).splitlines()
        if f"[{successor}]" in line and "release link" in line
    ]
    expect(
        follows != [],
        f"the successor {successor} follows the release link (its journal names it)",
        fatal=False,
    )
    if answer != "v4: hi":
        cwd = box.sh(f"readlink /proc/{successor}/cwd", check=False).stdout.strip()
        environ = box.sh(f"tr '\\0' '\\n' < /proc/{successor}/environ", check=False).stdout
        pwd = [line for line in environ.splitlines() if line.startswith("PWD=")]
        print(f"    the successor's working directory: {cwd}; $PWD: {pwd or 'unset'}")

    step(f"{unit}: systemctl stop of the successor")
    print(f"    the unit's cgroup: {box.cgroup_processes(unit)}")
    started, since = time.monotonic(), int(time.time()) - 1
    box.sh(f"systemctl stop {unit}")
    print(f"    systemctl stop took {time.monotonic() - started:.2f}s")
    stopping = box.sh(
        f"journalctl -u {unit} --no-pager --since=@{since}", check=False
    ).stdout.splitlines()
    expect(box.show(unit, "ActiveState") == "inactive", "the unit is inactive")
    result = box.show(unit, "Result")
    expect(result == "success", f"Result={result}", fatal=False)
    expect(box.cgroup_processes(unit) == [], "no process is left in its cgroup")
    left = box.sh("pgrep -af [e]cho_asyncio", check=False).stdout.strip()
    expect(left == "", f"no echo process is left in the container {left!r}")
    killed = [line for line in stopping if "SIGKILL" in line]
    expect(
        killed == [],
        f"graceful stopped every process itself: systemd killed none ({len(killed)} SIGKILLs)",
        fatal=False,
    )
    print("    the journal of the stop:")
    for line in stopping[-16:]:
        print(f"      {line}")
    box.sh(f"systemctl stop {unit.replace('.service', '.socket')}")


def check_notify_access_main(box: Container) -> None:
    """What an upgrade does under the units' former NotifyAccess=main: printed only."""
    unit = "graceful-echo.service"
    step(f"{unit} with NotifyAccess=main (a drop-in): what graceful upgrade does")
    dropin = CACHE / "etc/systemd/system/graceful-echo.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "notify-main.conf").write_text("[Service]\nNotifyAccess=main\n")
    box.sh("systemctl daemon-reload")
    try:
        box.start(unit, 'PREFIX = b"v1: "')
        before = main_properties(box, unit)
        print(f"    before: {before}")
        box.deploy("r2", 'PREFIX = b"v2: "')
        since_upgrade = int(time.time()) - 1
        upgrade, seconds = box.graceful(
            f"upgrade --pid-file {PID_FILES[unit]} --wait --timeout 120"
        )
        print(
            f"    seen: graceful upgrade --wait: exit {upgrade.returncode} in {seconds:.2f}s: "
            f"{(upgrade.stdout + upgrade.stderr).strip()}"
        )
        pid_file = box.sh(f"cat {PID_FILES[unit]}", check=False).stdout.strip()
        after = main_properties(box, unit)
        print(f"    seen: after it, the PID file names {pid_file}; systemd shows {after}")
        old = before["MainPID"]
        gone = wait_gone(box, old, 60)
        time.sleep(2)
        print(
            f"    seen: the old supervisor {old} "
            + (f"exited after {gone:.1f}s" if gone is not None else "has not exited after 60s")
            + f"; then {main_properties(box, unit)}, Result={box.show(unit, 'Result')}"
        )
        started = time.monotonic()
        box.sh(f"systemctl stop {unit}", check=False)
        print(
            f"    seen: systemctl stop took {time.monotonic() - started:.2f}s, "
            f"Result={box.show(unit, 'Result')}; systemd's journal lines since the upgrade:"
        )
        since = f"--since=@{since_upgrade}"
        stopping = box.sh(f"journalctl -u {unit} --no-pager {since}", check=False)
        for line in systemd_lines(stopping.stdout)[-10:]:
            print(f"      {line}")
    finally:
        box.sh(f"systemctl stop {unit} graceful-echo.socket", check=False)
        shutil.rmtree(dropin, ignore_errors=True)
        box.sh("systemctl daemon-reload")


def main() -> int:
    if os.geteuid() != 0:
        print("needs root (debootstrap, systemd-nspawn)", file=sys.stderr)
        return 2
    for tool in ("debootstrap", "systemd-nspawn", "nsenter"):
        if shutil.which(tool) is None:
            print(f"needs {tool} (apt-get install debootstrap systemd-container)", file=sys.stderr)
            return 2
    build_root()
    install_project()
    step("booting the container")
    box = Container()
    try:
        version = box.sh("systemctl --version").stdout.splitlines()[0]
        print(f"    {version}")
        check_notify_reload(box)
        check_upgrade(box, "graceful-echo.service")
        check_checked_reload(box)
        check_upgrade(box, "graceful-echo-checked.service", health="127.0.0.1:9100")
        check_notify_access_main(box)
    finally:
        box.close()
    if FAULTS:
        step(f"{len(FAULTS)} checks did not hold:")
        for fault in FAULTS:
            print(f"    {fault}")
        return 1
    step("both recipes behave as documented, graceful upgrade included")
    return 0


if __name__ == "__main__":
    sys.exit(main())
