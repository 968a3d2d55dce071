"""``meshlet top``: a live table of the mesh's routes, edges or services by request rate.

As ``linkerd viz top`` / ``routes``: the golden metrics the control plane merged from every
sidecar's reports (``/v1/stats/...``): requests per second, success rate, p50 and p99 latency,
and for routes the split their VirtualService configures; for edges also the opaque TCP
connections and bytes (sent/received) when there were any. Refreshes every ``--interval`` seconds
until Ctrl-C; ``--once`` prints one table.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from control_plane.cli import client as cli_client

NAME = "top"
HELP = "live golden metrics of routes, edges or services (rate, success rate, p50/p99)"
VIEWS = ("routes", "edges", "services")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("view", nargs="?", choices=VIEWS, default="routes",
                        help="what to list (default routes)")
    parser.add_argument("--window", choices=("1m", "10m"), default="1m",
                        help="the time window (default 1m)")
    parser.add_argument("--namespace", metavar="NS", help="only destinations in this namespace")
    parser.add_argument("--once", action="store_true", help="print one table and exit")
    parser.add_argument("--interval", type=float, default=2.0, metavar="SECONDS",
                        help="refresh period (default 2)")
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    cli_client.add_connection_arguments(parser)
    parser.epilog = cli_client.EXIT_CODES_EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1000:.2f}s" if v >= 1000 else f"{v:.1f}ms"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.2f}%"


def _rps(v: float) -> str:
    return f"{v:.2f}"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}GiB"


def _tcp(e: dict) -> str:
    """Opaque TCP on the edge as ``CONNECTIONSc,SENT/RECEIVED`` (sent and received as Istio's
    ``istio_tcp_*_bytes_total`` count them); ``-`` for an HTTP-only edge."""
    conns = e.get("tcp_connections") or 0
    sent, recv = e.get("tcp_sent_bytes") or 0, e.get("tcp_received_bytes") or 0
    if not (conns or sent or recv):
        return "-"
    return f"{conns}c,{_bytes(sent)}/{_bytes(recv)}"


def _split(row: dict) -> str:
    dests = row.get("destinations") or []
    parts = []
    for d in dests:
        name = d.get("host", "").split(".")[0] + (f"/{d['subset']}" if d.get("subset") else "")
        parts.append(f"{name}:{d.get('weight', 0)}")
    return ",".join(parts) or "-"


def render(view: str, data: dict) -> str:
    from control_plane.cli import output

    items = data.get(view) or []
    if view == "edges":
        headers = ["SOURCE", "DESTINATION", "RPS", "SUCCESS", "P50", "P99", "MTLS", "TCP"]
        rows = [[f"{e['source']['workload']}"
                 + (f"/{e['source']['version']}" if e["source"]["version"] != "unknown" else ""),
                 f"{e['destination']['name']}"
                 + (f"/{e['destination']['version']}"
                    if e["destination"]["version"] != "unknown" else ""),
                 _rps(e["rps"]), _pct(e["success_rate"]), _ms(e["p50_ms"]), _ms(e["p99_ms"]),
                 "yes" if e.get("mtls") else "no", _tcp(e)] for e in items]
    elif view == "services":
        headers = ["SERVICE", "VERSION", "RPS", "SUCCESS", "P50", "P99"]
        rows = [[s["name"] + (f".{s['namespace']}" if s.get("namespace") else ""),
                 s["version"], _rps(s["rps"]), _pct(s["success_rate"]), _ms(s["p50_ms"]),
                 _ms(s["p99_ms"])] for s in items]
    else:
        headers = ["SERVICE", "ROUTE", "RPS", "SUCCESS", "P50", "P99", "SPLIT"]
        rows = [[r["name"], r["route"], _rps(r["rps"]), _pct(r["success_rate"]),
                 _ms(r["p50_ms"]), _ms(r["p99_ms"]), _split(r)] for r in items]
    if not rows:
        return f"no {view} with traffic in the last {data.get('window', '1m')}"
    return output.table(headers, rows)


def _filter(view: str, data: dict, namespace: str | None) -> dict:
    if not namespace:
        return data

    def ns(item: dict) -> str:
        if view == "edges":
            return item["destination"]["namespace"]
        if view == "services":
            return item.get("namespace", "")
        parts = item.get("service", "").split(".")
        return parts[1] if len(parts) >= 3 and parts[2] == "svc" else ""

    return {**data, view: [i for i in data.get(view) or [] if ns(i) == namespace]}


@cli_client.command
def run(args: argparse.Namespace) -> int:
    import json

    from control_plane.cli import output

    c = cli_client.Client(args)
    path = f"/v1/stats/{args.view}?window={args.window}"
    interval = max(0.2, float(args.interval))
    interrupted = False

    def on_sigint(signum: int, frame: object) -> None:
        # Our own handler, so each request's asyncio.run keeps it instead of installing its
        # own: that one only cancels the request's task, and a Ctrl-C landing while aiohttp
        # finishes a request that completes anyway is lost (top then runs on). The flag is
        # checked after every request as well.
        nonlocal interrupted
        interrupted = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint) if not args.once else None
    try:
        while not interrupted:
            data = _filter(args.view, c.request("GET", path), args.namespace)
            if args.output == "json":
                output.out(json.dumps(data, indent=2))
            else:
                text = render(args.view, data)
                if not args.once and sys.stdout.isatty():
                    sys.stdout.write("\x1b[H\x1b[2J")  # redraw in place, like top
                output.out(text)
            if args.once:
                return 0
            sys.stdout.flush()
            if not interrupted:
                time.sleep(interval)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
