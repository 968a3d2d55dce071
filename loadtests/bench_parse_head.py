"""Micro-benchmark of the compiled HTTP/1.1 request-head parser, this tree against another one
(A/B in the same run), on three representative heads.

    python loadtests/bench_parse_head.py --base-tree /path/to/other/checkout [--rounds 7]

Both trees' compiled ``proxy.http1._parser_c`` (both must be built) are loaded into one
process; each round times every head on both, alternating which goes first, as the best of 20
runs of ``--number`` calls. Printed per head: the medians over rounds, the median of the
per-round ratios this / base, the ratio of the fastest rounds (the least disturbed by other
processes on a shared box), and every round's ratio. Refactors of the parser (issue 18 split
``parse_request_head`` into helpers) must not slow it down.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent.parent

HEADS = {
    "minimal GET": b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "mesh GET (12 fields)": (
        b"GET /api/v1/orders/1234?expand=items&limit=10 HTTP/1.1\r\n"
        b"Host: orders.default.svc.cluster.local:8080\r\n"
        b"User-Agent: python-aiohttp/3.9\r\n"
        b"Accept: application/json\r\n"
        b"Accept-Encoding: gzip, deflate\r\n"
        b"X-Request-Id: 4bf92f35-77b3-4da6-a3ce-929d0e0e4736\r\n"
        b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
        b"x-envoy-attempt-count: 1\r\n"
        b"x-envoy-expected-rq-timeout-ms: 15000\r\n"
        b"X-Forwarded-Proto: http\r\n"
        b"x-custom-tenant: blue\r\n"
        b"Cookie: session=abc123\r\n"
        b"Connection: keep-alive\r\n\r\n"
    ),
    "chunked POST, absolute-form": (
        b"POST http://checkout.default.svc:8080/pay HTTP/1.1\r\n"
        b"Host: checkout.default.svc:8080\r\n"
        b"Content-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n"
        b"Expect: 100-continue\r\n"
        b"X-Request-Id: 4bf92f35-77b3-4da6-a3ce-929d0e0e4736\r\n\r\n"
    ),
}


def load_parser(tree: Path) -> ModuleType:
    """``tree``'s compiled ``proxy.http1._parser_c``, loaded beside any other copy: each shared
    object keeps its own module state, so two builds can be timed in one process."""
    found = sorted((tree / "proxy" / "http1").glob("_parser_c.*.so"))
    if not found:
        raise SystemExit(
            f"{tree}: proxy/http1/_parser_c is not built (setup.py build_ext --inplace)"
        )
    spec = importlib.util.spec_from_file_location("proxy.http1._parser_c", found[0])
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def best_us(parse: Callable[[bytes], object], buf: bytes, number: int) -> float:
    """Best of 20 timings of ``number`` calls, in µs per call (the best filters out the time
    other processes took the core)."""
    parse(buf)
    best = float("inf")
    for _ in range(20):
        t0 = time.perf_counter()
        for _ in range(number):
            parse(buf)
        best = min(best, time.perf_counter() - t0)
    return best / number * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-tree", type=Path, required=True, help="the checkout to compare with")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--number", type=int, default=2000, help="calls per timing")
    args = ap.parse_args()
    trees = {"this": HERE, "base": args.base_tree.resolve()}
    samples: dict[str, dict[str, list[float]]] = {t: {h: [] for h in HEADS} for t in trees}
    parsers = {name: load_parser(tree).parse_request_head for name, tree in trees.items()}
    for r in range(args.rounds):
        order = ["this", "base"] if r % 2 == 0 else ["base", "this"]
        for head, buf in HEADS.items():
            for tree in order:
                samples[tree][head].append(best_us(parsers[tree], buf, args.number))
    print(
        f"{'head':30} {'this µs':>8} {'base µs':>8} {'ratio':>6} {'of mins':>8}"
        "   per round this/base"
    )
    for head in HEADS:
        this, base = samples["this"][head], samples["base"][head]
        ratios = [a / b for a, b in zip(this, base, strict=True)]
        print(
            f"{head:30} {statistics.median(this):8.3f} {statistics.median(base):8.3f}"
            f" {statistics.median(ratios):6.3f} {min(this) / min(base):8.3f}"
            f"   {', '.join(f'{r:.2f}' for r in ratios)}"
        )


if __name__ == "__main__":
    main()
