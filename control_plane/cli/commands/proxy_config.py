"""``meshlet proxy-config TYPE SIDECAR``: what one sidecar has in effect, read from its admin port
through the control plane."""

from __future__ import annotations

import argparse
from urllib.parse import quote

from control_plane.cli import client as cli_client
from control_plane.cli.client import CLIError, ExitStatus

NAME = "proxy-config"
HELP = "what one sidecar has in effect: routes, clusters, endpoints or certs"

TYPES = {
    "routes": "routes",
    "route": "routes",
    "r": "routes",
    "clusters": "clusters",
    "cluster": "clusters",
    "c": "clusters",
    "endpoints": "endpoints",
    "endpoint": "endpoints",
    "ep": "endpoints",
    "certs": "certs",
    "cert": "certs",
    "secret": "certs",
    "secrets": "certs",
    "s": "certs",
    "explain": "explain",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "type",
        metavar="TYPE",
        help="routes (r), clusters (c), endpoints (ep), certs (secret, s) or "
        "explain (what the sidecar would do with a request)",
    )
    parser.add_argument(
        "sidecar",
        metavar="SIDECAR",
        help="node id, service-version (orders-v1) or service (orders, orders.default) if it "
        "has one sidecar; `meshlet proxy-status` lists them",
    )
    parser.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    ex = parser.add_argument_group("explain")
    ex.add_argument("--method", default="GET")
    ex.add_argument("--host", default="", help="the Host the app would send (outbound)")
    ex.add_argument("--path", default="/")
    ex.add_argument("-H", "--header", action="append", default=[], metavar="NAME:VALUE")
    ex.add_argument(
        "--inbound",
        action="store_true",
        help="explain the inbound side (authorization) instead of outbound routing",
    )
    ex.add_argument("--principal", default="", help="inbound: the caller's SPIFFE ID")
    ex.add_argument(
        "--original-dst",
        default="",
        metavar="IP:PORT",
        help="outbound: a captured request, where the app dialled (routes by address, or"
        " passes through)",
    )
    cli_client.add_connection_arguments(parser)
    parser.epilog = cli_client.EXIT_CODES_EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def _as_list(value: object) -> list:
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return [
            {"name": k, **v} if isinstance(v, dict) else {"name": k, "value": v}
            for k, v in value.items()
        ]
    return []


def _state(value: object) -> str:
    if isinstance(value, dict):
        return str(value.get("state", "-"))
    return str(value) if value not in (None, "") else "-"


def _routes(data: dict) -> list[list]:
    rows = []
    for vh in _as_list(data.get("routes")):
        for r in _as_list(vh.get("routes")):
            ds = [d for d in _as_list(r.get("destinations")) if isinstance(d, dict)]
            # A weight means something only when the route splits traffic.
            dests = ", ".join(
                f"{d.get('cluster')}" + (f" {d.get('weight', 0)}%" if len(ds) > 1 else "")
                for d in ds
            )
            # blocks are ORed (Istio's HTTPMatchRequest list), conditions in one ANDed
            match = " or ".join(str(m) for m in _as_list(r.get("match"))) or "/*"
            rows.append([vh.get("host", ""), match, dests or "-", vh.get("virtual_service") or "-"])
    return rows


def render(kind: str, data: object) -> str:
    """The sidecar's admin JSON as a table (istioctl proxy-config's columns); JSON otherwise."""
    from control_plane.cli import output

    if kind == "routes" and isinstance(data, dict):
        head = f"config version: {data.get('version') or '-'}\n\n"
        rows = _routes(data)
        if rows:
            return head + output.table(["HOST", "MATCH", "DESTINATIONS", "VIRTUAL SERVICE"], rows)
        items = [r for r in _as_list(data.get("resources")) if isinstance(r, dict)]
        if items:
            rows = [
                [
                    r.get("kind", ""),
                    (r.get("metadata") or {}).get("namespace", ""),
                    (r.get("metadata") or {}).get("name", ""),
                    ",".join((r.get("spec") or {}).get("hosts") or [])
                    or (r.get("spec") or {}).get("host", ""),
                ]
                for r in items
            ]
            return head + output.table(["KIND", "NAMESPACE", "NAME", "HOSTS"], rows)
    if kind in ("clusters", "endpoints") and isinstance(data, dict | list):
        clusters = _as_list(data.get("clusters", data) if isinstance(data, dict) else data)
        clusters = [c for c in clusters if isinstance(c, dict)]
        if clusters and kind == "clusters":
            rows = [
                [
                    c.get("name", ""),
                    c.get("subset") or "-",
                    c.get("port") or "-",
                    c.get("lb") or "-",
                    len(_as_list(c.get("endpoints"))),
                    _state(c.get("circuit_breaker", c.get("breaker"))),
                ]
                for c in clusters
            ]
            return output.table(["CLUSTER", "SUBSET", "PORT", "LB", "ENDPOINTS", "BREAKER"], rows)
        rows = []
        for c in clusters:
            for e in _as_list(c.get("endpoints")):
                if isinstance(e, dict):
                    health = e.get("health")
                    if health is None:
                        health = "HEALTHY" if e.get("healthy", True) else "EJECTED"
                    rows.append([e.get("address", ""), health, c.get("name", "")])
        if rows:
            return output.table(["ENDPOINT", "STATUS", "CLUSTER"], rows)
    if kind == "certs" and isinstance(data, dict) and "spiffe_id" in data:
        rows = [
            [
                data.get("spiffe_id") or "-",
                data.get("serial") or "-",
                data.get("not_before") or "-",
                data.get("not_after") or "-",
                data.get("next_renewal") or "-",
            ]
        ]
        text = output.table(
            ["SPIFFE ID", "SERIAL", "NOT BEFORE", "NOT AFTER", "NEXT RENEWAL"], rows
        )
        if data.get("last_renewal_error"):
            text += f"\n\nlast renewal error: {data['last_renewal_error']}"
        return text
    return output.dump(data, "json")


@cli_client.command
def run(args: argparse.Namespace) -> int:
    from control_plane.cli import output

    kind = TYPES.get(args.type.lower())
    if kind is None:
        raise CLIError(
            f"unknown config type {args.type!r}: use routes, clusters, endpoints or certs",
            ExitStatus.USAGE,
        )
    c = cli_client.Client(args)
    path = f"/v1/proxies/{quote(args.sidecar, safe='')}/{kind}"
    if kind == "explain":
        from urllib.parse import urlencode

        q = [
            ("method", args.method),
            ("host", args.host),
            ("path", args.path),
            ("direction", "inbound" if args.inbound else "outbound"),
            ("principal", args.principal),
        ]
        if args.original_dst:
            q.append(("original_dst", args.original_dst))
        q += [
            ("h." + h.partition(":")[0].strip().lower(), h.partition(":")[2].strip())
            for h in args.header
        ]
        path += "?" + urlencode(q)
        answer = c.request("GET", path)
        output.out(
            output.dump(answer.get("data"), "yaml" if args.output == "table" else args.output)
        )
        return 0
    answer = c.request("GET", path)
    data = answer.get("data")
    if args.output != "table":
        output.out(output.dump(data, args.output))
    else:
        output.out(render(kind, data))
    return 0
