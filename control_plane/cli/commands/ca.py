"""``meshlet ca status|rotate|activate|retire``: rotate the mesh's root CA without downtime.

1. ``rotate``: a new root joins the trust bundle; every sidecar trusts old and new.
2. ``activate``: the CA signs with the new root; every sidecar renews its certificate.
3. ``retire FINGERPRINT``: the old root leaves the bundle once nothing chains to it.
Each step is pushed to every sidecar at once; ``--wait`` blocks until all have followed it.
"""

from __future__ import annotations

import argparse
import time

from control_plane.cli import client as cli_client
from control_plane.cli import output

NAME = "ca"
HELP = "inspect and rotate the mesh's root CA (rotate, activate, retire)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["status", "rotate", "activate", "retire"])
    parser.add_argument("fingerprint", nargs="?", help="retire: the old root's sha256 fingerprint")
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait until every connected sidecar has followed the step",
    )
    parser.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    cli_client.add_connection_arguments(parser)
    parser.epilog = cli_client.EXIT_CODES_EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def _synced(c: cli_client.Client) -> bool:
    return all_synced(c.request("GET", "/v1/proxies"))


def all_synced(data: dict) -> bool:
    """Every connected sidecar SYNCED in ``proxy-status``'s sense: a sidecar scoped by a Sidecar
    resource acknowledges a version of its own, not the global snapshot's."""
    from control_plane.cli.commands.proxy_status import sync_state

    version = data.get("snapshot_version")
    return bool(version) and all(
        sync_state(p, version) == "SYNCED"
        for p in data.get("proxies", [])
        if p.get("connected", True)
    )


@cli_client.command
def run(args: argparse.Namespace) -> int:
    c = cli_client.Client(args)
    if args.action == "status":
        data = c.request("GET", "/v1/ca")
    else:
        body = {"fingerprint": args.fingerprint} if args.action == "retire" else {}
        if args.action == "retire" and not args.fingerprint:
            raise cli_client.CLIError(
                "retire needs the old root's fingerprint (see `meshlet ca status`)",
                cli_client.ExitStatus.USAGE,
            )
        data = c.request("POST", f"/v1/ca/{args.action}", json_body=body)
        if args.wait > 0:
            deadline = time.monotonic() + args.wait
            time.sleep(0.3)  # let the push go out before checking acknowledgements
            while not _synced(c):
                if time.monotonic() > deadline:
                    raise cli_client.CLIError(
                        "not every sidecar followed in time (see `meshlet proxy-status`)"
                    )
                time.sleep(0.2)
    if args.output == "table":
        output.out("roots in the trust bundle:")
        for fp in data.get("fingerprints", []):
            mark = " (signing)" if fp == data.get("signingRoot") else ""
            output.out(f"  {fp}{mark}")
        if data.get("pendingRoot"):
            output.out(f"pending (trusted, not yet signing): {data['pendingRoot']}")
    else:
        output.out(output.dump(data, args.output))
    return 0
