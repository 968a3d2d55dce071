"""A minimal, fast HTTP/1.1 upstream for the benchmarks (used when nginx is not installed).

uvloop + a raw ``asyncio.Protocol``: keep-alive, ``GET <anything>`` answers ``200`` with the fixed
2-byte body ``ok`` and a content-length; ``POST /echo`` (content-length or chunked body) echoes the
body back with a content-length. No header parsing beyond what framing needs, so it costs a few
µs per request and is never the bottleneck of a proxy benchmark.

Run: ``python loadtests/upstream.py --port 0 --port 0 --port-file F`` (F: one bound port a line).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
OK_CLOSE = OK.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024


def _header(head: bytes, name: bytes) -> bytes | None:
    """Value of header ``name`` (lower-case) in ``head``, or None. Only called on the slow path."""
    for line in head.split(b"\r\n")[1:]:
        k, sep, v = line.partition(b":")
        if sep and k.strip().lower() == name:
            return v.strip()
    return None


class Upstream(asyncio.Protocol):
    __slots__ = ("transport", "buf")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        out = []
        pos = 0
        n = len(buf)
        close = False
        while pos < n:
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                if n - pos > MAX_HEAD:
                    out.append(BAD)
                    close = True
                    pos = n
                break
            head = buf[pos:end]
            lower = head.lower()
            if head.startswith(b"GET ") or head.startswith(b"HEAD "):
                # fast path: a bodiless request
                pos = end + 4
                if b"connection: close" in lower:
                    out.append(OK_CLOSE)
                    close = True
                    break
                out.append(OK if head.startswith(b"GET ") else OK[:-2])
                continue
            # slow path: a request that may carry a body
            body_start = end + 4
            te = _header(head, b"transfer-encoding")
            if te is not None and te.lower() == b"chunked":
                body, consumed = _dechunk(buf, body_start)
                if consumed < 0:
                    if consumed == -2:
                        out.append(BAD)
                        close = True
                        pos = n
                    break  # incomplete
                pos = consumed
            else:
                cl = _header(head, b"content-length")
                length = int(cl) if cl and cl.isdigit() else 0
                if length > MAX_BODY:
                    out.append(BAD)
                    close = True
                    pos = n
                    break
                if n - body_start < length:
                    break  # incomplete
                body = buf[body_start : body_start + length]
                pos = body_start + length
            conn_close = b"connection: close" in lower
            if b" /echo" in head[:64]:
                extra = b"Connection: close\r\n" if conn_close else b""
                out.append(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n"
                    b"Content-Type: application/octet-stream\r\n%s\r\n"
                    % (len(body), extra)
                    + body
                )
            else:
                out.append(OK_CLOSE if conn_close else OK)
            if conn_close:
                close = True
                break
        self.buf = buf[pos:] if pos < n else b""
        t = self.transport
        if out and t is not None:
            t.write(out[0] if len(out) == 1 else b"".join(out))
        if close and t is not None:
            t.close()


def _dechunk(buf: bytes, pos: int) -> tuple[bytes, int]:
    """Decode a chunked body at ``pos``: (body, end), or end -1 if incomplete, -2 if malformed."""
    parts = []
    total = 0
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return b"", -1
        size_s = buf[pos:eol].split(b";", 1)[0].strip()
        try:
            size = int(size_s, 16)
        except ValueError:
            return b"", -2
        pos = eol + 2
        if size == 0:
            # trailers until an empty line
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return b"", -1
                if eol == pos:
                    return b"".join(parts), eol + 2
                pos = eol + 2
        total += size
        if total > MAX_BODY:
            return b"", -2
        if len(buf) < pos + size + 2:
            return b"", -1
        parts.append(buf[pos : pos + size])
        pos += size + 2


async def serve(ports: list[int], host: str, port_file: str | None) -> None:
    loop = asyncio.get_running_loop()
    servers = []
    bound = []
    for p in ports:
        srv = await loop.create_server(Upstream, host, p, backlog=4096, reuse_address=True)
        servers.append(srv)
        bound.append(srv.sockets[0].getsockname()[1])
    if port_file:
        tmp = port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("\n".join(str(b) for b in bound) + "\n")
        os.replace(tmp, port_file)
    print("upstream ready ports=" + ",".join(str(b) for b in bound), file=sys.stderr, flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for srv in servers:
        srv.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument(
        "--port", type=int, action="append", help="port to listen on (repeatable; 0 = any)"
    )
    ap.add_argument("--port-file", help="write the bound ports here, one per line, when ready")
    args = ap.parse_args()
    ports = args.port or [0]
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(ports, args.host, args.port_file))
    else:
        uvloop.run(serve(ports, args.host, args.port_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
