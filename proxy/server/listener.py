"""A listening socket and the settings its downstream connections share."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any

from proxy.server.downstream import Downstream


class Listener:
    def __init__(
        self,
        name: str,
        handler: Callable[[Downstream, Any], Any],
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        peer_identity: Callable[[Any], str | None] | None = None,
        max_head: int = 61440,
        max_headers: int = 100,
        max_uri: int = 8192,
        header_timeout: float = 10.0,
        idle_timeout: float = 300.0,
    ) -> None:
        self.name = name
        self.handler = handler
        self.host = host
        self.port = port
        self.ssl = ssl_context
        self.peer_identity = peer_identity
        self.max_head = max_head
        self.max_headers = max_headers
        self.max_uri = max_uri
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.loop = asyncio.get_event_loop()
        self.connections: set[Downstream] = set()
        self.server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self.draining = False
        self.log = logging.getLogger(f"meshlet.proxy.{name}")
        self.local_reply_hook: Callable[[int, str], None] | None = None

    async def start(self) -> int:
        self.loop = asyncio.get_running_loop()
        self.server = await self.loop.create_server(
            lambda: Downstream(self), self.host, self.port, ssl=self.ssl, reuse_address=True,
            backlog=1024,
        )
        self.port = self.server.sockets[0].getsockname()[1]
        self._sweeper = self.loop.call_later(1.0, self._sweep)
        return self.port

    def _sweep(self) -> None:
        now = self.loop.time()
        for conn in list(self.connections):
            conn.sweep(now)
        self._sweeper = self.loop.call_later(min(1.0, self.header_timeout / 4), self._sweep)

    def on_local_reply(self, conn: Downstream, status: int, flag: str) -> None:
        if self.local_reply_hook is not None:
            self.local_reply_hook(status, flag)

    def on_downstream_lost(self, conn: Downstream) -> None:
        """The client went away mid-request: cancel its request (Envoy resets the upstream)."""
        if conn.task is not None and conn.body is None or (conn.body is not None and conn.body.at_eof):
            if conn.task is not None:
                conn.task.cancel()

    def stop_accepting(self) -> None:
        self.draining = True
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            if conn.task is None:
                conn.close()  # idle keep-alive connections go now; busy ones after their response

    @property
    def busy(self) -> int:
        return sum(1 for c in self.connections if c.task is not None)

    def close_all(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self.connections):
            conn.close()
