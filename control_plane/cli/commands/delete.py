"""``meshlet delete (KIND NAME | -f PATH)``: remove resources, kubectl-style."""

from __future__ import annotations

import argparse

from control_plane.cli import client as cli_client
from control_plane.cli.client import CLIError, ExitStatus

NAME = "delete"
HELP = "delete resources by kind and name, or every resource named in a file or folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", metavar="KIND", nargs="?", help="kind (vs, dr, ... as for get)")
    parser.add_argument("names", metavar="NAME", nargs="*", help="names of the resources")
    parser.add_argument("-n", "--namespace", metavar="NS", default="default",
                        help="namespace of the named resources (default: default)")
    parser.add_argument("-f", "--filename", metavar="PATH", action="append",
                        help="delete the resources defined in this file, folder or - (stdin)")
    parser.add_argument("--ignore-not-found", action="store_true",
                        help="a resource that does not exist is not an error")
    cli_client.add_connection_arguments(parser)
    parser.epilog = cli_client.EXIT_CODES_EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


@cli_client.command
def run(args: argparse.Namespace) -> int:
    from control_plane.cli import output
    from control_plane.cli.commands.apply import load_local, resource_ref

    if args.filename:
        if args.kind:
            raise CLIError("give either KIND NAME or -f PATH, not both", ExitStatus.USAGE)
        keys = [{"kind": r.kind, "namespace": r.namespace, "name": r.name}
                for r in load_local(args.filename)]
    else:
        if not args.kind or not args.names:
            raise CLIError("give KIND NAME... or -f PATH", ExitStatus.USAGE)
        cli_client.known_kind(args.kind)
        keys = [{"kind": args.kind, "namespace": args.namespace, "name": n} for n in args.names]
    c = cli_client.Client(args)
    answer = c.request("POST", "/v1/resources:delete", json_body={"keys": keys})
    missing = 0
    for ch in answer.get("results", []):
        if ch["action"] == "deleted":
            ref = resource_ref(ch["kind"], ch["apiVersion"], ch["name"])
            kind_ref, _, name = ref.rpartition("/")
            output.out(f'{kind_ref} "{name}" deleted')
        elif not args.ignore_not_found:
            missing += 1
            output.error(f"{ch['kind']} {ch['namespace']}/{ch['name']} not found")
    return int(ExitStatus.ERROR) if missing else 0
