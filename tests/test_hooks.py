"""Every private name graceful relies on in uvicorn, hypercorn and multiprocess is
still there (see :mod:`graceful.base.hooks`). A failure names the hook, so that an
upgrade that removes one fails here, loudly, and not at run time."""

from __future__ import annotations

import importlib.util

import pytest

from graceful.base.hooks import HOOKS, Hook, _problem, missing_hooks


@pytest.mark.parametrize("hook", HOOKS, ids=[hook.where for hook in HOOKS])
def test_the_hook_still_exists(hook: Hook) -> None:
    if importlib.util.find_spec(hook.library) is None:
        pytest.skip(f"{hook.library} is not installed")
    problem = _problem(hook)
    assert problem is None, f"{hook.library} hook {hook.where} ({hook.needed_for}): {problem}"


@pytest.mark.parametrize(
    ("where", "says"),
    [
        ("uvicorn:Server.no_such_method", "Server.no_such_method is gone"),
        ("uvicorn:Server.startup(no_such_parameter=)", "no parameter 'no_such_parameter'"),
        ('uvicorn:Server.startup"no such text"', "no longer contains 'no such text'"),
        ("uvicorn.no_such_module:Thing", "cannot be imported"),
    ],
)
def test_a_missing_hook_is_reported_by_name(where: str, says: str) -> None:
    hook = Hook("uvicorn", where, False, "a test")
    problem = _problem(hook)
    assert problem is not None
    assert says in problem


def test_no_hook_is_missing_in_what_is_installed() -> None:
    assert missing_hooks() == []
