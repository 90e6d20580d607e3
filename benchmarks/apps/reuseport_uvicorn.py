"""uvicorn on its own ``SO_REUSEPORT`` socket, for the hand-over contender.

    python reuseport_uvicorn.py PORT

Each instance binds its own socket to the same port; the kernel spreads new
connections over all of them. A hand-over starts a new instance, waits until it
answers, then stops the old one, whose queued connections are lost with its
socket.
"""

from __future__ import annotations

import socket
import sys

import uvicorn

port = int(sys.argv[1])
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
sock.bind(("127.0.0.1", port))
sock.listen(2048)
uvicorn.Server(uvicorn.Config("bench_app:app", access_log=False)).run(sockets=[sock])
