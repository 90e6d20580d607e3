"""The stale-bytecode check on real files: what it flags, what it leaves alone, its
budget. (Reloads that serve the right code despite stale bytecode are in
``test_reload.py``.)"""

from __future__ import annotations

import importlib.util
import os
import py_compile
import signal
from pathlib import Path

import anyio
import pytest

from graceful.code.bytecode import BytecodeCheck, recompile
from graceful.spawn.spawner import BytecodeGate


def compiled(path: Path, source: str) -> Path:
    path.write_text(source)
    py_compile.compile(str(path), doraise=True)
    return Path(importlib.util.cache_from_source(str(path)))


def redeploy(path: Path, source: str) -> None:
    """New content, old size and mtime, new ctime (rsync -a, tar)."""
    before = path.stat()
    staged = path.with_name(path.name + ".new")
    staged.write_text(source)
    os.utime(staged, ns=(before.st_atime_ns, before.st_mtime_ns))
    staged.replace(path)


def test_a_changed_source_with_its_old_size_and_mtime_is_stale(tmp_path: Path) -> None:
    module = tmp_path / "handlers.py"
    compiled(module, 'PREFIX = b"one: "\n')
    redeploy(module, 'PREFIX = b"two: "\n')
    assert BytecodeCheck().stale_sources([str(tmp_path)]) == [str(module)]


def test_a_source_whose_metadata_alone_changed_is_not_stale(tmp_path: Path) -> None:
    module = tmp_path / "handlers.py"
    compiled(module, 'PREFIX = b"one: "\n')
    module.chmod(0o600)  # ctime moves on, the content does not
    redeploy(tmp_path / "handlers.py", 'PREFIX = b"one: "\n')  # the same release again
    check = BytecodeCheck()
    assert check.stale_sources([str(tmp_path)]) == []
    assert check.stale_sources([str(tmp_path)]) == []  # remembered, not compiled again


def test_an_edited_source_with_a_new_mtime_is_left_to_python(tmp_path: Path) -> None:
    module = tmp_path / "handlers.py"
    compiled(module, 'PREFIX = b"one: "\n')
    module.write_text('PREFIX = b"two!: "\n')  # new size: Python sees it by itself
    assert BytecodeCheck().stale_sources([str(tmp_path)]) == []


def test_the_check_stops_at_its_budget_and_says_so(tmp_path: Path) -> None:
    for n in range(5):
        compiled(tmp_path / f"m{n}.py", f"X = {n}\n")
    for n in range(5):
        redeploy(tmp_path / f"m{n}.py", f"X = {n + 5}\n")
    check = BytecodeCheck(budget=3)
    assert len(check.stale_sources([str(tmp_path)])) == 3
    assert check.budget_exhausted
    check = BytecodeCheck(budget=5)
    assert len(check.stale_sources([str(tmp_path)])) == 5
    assert not check.budget_exhausted


def test_bytecode_restored_after_the_deploy_is_caught_at_the_next_check(tmp_path: Path) -> None:
    """The deploy keeps size and mtime, then a CI cache puts the old ``__pycache__``
    back: the .pyc is newer than the source's ctime, but the source is not the file
    the previous check saw."""
    module = tmp_path / "handlers.py"
    cached = compiled(module, 'PREFIX = b"one: "\n')
    check = BytecodeCheck()
    assert check.stale_sources([str(tmp_path)]) == []
    saved = cached.read_bytes()
    redeploy(module, 'PREFIX = b"two: "\n')
    cached.write_bytes(saved)  # restored from a cache, after the deploy
    assert cached.stat().st_mtime_ns > module.stat().st_ctime_ns
    assert check.stale_sources([str(tmp_path)]) == [str(module)]


def test_unchecked_hash_bytecode_of_an_edited_source_is_stale(tmp_path: Path) -> None:
    module = tmp_path / "handlers.py"
    module.write_text('PREFIX = b"one: "\n')
    py_compile.compile(
        str(module), doraise=True, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH
    )
    check = BytecodeCheck()
    assert check.stale_sources([str(tmp_path)]) == []
    module.write_text('PREFIX = b"two!: "\n')  # a plain edit: Python never looks
    assert check.stale_sources([str(tmp_path)]) == [str(module)]
    assert recompile([str(module)]) == {}
    assert check.stale_sources([str(tmp_path)]) == []


def test_the_checks_thread_takes_none_of_the_supervisors_signals(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The thread lives on idle after the check; when the supervisor stops listening,
    the signals' default actions are back for a moment (SIGUSR2 terminates, SIGTTIN
    stops the process), and the kernel may hand a process signal to any thread that
    does not block it. (Seen once: a supervisor killed by a SIGUSR2 during its stop.)"""
    gate = BytecodeGate()
    masks: list[set[int | signal.Signals]] = []

    def record(generation: int) -> dict[str, str]:
        masks.append(signal.pthread_sigmask(signal.SIG_BLOCK, []))
        return {}

    monkeypatch.setattr(gate, "check", record)
    anyio.run(gate.environment_for, 1)
    followed = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR2}
    assert followed | {signal.SIGTTIN, signal.SIGTTOU} <= masks[0]
