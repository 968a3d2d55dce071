# cython: annotation_typing=False
"""A one-producer, one-consumer byte channel with backpressure, for streaming bodies.

The producer is a protocol's ``data_received``; the consumer is the request task. When more than
``high`` bytes wait unread the producer's transport is paused, and resumed once the consumer
drains below ``low``: a slow reader therefore slows the sender instead of growing memory.

This file is compiled a second time by Cython as ``_channel_c`` (``_channel_c.py`` is a symlink to
it and ``_channel_c.pxd`` makes :class:`BodyChannel` a ``cdef class``, whose feed/read methods the
compiled connections call as C functions); ``proxy/server/channel.py`` picks the build.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable


class ChannelClosed(Exception):
    """The producer went away before the end of the body (a reset)."""


class MalformedBody(ChannelClosed):
    """The client's body broke its own framing (bad chunked encoding): a client error (400),
    not an upstream failure, even when the request head has already gone upstream."""


class BodyChannel:
    __slots__ = (
        "_chunks",
        "_size",
        "_eof",
        "_exc",
        "_waiter",
        "_pause",
        "_resume",
        "_paused",
        "high",
        "low",
        "trailers",
        "total",
    )

    def __init__(
        self,
        pause: Callable[[], None] | None = None,
        resume: Callable[[], None] | None = None,
        high: int = 262144,
    ) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._eof = False
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._pause = pause
        self._resume = resume
        self._paused = False
        self.high = high
        self.low = high // 4
        self.trailers: list[tuple[str, str]] | None = None
        self.total = 0

    @property
    def at_eof(self) -> bool:
        return self._eof and not self._chunks

    def feed(self, data: bytes) -> None:
        if not data:
            return
        self._chunks.append(data)
        self._size += len(data)
        self.total += len(data)
        if self._size > self.high and not self._paused and self._pause is not None:
            self._paused = True
            self._pause()
        self._wake()

    def feed_eof(self, trailers: list[tuple[str, str]] | None = None) -> None:
        self._eof = True
        if trailers:
            self.trailers = trailers
        self._wake()

    def set_exception(self, exc: BaseException) -> None:
        if not self._eof:
            self._exc = exc
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    def read_nowait(self) -> bytes | None:
        """Everything buffered now (b"" at end of body), or None when the reader must wait."""
        if self._chunks:
            if len(self._chunks) == 1:
                data = self._chunks.popleft()
            else:
                data = b"".join(self._chunks)
                self._chunks.clear()
            self._size = 0
            if self._paused and self._resume is not None:
                self._paused = False
                self._resume()
            return data
        if self._exc is not None:
            raise self._exc
        if self._eof:
            return b""
        return None

    async def read(self) -> bytes:
        """The next piece of body; b"" once the body is complete. Raises on a reset."""
        while True:
            data = self.read_nowait()
            if data is not None:
                return data
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
