"""``meshlet get KIND [NAME]``: read resources from the control plane, kubectl-style."""

from __future__ import annotations

import argparse
from urllib.parse import quote, urlencode

from control_plane.cli import client as cli_client
from control_plane.cli.client import CLIError

NAME = "get"
HELP = ("list resources of a kind (vs, dr, se, we, sidecar, ap, pa, rp, irl, mc, canary; plural "
        "and long names work)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", metavar="KIND",
                        help="VirtualService (vs), DestinationRule (dr), ServiceEntry (se), "
                             "WorkloadEntry (we), Sidecar, AuthorizationPolicy (ap), "
                             "PeerAuthentication (pa), ResiliencePolicy (rp), InboundRateLimit "
                             "(irl), MeshConfig (mc), Canary (canary), or all")
    parser.add_argument("name", metavar="NAME", nargs="?", help="one resource by name")
    parser.add_argument("-n", "--namespace", metavar="NS", default=None,
                        help="only this namespace (default: every namespace)")
    parser.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table",
                        help="table (default), yaml (re-appliable documents) or json")
    cli_client.add_connection_arguments(parser)
    parser.epilog = cli_client.EXIT_CODES_EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def _summary(item: dict) -> str:
    spec = item.get("spec") or {}
    kind = item.get("kind")
    if kind in ("VirtualService", "ServiceEntry"):
        return ",".join(spec.get("hosts") or [])
    if kind in ("DestinationRule", "ResiliencePolicy"):
        return str(spec.get("host", ""))
    if kind == "WorkloadEntry":
        return str(spec.get("address", ""))
    if kind == "AuthorizationPolicy":
        return str(spec.get("action", "ALLOW"))
    if kind == "PeerAuthentication":
        return str((spec.get("mtls") or {}).get("mode", "UNSET"))
    if kind == "MeshConfig":
        return str(spec.get("trustDomain", "cluster.local"))
    if kind == "Canary":
        return f"{spec.get('host', '')} {spec.get('stable', '')}->{spec.get('canary', '')}"
    if kind == "InboundRateLimit":
        labels = (spec.get("selector") or {}).get("matchLabels") or {}
        return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "*"
    if kind == "Sidecar":
        return ",".join(h for e in spec.get("egress") or [] for h in e.get("hosts") or [])
    return ""


_SUMMARY_HEADER = {
    "VirtualService": "HOSTS", "ServiceEntry": "HOSTS", "DestinationRule": "HOST",
    "ResiliencePolicy": "HOST", "WorkloadEntry": "ADDRESS", "AuthorizationPolicy": "ACTION",
    "PeerAuthentication": "MODE", "MeshConfig": "TRUST DOMAIN", "InboundRateLimit": "SELECTOR",
    "Sidecar": "EGRESS HOSTS", "Canary": "HOST STABLE->CANARY",
}


def _plain(item: dict) -> dict:
    return {k: item[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in item}


def render(items: list[dict], fmt: str, kind_asked: str, now: float | None = None) -> str:
    from control_plane.cli import output

    if fmt == "json":
        docs = [_plain(i) for i in items]
        if len(docs) == 1 and kind_asked != "list":
            return output.dump(docs[0], "json")
        return output.dump({"apiVersion": "v1", "kind": "List", "items": docs}, "json")
    if fmt == "yaml":
        return output.dump([_plain(i) for i in items], "yaml")
    kinds = sorted({i["kind"] for i in items})
    blocks = []
    for kind in kinds:
        rows = [
            [i["metadata"]["namespace"], i["metadata"]["name"], _summary(i),
             i.get("revision", ""), output.age(i.get("created"), now)]
            for i in items if i["kind"] == kind
        ]
        headers = ["NAMESPACE", "NAME", _SUMMARY_HEADER.get(kind, ""), "REVISION", "AGE"]
        title = f"{kind}:\n" if len(kinds) > 1 else ""
        blocks.append(title + output.table(headers, rows))
    return "\n\n".join(blocks)


@cli_client.command
def run(args: argparse.Namespace) -> int:
    from control_plane.cli import output

    cli_client.known_kind(args.kind, allow_all=True)
    c = cli_client.Client(args)
    query = {k: v for k, v in (("namespace", args.namespace), ("name", args.name)) if v}
    path = "/v1/resources" if args.kind.lower() == "all" else f"/v1/resources/{quote(args.kind)}"
    if query:
        path += "?" + urlencode(query)
    items = c.request("GET", path).get("items", [])
    if not items:
        if args.name:
            raise CLIError(f"{args.kind} {args.name!r} not found")
        where = f"in namespace {args.namespace!r}" if args.namespace else "in any namespace"
        if args.output == "table":
            output.warn(f"no {args.kind} resources found {where}")
            return 0
    output.out(render(items, args.output, "one" if args.name else "list"))
    return 0
