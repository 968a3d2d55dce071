"""``meshlet analyze -f PATH [-o json]``: validate and cross-check resources offline.

Nothing is sent anywhere: the files are loaded with the same validation ``apply`` uses, then
checked together (``control_plane.api.analyze``). Exit status 0 when there is no error (warnings
allowed), 1 when there is one, 2 when a path cannot be read.
"""

from __future__ import annotations

import argparse
import json
import os

NAME = "analyze"
HELP = "validate resources and check how they fit together, offline (like istioctl analyze)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-f",
        "--filename",
        metavar="PATH",
        action="append",
        required=True,
        help="file, folder (*.yaml, *.yml, recursive) or - for stdin; repeatable",
    )
    parser.add_argument(
        "-o", "--output", choices=("text", "json"), default="text", help="output format"
    )
    parser.epilog = (
        "exit status:\n"
        "  0  no errors (warnings may have been printed)\n"
        "  1  at least one error\n"
        "  2  a path cannot be read"
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def run(args: argparse.Namespace) -> int:
    from control_plane.api.analyze import ERROR, Finding, analyze
    from control_plane.api.resources import InvalidConfig, load_path_with_warnings
    from control_plane.cli import output

    resources = []
    findings: list[Finding] = []
    for path in args.filename:
        if path != "-" and not os.path.exists(path):
            output.error(f"cannot read {path}: no such file or directory")
            return 2
        try:
            res, warns = load_path_with_warnings(path)
        except InvalidConfig as exc:
            findings += [Finding.from_config_error(e) for e in exc.errors + exc.warnings]
            continue
        resources += res
        findings += [Finding.from_config_error(w) for w in warns]
    if not any(f.level == ERROR for f in findings):
        # Cross-resource checks only make sense once every document is valid.
        findings += analyze(resources)
    errors = sum(f.level == ERROR for f in findings)
    if args.output == "json":
        output.out(
            json.dumps(
                {
                    "findings": [f.to_dict() for f in findings],
                    "resources": len(resources),
                    "errors": errors,
                    "warnings": len(findings) - errors,
                },
                indent=2,
            )
        )
    elif findings:
        for f in findings:
            output.out(str(f))
    else:
        where = ", ".join(args.filename)
        output.out(
            f"No validation issues found when analyzing {where} "
            f"({len(resources)} resource{'s' if len(resources) != 1 else ''})."
        )
    return 1 if errors else 0
