"""``meshlet proxy-status``: every sidecar, and whether it has acknowledged the current config."""

from __future__ import annotations

import argparse

from control_plane.cli import client as cli_client

NAME = "proxy-status"
HELP = "every registered sidecar: service, version, address, config acknowledged or NACK reason"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sidecar", metavar="SIDECAR", nargs="?",
                        help="only this node id or service")
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
    rows = [
        [p["node_id"], f"{p['service']}.{p['namespace']}", p.get("version") or "-",
         p.get("address") or "-", p.get("acked_version") or "-",
         output.expiry(p.get("cert_expiry"), now), sync_state(p, current)]
        for p in data.get("proxies", [])
    ]
    headers = ["NAME", "SERVICE", "VERSION", "ADDRESS", "ACKED", "CERT EXPIRES", "CONFIG"]
    return output.table(headers, rows) + f"\n\ncurrent config version: {current or '-'}"


@cli_client.command
def run(args: argparse.Namespace) -> int:
    from control_plane.cli import output

    data = cli_client.Client(args).request("GET", "/v1/proxies")
    if args.sidecar:
        svc, _, ns = args.sidecar.partition(".")
        data["proxies"] = [
            p for p in data.get("proxies", [])
            if p["node_id"] == args.sidecar or (p["service"] == svc and ns in ("", p["namespace"]))
        ]
    if args.output != "table":
        output.out(output.dump(data, args.output))
    elif not data.get("proxies"):
        output.warn("no sidecars are registered")
        output.out(f"current config version: {data.get('snapshot_version') or '-'}")
    else:
        output.out(render(data))
    return 0
