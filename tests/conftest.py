from __future__ import annotations

import ctypes
import sys
from pathlib import Path

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
