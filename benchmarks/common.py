"""What the benchmark scripts share.

The echo services reuse the line reader of ``examples/echo_asyncio.py``: its source
(:data:`LINES`) is written into each service's file, so that the service stands alone
in its temporary directory.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from echo_asyncio import lines

#: ``lines(stream)`` of ``examples/echo_asyncio.py``, as source: each line a client
#: sends, until it closes. A service that uses it imports ``AsyncIterator``,
#: ``SocketStream`` and ``BufferedByteReceiveStream``.
LINES = inspect.getsource(lines)
