"""The line-echo service with plain blocking code: ``socketserver``, one thread per connection.

    python examples/echo_sync.py        # listens on 127.0.0.1:8080 (ECHO_LISTEN to change)

A plain ``def`` entry gets a ``graceful.SyncContext``: ``ready()`` and
``wait_shutdown()`` block, and the listeners are ordinary (non-blocking) sockets
that stdlib servers accept on.

It takes part in probation: after a reload this worker is parked (it stops
accepting and closes its copy of the listener, its open connections go on), and
if the new code fails during the probation, a rollback resumes it on the
listeners it is sent again, without a respawn.
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
    servers = []
    while True:
        listener = ctx.listeners[0]
        server = socketserver.ThreadingTCPServer(
            listener.socket.getsockname(), Echo, bind_and_activate=False
        )
        server.socket.close()  # use the supervisor's listener instead of a new socket
        server.socket = listener.socket
        server.daemon_threads = False  # server_close() then waits for open connections
        servers.append(server)
        accepting = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
        accepting.start()
        ctx.ready(parkable=True)  # this loop parks and resumes: see the docstring
        ctx.wait_shutdown()
        server.shutdown()  # stop accepting; queued connections stay for the next generation
        accepting.join()
        server.socket.close()  # hold no listener, parked or not
        if not ctx.wait_resume():  # True: a rollback resumed us on ctx.listeners
            break
    for server in servers:
        server.server_close()  # wait for the connections still open


if __name__ == "__main__":
    main.run()
