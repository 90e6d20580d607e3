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

It prints each step and exits 1 at the first one that does not hold. The facts it
relies on are in the README of this project's shared notes (REAL_SYSTEMD.md).
"""

from __future__ import annotations

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
    release = CACHE / "opt/graceful-echo/releases/r1"
    release.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "examples/echo_asyncio.py", release / "echo_asyncio.py")
    current = CACHE / "opt/graceful-echo/current"
    if current.is_symlink() or current.exists():
        current.unlink()
    current.symlink_to("releases/r1")
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
        self.pid = self._init_pid()
        self.wait_until_running()

    def _init_pid(self) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            children = run("ps", "-o", "pid=", "--ppid", str(self.process.pid), check=False)
            for pid in children.stdout.split():
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
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
        path = CACHE / "opt/graceful-echo/releases/r1/echo_asyncio.py"
        text = (ROOT / "examples/echo_asyncio.py").read_text()
        path.write_text(text.replace('PREFIX = b"echo: "', source_change))

    def start(self, unit: str, source_change: str) -> None:
        """``systemctl start unit`` on the echo example with ``source_change``."""
        self.set_prefix(source_change)
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

    def close(self) -> None:
        self.sh("systemctl poweroff", check=False)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"FAILED: {what}")
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
        check_checked_reload(box)
    finally:
        box.close()
    step("both recipes behave as documented")
    return 0


if __name__ == "__main__":
    sys.exit(main())
