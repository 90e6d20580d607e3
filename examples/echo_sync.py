"""The line-echo service with plain blocking code: ``socketserver``, one thread per connection.

    python examples/echo_sync.py        # listens on 127.0.0.1:8080 (ECHO_LISTEN to change)

A plain ``def`` entry gets a ``graceful.SyncContext``: ``ready()`` and
``wait_shutdown()`` block, and the listeners are ordinary (non-blocking) sockets
that stdlib servers accept on.
"""

from __future__ import annotations

import os
import socketserver
import threading

import graceful

PREFIX = b"echo (sync): "
LISTEN = os.environ.get("ECHO_LISTEN", "127.0.0.1:8080").split(",")


class Echo(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(PREFIX + line)


@graceful.service(listen=LISTEN, workers=int(os.environ.get("ECHO_WORKERS", "1")))
def main(ctx: graceful.SyncContext) -> None:
    listener = ctx.listeners[0]
    server = socketserver.ThreadingTCPServer(
        listener.socket.getsockname(), Echo, bind_and_activate=False
    )
    server.socket.close()  # use the supervisor's listener instead of a new socket
    server.socket = listener.socket
    server.daemon_threads = False  # server_close() then waits for open connections
    accepting = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    accepting.start()
    ctx.ready()
    ctx.wait_shutdown()
    server.shutdown()  # stop accepting; queued connections stay for the next generation
    server.server_close()  # close this worker's copy and wait for its connections
    accepting.join()


if __name__ == "__main__":
    main.run()
