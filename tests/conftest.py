from __future__ import annotations

import ctypes
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
# The tests drive the examples' own load generator, so the figures they assert are
# the ones a user sees when running it by hand.
for path in (HERE, HERE.parent / "examples"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

# Orphans of the services a test starts (a worker whose supervisor was killed, a
# process a worker left behind) are re-parented to this test process rather than to
# init, so the harness can reap them once it has killed them.
_PR_SET_CHILD_SUBREAPER = 36
ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


@pytest.fixture(autouse=True)
def _signal_mask_kept() -> Iterator[None]:
    """Every process a test starts inherits this process's signal mask: a test that
    leaves a signal blocked (by calling code meant for the supervisor's helper
    threads) would make every later service on this worker deaf to it. The mask is
    given back, and the test that changed it fails."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    yield
    after = signal.pthread_sigmask(signal.SIG_SETMASK, before)
    assert after == before, f"the test left signals blocked: {sorted(after - before)}"
