"""``meshlet apply -f PATH``: validate locally, then create or update on the control plane."""

from __future__ import annotations

import argparse

from control_plane.cli import client as cli_client
from control_plane.cli.client import CLIError, ExitStatus

NAME = "apply"
HELP = "create or update resources from a YAML file, a folder of them, or - (stdin)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--filename", metavar="PATH", action="append", required=True,
                        help="file, folder (*.yaml, *.yml, recursive) or - for stdin; repeatable")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate locally and stop; nothing is sent")
    cli_client.add_connection_arguments(parser)
    parser.epilog = cli_client.EXIT_CODES_EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def resource_ref(kind: str, api_version: str, name: str) -> str:
    """``virtualservice.networking.istio.io/reviews``, as kubectl prints it."""
    group = api_version.rpartition("/")[0] if "/" in api_version else ""
    return f"{kind.lower()}.{group}/{name}" if group else f"{kind.lower()}/{name}"


def load_local(paths: list[str]) -> list:
    """Every resource in ``paths``, validated here first (same code as the control plane)."""
    import os

    from control_plane.api.resources import InvalidConfig, load_path_with_warnings
    from control_plane.cli import output

    resources: list = []
    errors: list[str] = []
    for path in paths:
        if path != "-" and not os.path.exists(path):
            raise CLIError(f"cannot read {path}: no such file or directory", ExitStatus.USAGE)
        try:
            res, warns = load_path_with_warnings(path)
        except InvalidConfig as e:
            errors.extend(str(err) for err in e.errors)
            continue
        for w in warns:
            output.warn(str(w))
        resources.extend(res)
    if errors:
        raise CLIError("invalid configuration; nothing was applied", ExitStatus.ERROR, errors)
    if not resources:
        raise CLIError(f"no resources found in {', '.join(paths)}", ExitStatus.USAGE)
    return resources


def documents(resources: list) -> list[dict]:
    out = []
    for r in resources:
        source, _, index = r.source.rpartition("#")
        out.append({"source": source or r.source, "index": int(index) if index.isdigit() else 1,
                    "document": r.to_dict()})
    return out


@cli_client.command
def run(args: argparse.Namespace) -> int:
    from control_plane.cli import output

    resources = load_local(args.filename)
    if args.dry_run:
        for r in resources:
            output.out(f"{resource_ref(r.kind, r.api_version, r.name)} valid (dry run)")
        return 0
    c = cli_client.Client(args)
    answer = c.request("POST", "/v1/resources", json_body={"documents": documents(resources)})
    for ch in answer.get("results", []):
        output.out(f"{resource_ref(ch['kind'], ch['apiVersion'], ch['name'])} {ch['action']}")
    for w in answer.get("warnings", []):
        output.warn(w)
    return 0
