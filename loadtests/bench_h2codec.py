"""Micro-benchmark of the HTTP/2 codec: the ``hpack``/``hyperframe`` libraries against meshlet's
pure-Python twin and compiled module, on a typical gRPC request.

    python loadtests/bench_h2codec.py [--quick]

Prints µs per operation (best of several rounds) and the speed-ups over the libraries. "cold" is
a fresh connection (literals, Huffman, table insertions); "warm" is a later request on the same
connection (fields already indexed), which is what a busy proxy mostly sees.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hpack  # noqa: E402
from hyperframe.frame import Frame  # noqa: E402

from proxy import _accel  # noqa: E402

GRPC_REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/helloworld.Greeter/SayHello"),
    (b":authority", b"greeter.default.svc.cluster.local:50051"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
    (b"grpc-accept-encoding", b"identity,deflate,gzip"),
    (b"user-agent", b"grpc-python/1.60.0 grpc-c/37.0.0 (linux; chttp2)"),
    (b"grpc-timeout", b"4999m"),
    (b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
]


def best_us(fn: Callable[[], object], number: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, time.perf_counter() - t0)
    return best / number * 1e6


def hpack_cases(mod: Any) -> dict[str, Callable[[], object]]:
    lib_enc = hpack.Encoder()
    cold_block = lib_enc.encode(GRPC_REQUEST)
    warm_block = lib_enc.encode(GRPC_REQUEST)
    if mod is None:  # the hpack library
        warm_dec = hpack.Decoder()
        warm_dec.decode(cold_block, raw=True)
        warm_enc = hpack.Encoder()
        warm_enc.encode(GRPC_REQUEST)
        return {
            "hpack decode, cold": lambda: hpack.Decoder().decode(cold_block, raw=True),
            "hpack decode, warm": lambda: warm_dec.decode(warm_block, raw=True),
            "hpack encode, cold": lambda: hpack.Encoder().encode(GRPC_REQUEST),
            "hpack encode, warm": lambda: warm_enc.encode(GRPC_REQUEST),
        }
    dec_cls, enc_cls = mod.Decoder, mod.Encoder  # type: ignore[attr-defined]
    warm_dec = dec_cls()
    warm_dec.decode(cold_block)
    warm_enc = enc_cls()
    warm_enc.encode(GRPC_REQUEST)
    return {
        "hpack decode, cold": lambda: dec_cls().decode(cold_block),
        "hpack decode, warm": lambda: warm_dec.decode(warm_block),
        "hpack encode, cold": lambda: enc_cls().encode(GRPC_REQUEST),
        "hpack encode, warm": lambda: warm_enc.encode(GRPC_REQUEST),
    }


def frame_cases(mod: Any) -> dict[str, Callable[[], object]]:
    block = hpack.Encoder().encode(GRPC_REQUEST)
    if mod is None:
        from hyperframe.frame import DataFrame, HeadersFrame

        wire = (
            HeadersFrame(1, block, flags=["END_HEADERS"]).serialize()
            + DataFrame(1, b"\0\0\0\0\x07" + b"x" * 7, flags=["END_STREAM"]).serialize()
        )

        def parse() -> object:
            out, pos = [], 0
            while pos < len(wire):
                f, length = Frame.parse_frame_header(memoryview(wire[pos : pos + 9]))
                f.parse_body(memoryview(wire[pos + 9 : pos + 9 + length]))
                out.append(f)
                pos += 9 + length
            return out

        def serialize() -> object:
            return (
                HeadersFrame(1, block, flags=["END_HEADERS"]).serialize()
                + DataFrame(1, b"x" * 12, flags=["END_STREAM"]).serialize()
            )

        return {"frames parse HEADERS+DATA": parse, "frames serialize HEADERS+DATA": serialize}
    m = mod
    wire = m.headers_frame(1, block) + m.data_frame(1, b"\0\0\0\0\x07" + b"x" * 7, True)  # type: ignore[attr-defined]

    def parse_ours() -> object:
        frames = m.FrameParser().feed(wire)  # type: ignore[attr-defined]
        h, d = frames
        m.parse_headers(h[1], h[2], h[3])  # type: ignore[attr-defined]
        m.parse_data(d[1], d[2], d[3])  # type: ignore[attr-defined]
        return frames

    return {
        "frames parse HEADERS+DATA": parse_ours,
        "frames serialize HEADERS+DATA": lambda: (
            m.headers_frame(1, block) + m.data_frame(1, b"x" * 12, True)
        ),  # type: ignore[attr-defined]
    }


def validate_cases(mod: Any) -> dict[str, Callable[[], object]]:
    if mod is None:
        return {}
    fn = mod.validate_request_headers  # type: ignore[attr-defined]
    return {"validate request headers": lambda: fn(GRPC_REQUEST, 1)}


def connection_cycle_us(ours: bool, n: int) -> float:
    """Server side of one gRPC unary call on a warm connection: request bytes in, events out,
    response headers + message + trailers queued and taken: h2 against ``connection.py``."""
    import h2.config
    import h2.connection

    from proxy.http2.connection import H2Connection

    client = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.initiate_connection()
    server: Any
    if ours:
        server = H2Connection(client_side=False)
    else:
        server = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
    server.initiate_connection()
    # the client never hears the server's SETTINGS, so it keeps no stream limit while it
    # pre-generates every request of the run
    server.receive_data(client.data_to_send())
    server.data_to_send()
    body = b"\0\0\0\0\x07" + b"x" * 7
    requests = []
    for i in range(n):
        sid = 1 + 2 * i
        client.send_headers(sid, GRPC_REQUEST)
        client.send_data(sid, body, end_stream=True)
        requests.append(client.data_to_send())
    response = [(b":status", b"200"), (b"content-type", b"application/grpc")]
    trailers = [(b"grpc-status", b"0"), (b"grpc-message", b"")]
    t0 = time.perf_counter()
    for i, raw in enumerate(requests):
        sid = 1 + 2 * i
        event: Any
        for event in server.receive_data(raw):
            if type(event).__name__ == "DataReceived":
                if ours:
                    server.acknowledge_received_data(sid, event.flow_controlled_length)
                else:
                    server.acknowledge_received_data(event.flow_controlled_length, sid)
        server.send_headers(sid, response)
        server.send_data(sid, b"\0\0\0\0\x02ok")
        server.send_headers(sid, trailers, end_stream=True)
        server.data_to_send()
    return (time.perf_counter() - t0) / n * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer iterations")
    args = ap.parse_args(argv)
    number, rounds = (300, 3) if args.quick else (2000, 5)

    impls: dict[str, dict[str, object | None]] = {"library": {}, "twin": {}, "compiled": {}}
    for base in ("hpack", "frames", "validate"):
        impls["library"][base] = None
        impls["twin"][base] = _accel.load_twin("proxy.http2", base)
        impls["compiled"][base] = _accel.load_compiled("proxy.http2", base)
    if impls["compiled"]["hpack"] is None:
        print(
            "compiled codec not built: run `python setup.py build_ext --inplace`", file=sys.stderr
        )

    results: dict[str, dict[str, float]] = {}
    for impl, mods in impls.items():
        for base, builder in (
            ("hpack", hpack_cases),
            ("frames", frame_cases),
            ("validate", validate_cases),
        ):
            mod = mods[base]
            if impl != "library" and mod is None:
                continue
            for case, fn in builder(mod).items():
                n = number if impl != "twin" or "validate" in case else max(number // 5, 50)
                results.setdefault(case, {})[impl] = best_us(fn, n, rounds)

    print(
        f"{'µs per op':32} {'library':>9} {'twin':>9} {'compiled':>9} "
        f"{'lib/twin':>9} {'lib/comp':>9}"
    )
    for case, r in results.items():
        lib, twin, comp = r.get("library"), r.get("twin"), r.get("compiled")

        def fmt(v: float | None) -> str:
            return f"{v:9.2f}" if v is not None else f"{'-':>9}"

        def ratio(a: float | None, b: float | None) -> str:
            return f"{a / b:8.1f}x" if a and b else f"{'-':>9}"

        print(f"{case:32} {fmt(lib)} {fmt(twin)} {fmt(comp)} {ratio(lib, twin)} {ratio(lib, comp)}")

    cycles = 300 if args.quick else 2000
    h2_us = min(connection_cycle_us(False, cycles) for _ in range(3))
    ours_us = min(connection_cycle_us(True, cycles) for _ in range(3))
    print(
        f"\nserver side of a gRPC call on a warm connection (facades: {_accel.IMPLEMENTATION}):\n"
        f"  h2 {h2_us:.1f} µs, meshlet connection.py {ours_us:.1f} µs ({h2_us / ours_us:.1f}x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
