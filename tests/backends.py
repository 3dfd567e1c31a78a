"""Real servers for the load balancer's tests: small TCP and HTTP servers in child processes.

A `Backend` runs `python -c SERVER` (optionally inside a network namespace): a TCP listener that
accepts and closes, an HTTP server answering every GET with a fixed status and its own name (`/slow/N`: its
name, then N KiB slowly, 50 KiB a second: a long download; `/peer`: its name and the peer's address), or a
`hang` listener that never accepts (the kernel completes handshakes; nothing ever answers). It
prints its port once listening; `kill()` is SIGKILL (a crash), `start()` brings it back on the same
port. The `backend` fixture (conftest.py) kills every one a test started.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys

SERVER = r"""
import http.server, socket, sys, time
kind, host, port, status, name = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
family = socket.AF_INET6 if ":" in host else socket.AF_INET
if kind == "http":
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/peer":  # who connected: the client's address as this server sees it
                body = (name + "\n" + self.client_address[0] + "\n").encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            if self.path.startswith("/slow/"):  # /slow/N: its name, then N KiB, one every 20 ms
                chunks = int(self.path.split("/")[2])
                head = (name + "\n").encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(head) + chunks * 1024))
                self.end_headers()
                self.wfile.write(head)
                self.wfile.flush()
                for _ in range(chunks):
                    time.sleep(0.02)
                    self.wfile.write(b"x" * 1024)
                return
            body = (name + "\n").encode()
            self.send_response(status if self.path != "/other" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    class Server(http.server.ThreadingHTTPServer):
        address_family = family
        allow_reuse_address = True
    server = Server((host, port), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
sock = socket.socket(family, socket.SOCK_STREAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind((host, port))
sock.listen(64)
print(sock.getsockname()[1], flush=True)
while kind == "tcp":
    sock.accept()[0].close()
sys.stdin.read()  # hang: never accept; wait to be killed
"""


class Backend:
    """A TCP (`tcp`), HTTP (`http`) or silent (`hang`) server on host:port (port 0: any free one)."""

    def __init__(self, kind: str, host: str = "127.0.0.1", port: int = 0, status: int = 200,
                 name: str = "backend", netns: str | None = None):
        self.kind, self.host, self.port, self.status, self.name, self.netns = kind, host, port, status, name, netns
        self.process: subprocess.Popen | None = None

    def start(self, status: int | None = None, timeout: float = 15.0) -> Backend:
        """Start (again, on the same port once it has one); returns when it listens."""
        if status is not None:
            self.status = status
        argv = [sys.executable, "-c", SERVER, self.kind, self.host, str(self.port), str(self.status), self.name]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        start_new_session=True)
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line.strip().isdigit():
            self.kill()
            raise RuntimeError(f"{self.kind} backend on {self.host}:{self.port} did not start")
        self.port = int(line)
        return self

    def kill(self) -> None:
        """SIGKILL to its process group (a crash, as the tests want it)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait()
            for stream in (self.process.stdin, self.process.stdout):
                stream.close()
        self.process = None
