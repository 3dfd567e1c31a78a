"""A TCP proxy that delays everything it carries by a fixed time, each direction (the kernel here has
no netem): put it between one node and Redis to make that node's sync slow.

How it works: asyncio in a thread of its own. For each accepted connection it connects to the
upstream (with SO_MARK if asked, so that a firewall's hooked OUTPUT chain lets it by), then runs
one pump per direction: a reader stamps each chunk with `arrival + delay` and queues it, a writer
waits for each chunk's time and writes it. Chunks are never held back by the ones behind them, so
the delay adds latency and no throughput limit (the queue is unbounded: a test tool). An end of
stream is delayed like data and passed on as a half-close; when both directions have ended, or
either side fails, both connections close.

In a test: `with DelayProxy(("127.0.0.1", 0), ("127.0.0.1", 6379), delay=0.2) as proxy:` then
connect to `proxy.address`. In a lab namespace, as a script: `python tests/delay_proxy.py --listen
127.0.0.1:16379 --upstream 192.0.2.100:6379 --delay-ms 200 --lifetime 60 [--mark 0x...]`; it
prints `{"listening": [host, port]}` once ready and its counters as JSON when it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import sys
import threading
from collections import Counter

SO_MARK = getattr(socket, "SO_MARK", 36)
CHUNK = 65536


class DelayProxy:
    """Listens on `listen` (host, port; port 0: any), forwards to `upstream`, `delay` seconds late."""

    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int], delay: float, mark: int = 0):
        self.listen, self.upstream, self.delay, self.mark = listen, upstream, delay, mark
        self.address: tuple[str, int] | None = None
        self.counters: Counter = Counter()  # connections, failed, bytes:up, bytes:down
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delay-proxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._error: BaseException | None = None

    def __enter__(self) -> DelayProxy:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def start(self) -> DelayProxy:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None or self.address is None:
            raise RuntimeError(f"the delay proxy did not start: {self._error}")
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop)
            self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._serve, self.listen[0], self.listen[1], reuse_address=True))
            self.address = self._server.sockets[0].getsockname()[:2]
        except OSError as error:
            self._error = error
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    def _stop(self) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        self._loop.call_later(0.05, self._loop.stop)  # cancelled tasks close their sockets first

    async def _serve(self, client_reader, client_writer) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        upstream_writer = None
        try:
            upstream_reader, upstream_writer = await self._connect()
            self.counters["connections"] += 1
            pumps = [asyncio.ensure_future(self._pump(client_reader, upstream_writer, "bytes:up")),
                     asyncio.ensure_future(self._pump(upstream_reader, client_writer, "bytes:down"))]
            try:
                done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
                for pump in done:
                    pump.result()  # a failed side ends the connection
            finally:
                for pump in pumps:
                    pump.cancel()
        except OSError:
            self.counters["failed"] += 1
        except asyncio.CancelledError:
            pass
        finally:
            for writer in (client_writer, upstream_writer):
                if writer is not None:
                    writer.close()
            self._tasks.discard(task)

    async def _connect(self):
        family = socket.AF_INET6 if ":" in self.upstream[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if self.mark:
                sock.setsockopt(socket.SOL_SOCKET, SO_MARK, self.mark)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            await asyncio.wait_for(self._loop.sock_connect(sock, self.upstream), 5)
        except OSError:  # TimeoutError included
            sock.close()
            raise OSError(f"cannot connect to {self.upstream}") from None
        return await asyncio.open_connection(sock=sock)

    async def _pump(self, reader, writer, counter: str) -> None:
        """Copy reader -> writer, each chunk `delay` seconds after it arrived; EOF likewise."""
        queue: asyncio.Queue = asyncio.Queue()

        async def read() -> None:
            while True:
                data = await reader.read(CHUNK)
                queue.put_nowait((self._loop.time() + self.delay, data))
                if not data:
                    return

        reading = asyncio.ensure_future(read())
        try:
            while True:
                due, data = await queue.get()
                if (wait := due - self._loop.time()) > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                self.counters[counter] += len(data)
                await writer.drain()
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await reading


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", required=True, type=_address, help="HOST:PORT ([V6]:PORT)")
    parser.add_argument("--upstream", required=True, type=_address, help="HOST:PORT")
    parser.add_argument("--delay-ms", type=float, required=True)
    parser.add_argument("--lifetime", type=float, default=60.0)
    parser.add_argument("--mark", type=lambda text: int(text, 0), default=0)
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with DelayProxy(args.listen, args.upstream, args.delay_ms / 1000, args.mark) as proxy:
        print(json.dumps({"listening": list(proxy.address)}), flush=True)
        stop.wait(args.lifetime)
        counters = dict(proxy.counters)
    print(json.dumps(counters), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
