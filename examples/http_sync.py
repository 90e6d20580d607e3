"""A tiny HTTP service with ``http.server``: try it with curl while you reload.

python examples/http_sync.py        # listens on 127.0.0.1:8000 (HTTP_LISTEN to change)
curl http://127.0.0.1:8000/
# edit MESSAGE, then: kill -HUP <pid>; curl again
"""

from __future__ import annotations

import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import graceful

MESSAGE = "hello from graceful\n"
LISTEN = os.environ.get("HTTP_LISTEN", "127.0.0.1:8000").split(",")


class Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = MESSAGE.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep the terminal for graceful's own lines


@graceful.service(listen=LISTEN)
def main(ctx: graceful.SyncContext) -> None:
    listener = ctx.listeners[0]
    server = ThreadingHTTPServer(listener.socket.getsockname(), Hello, bind_and_activate=False)
    server.socket.close()
    server.socket = listener.socket
    server.daemon_threads = False
    accepting = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    accepting.start()
    # ready() without parkable=True: this worker does not take part in probation,
    # so after a reload its generation drains and exits at once, and cannot be
    # rolled back to (examples/echo_sync.py shows the parkable loop).
    ctx.ready()
    ctx.wait_shutdown()
    server.shutdown()
    server.server_close()
    accepting.join()


if __name__ == "__main__":
    main.run()
