"""Micro-benchmark of the twin against the compiled parser (not a test).

Run: ``python -m tests.unit.http1.bench_parser``.

Takes the minimum CPU time over many short runs, which is what survives a busy machine.
"""

from __future__ import annotations

import time
import timeit

from proxy import _accel

REQUEST = (
    b"GET /api/v1/users?id=42 HTTP/1.1\r\n"
    b"Host: reviews.default.svc.cluster.local:9080\r\n"
    b"User-Agent: curl/8.5.0\r\n"
    b"Accept: */*\r\n"
    b"X-Request-Id: 7f3c2a90-1b2d-4c3e-9f4a-0a1b2c3d4e5f\r\n"
    b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"
    b"Content-Length: 0\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n"
    b"Date: Wed, 25 Nov 2026 19:00:00 GMT\r\nServer: envoy\r\n"
    b"X-Envoy-Upstream-Service-Time: 3\r\n\r\n"
)


def per_call_us(fn, number=2000, repeat=40) -> float:
    return (
        min(timeit.repeat(fn, number=number, repeat=repeat, timer=time.process_time)) / number * 1e6
    )


def main() -> None:
    twin = _accel.load_twin("proxy.http1", "parser")
    compiled = _accel.load_compiled("proxy.http1", "parser")
    chunked = b"".join(twin.encode_chunk(b"x" * 100) for _ in range(10)) + twin.encode_last_chunk()
    rows = {}
    for name, mod in (("twin", twin), ("compiled", compiled)):
        if mod is None:
            print("compiled module not built")
            continue
        rows[name] = {
            "request (6 fields)": per_call_us(lambda m=mod: m.parse_request_head(REQUEST)),
            "response (6 fields)": per_call_us(lambda m=mod: m.parse_response_head(RESPONSE)),
            "chunked 10x100B": per_call_us(lambda m=mod: m.ChunkedDecoder().feed(chunked)),
        }
    for case in rows["twin"]:
        line = f"{case:22} twin {rows['twin'][case]:6.2f} us"
        if "compiled" in rows:
            c = rows["compiled"][case]
            line += f"   compiled {c:6.2f} us   ratio {rows['twin'][case] / c:4.2f}x"
        print(line)


if __name__ == "__main__":
    main()
