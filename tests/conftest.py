from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The tests drive the examples' own load generator, so the figures they assert are
# the ones a user sees when running it by hand.
for path in (HERE, HERE.parent / "examples"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
