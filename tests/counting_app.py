"""An HTTP/1.1 app for tests that must see what reached the upstream: connections accepted,
connections and requests at once, requests per connection, copies abandoned by the caller."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable


class CountingApp:
    """A minimal HTTP/1.1 keep-alive server in the test's loop.

    ``/stagger?ms=A,B,C``: the first request to arrive answers after A ms, the second after B...
    ``/slow?ms=N`` answers after N ms; ``/fail-first`` answers 503 to a first try and, to a
    retry (``x-envoy-attempt-count``), 200 after ``retry_ms``. Records connections accepted,
    the most open at once, the most requests in flight at once, and per connection how many
    requests it carried."""

    def __init__(self, retry_ms: int = 1500) -> None:
        self.retry_ms = retry_ms
        self.accepted = 0
        self.open = 0
        self.max_open = 0
        self.inflight = 0
        self.max_inflight = 0
        self.requests = 0
        self.per_connection: list[int] = []
        self.servers: list[asyncio.Server] = []
        self.ports: list[int] = []
        self.arrivals = 0  # /stagger requests seen
        self.abandoned = 0  # requests whose connection closed before their answer
        self.writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self, listeners: int = 1) -> CountingApp:
        """Listen on ``listeners`` ports (``ports``; ``port`` is the first), one set of counts."""
        for _ in range(listeners):
            server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
            self.servers.append(server)
            self.ports.append(server.sockets[0].getsockname()[1])
        self.port = self.ports[0]
        return self

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for w in list(self.writers):
            w.close()
        for server in self.servers:
            await server.wait_closed()

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        self.accepted += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        idx = len(self.per_connection)
        self.per_connection.append(0)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                target = lines[0].split(" ")[1]
                hdrs = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)
                }
                n = int(hdrs.get("content-length") or 0)
                if n:
                    await reader.readexactly(n)
                self.requests += 1
                self.per_connection[idx] += 1
                self.inflight += 1
                self.max_inflight = max(self.max_inflight, self.inflight)
                try:
                    status, body = await self._answer(target, hdrs, reader)
                except ConnectionError:
                    return
                finally:
                    self.inflight -= 1
                writer.write(
                    b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n\r\n%s" % (status, len(body), body)
                )
                await writer.drain()
        finally:
            self.open -= 1
            self.writers.discard(writer)
            writer.close()

    async def _answer(
        self, target: str, hdrs: dict[str, str], reader: asyncio.StreamReader
    ) -> tuple[int, bytes]:
        if target.startswith("/stagger"):
            # the k-th arrival answers after the k-th of the listed delays (ms), unless its
            # connection closes first (a copy the caller gave up on)
            delays = [int(x) for x in re.search(r"ms=([\d,]+)", target).group(1).split(",")]
            k = self.arrivals
            self.arrivals += 1
            eof = asyncio.ensure_future(reader.read(1))
            done, _ = await asyncio.wait({eof}, timeout=delays[min(k, len(delays) - 1)] / 1000)
            if done:
                self.abandoned += 1
                raise ConnectionError("the caller closed the connection")
            eof.cancel()
            return 200, b"copy %d" % (k + 1)
        if target.startswith("/slow"):
            m = re.search(r"ms=(\d+)", target)
            await asyncio.sleep(int(m.group(1)) / 1000 if m else 0)
            return 200, b"slow"
        if target.startswith("/fail-first"):
            if "x-envoy-attempt-count" not in hdrs:
                return 503, b"first"
            await asyncio.sleep(self.retry_ms / 1000)
            return 200, b"retried"
        return 200, b"ok"


async def until(cond: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``cond`` without blocking the loop (the app runs in it, unlike ``wait_until``'s)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.02)
