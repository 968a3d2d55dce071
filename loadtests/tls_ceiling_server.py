"""The minimal Python TLS server: the ceiling for meshlet's inbound handshakes (bench_mtls.py).

uvloop + ``loop.create_server`` with an ``ssl.SSLContext`` like meshlet's inbound one (TLS 1.3
only, client certificate required and verified, one session ticket per handshake) and a tiny
protocol: on data, once the request head is complete (``\\r\\n\\r\\n``), answer a fixed
``HTTP/1.0 200 OK`` and close. No proxying, no parsing, no identity checks: what is left is the
cost of Python's ``ssl`` (the system OpenSSL) and the event loop per connection.

    python loadtests/tls_ceiling_server.py --cert inventory.pem --key inventory.key \\
        --ca ca.pem [--port 0]

Prints ``port=N`` on stdout once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys

import uvloop

BODY = b"meshlet bench_mtls py-uvloop-tls ceiling: a fixed body of about one hundred bytes.\n"
RESPONSE = b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)


class Answer(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if b"\r\n\r\n" in self.buf:
            self.transport.write(RESPONSE)
            self.transport.close()


def context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    ctx.num_tickets = 1
    return ctx


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    ctx = context(args.cert, args.key, args.ca)
    server = await loop.create_server(Answer, args.host, args.port, ssl=ctx, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(f"port={port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    try:
        uvloop.run(serve(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
