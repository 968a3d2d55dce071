"""``meshlet proxy-status``: every sidecar, and whether it has acknowledged the current config."""

from __future__ import annotations

import argparse

from control_plane.cli import client as cli_client
from control_plane.cli.client import CLIError

NAME = "proxy-status"
HELP = "every registered sidecar: service, version, address, config acknowledged or NACK reason"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sidecar", metavar="SIDECAR", nargs="?",
                        help="only this sidecar: node id, service-version or service")
    parser.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    cli_client.add_connection_arguments(parser)
    parser.epilog = cli_client.EXIT_CODES_EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def sync_state(p: dict, current: str) -> str:
    """istioctl's words: SYNCED, STALE (sent, not yet answered or behind), NACK, NOT SENT."""
    if not p.get("connected", True):
        return "DISCONNECTED"
    if p.get("nack_error") and p.get("nack_version") == p.get("sent_version"):
        return f"NACK: {p['nack_error']}"
    if not p.get("sent_version"):
        return "NOT SENT"
    # a sidecar scoped by a Sidecar resource has a version of its own
    if p.get("acked_version") == (p.get("expected_version") or current):
        return "SYNCED"
    return "STALE"


def render(data: dict, now: float | None = None) -> str:
    from control_plane.cli import output

    current = data.get("snapshot_version", "")
    proxies = data.get("proxies", [])
    # Replicas on etcd: which control plane each sidecar is connected to.
    replicas = any(p.get("replica") for p in proxies)
    rows = [
        [p["node_id"], f"{p['service']}.{p['namespace']}", p.get("version") or "-",
         p.get("address") or "-", *([p.get("replica") or "-"] if replicas else []),
         p.get("acked_version") or "-",
         output.expiry(p.get("cert_expiry"), now), sync_state(p, current)]
        for p in proxies
    ]
    headers = ["NAME", "SERVICE", "VERSION", "ADDRESS", *(["REPLICA"] if replicas else []),
               "ACKED", "CERT EXPIRES", "CONFIG"]
    return output.table(headers, rows) + f"\n\ncurrent config version: {current or '-'}"


@cli_client.command
def run(args: argparse.Namespace) -> int:
    from control_plane.cli import output

    data = cli_client.Client(args).request("GET", "/v1/proxies")
    if args.sidecar:
        from control_plane.registry import answers_to

        everyone = data.get("proxies", [])
        data["proxies"] = [
            p for p in everyone
            if answers_to(args.sidecar, p["node_id"], p["service"], p["namespace"],
                          p.get("version") or "")
        ]
        if not data["proxies"] and everyone:
            known = ", ".join(p["node_id"].partition("@")[0] for p in everyone)
            raise CLIError(f"no sidecar {args.sidecar!r} is registered; registered sidecars: "
                           f"{known}")
    if args.output != "table":
        output.out(output.dump(data, args.output))
    elif not data.get("proxies"):
        output.warn("no sidecars are registered")
        output.out(f"current config version: {data.get('snapshot_version') or '-'}")
    else:
        output.out(render(data))
    return 0
