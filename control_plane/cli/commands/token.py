"""``meshlet token create``: a join token for a sidecar's first certificate, or (``--read-only``)
the token that opens the dashboard and the read-only API (stats, tap, proxies, analyze)."""

from __future__ import annotations

import argparse

from control_plane.cli import client as cli_client
from control_plane.cli.client import CLIError, ExitStatus

NAME = "token"
HELP = ("join tokens: `token create --service NAME` prints one alone on stdout; "
        "`token create --read-only` the dashboard's read-only token")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="token_command", metavar="SUBCOMMAND")
    create = sub.add_parser("create", help="create a join token for a service's sidecar",
                            epilog=cli_client.EXIT_CODES_EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    create.add_argument("--service", metavar="NAME",
                        help="the service (SPIFFE service account) the token admits")
    create.add_argument("--read-only", action="store_true",
                        help="print the read-only token (dashboard login, read-only API)")
    create.add_argument("--namespace", default="default", metavar="NS",
                        help="its namespace (default: default)")
    create.add_argument("--ttl", default="1h", metavar="DURATION",
                        help="how long the token may be used (default 1h)")
    cli_client.add_connection_arguments(create)


@cli_client.command
def run(args: argparse.Namespace) -> int:
    from control_plane.api.resources import parse_duration
    from control_plane.cli import output

    if args.token_command != "create":
        raise CLIError("usage: meshlet token create --service NAME [--namespace NS] [--ttl D]",
                       ExitStatus.USAGE)
    try:
        if parse_duration(args.ttl) <= 0:
            raise ValueError("must be positive")
    except ValueError as e:
        raise CLIError(f"--ttl {args.ttl!r}: {e}", ExitStatus.USAGE)
    c = cli_client.Client(args)
    if args.read_only:
        output.out(c.request("POST", "/v1/tokens", json_body={"read_only": True})["token"])
        return 0
    if not args.service:
        raise CLIError("token create needs --service NAME (or --read-only)", ExitStatus.USAGE)
    answer = c.request("POST", "/v1/tokens", json_body={
        "service": args.service, "namespace": args.namespace, "ttl": args.ttl})
    output.out(answer["token"])
    return 0
