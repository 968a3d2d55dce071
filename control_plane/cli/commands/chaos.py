"""``meshlet chaos run EXPERIMENT``: a Chaos Toolkit experiment against the mesh, under locust
load, with a report (verdicts, table, plot). The actions and probes are
``control_plane.chaos.actions`` / ``.probes``; ``chaos run`` of Chaos Toolkit itself can run the
same file (without the load and the plot)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

NAME = "chaos"
HELP = "run a chaos experiment (Chaos Toolkit format) against the mesh, under load"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="chaos_command", metavar="SUBCOMMAND")
    r = sub.add_parser("run", help="run one experiment and write its report")
    r.add_argument("experiment", help="experiment file (YAML or JSON), e.g. configs/chaos/*.yaml")
    r.add_argument("--report", metavar="DIR",
                   help="report directory (default chaos-report-<name>-<time>)")
    r.add_argument("--mesh", metavar="MESH_JSON",
                   help="the mesh.json `meshlet demo` wrote (env MESHLET_MESH)")
    r.add_argument("--var", action="append", default=[], metavar="KEY=VALUE",
                   help="override a configuration value of the experiment (repeatable)")
    r.add_argument("--locustfile", help="locust file driving the load (default: the experiment's)")
    r.add_argument("--host", help="load target URL (default: the demo's frontend sidecar)")
    r.add_argument("--users", type=int, help="locust users")
    r.add_argument("--spawn-rate", type=float, help="locust users started per second")
    r.add_argument("--no-load", action="store_true", help="drive no load")
    r.add_argument("--warmup", type=float, metavar="SECONDS",
                   help="load before the first hypothesis (default: the experiment's, else 5)")
    r.add_argument("--strategy", default="default",
                   choices=["default", "before-method-only", "after-method-only",
                            "during-method-only", "continuous"],
                   help="when the steady-state hypothesis is checked (Chaos Toolkit's)")


def run(args: argparse.Namespace) -> int:
    if args.chaos_command != "run":
        print("usage: meshlet chaos run EXPERIMENT [options]", file=sys.stderr)
        return 2
    try:
        from control_plane.chaos import runner
    except ImportError as exc:
        print(f"meshlet chaos: {exc.name} is missing: pip install 'meshlet[chaos]'",
              file=sys.stderr)
        return 2
    variables = {}
    for item in args.var:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"meshlet chaos: --var {item!r}: expected KEY=VALUE", file=sys.stderr)
            return 2
        variables[key] = value
    exp = Path(args.experiment)
    if not exp.is_file():
        print(f"meshlet chaos: no experiment file {exp}", file=sys.stderr)
        return 2
    report = Path(args.report) if args.report else Path(
        f"chaos-report-{exp.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    opts = runner.RunOptions(
        experiment=exp,
        report_dir=report,
        mesh_state=args.mesh,
        locustfile=args.locustfile,
        users=args.users,
        spawn_rate=args.spawn_rate,
        host=args.host,
        no_load=args.no_load,
        warmup_s=args.warmup,
        variables=variables,
        strategy=args.strategy,
    )
    try:
        return runner.run(opts)
    except (ValueError, OSError, runner.mesh.MeshError) as exc:
        print(f"meshlet chaos: {exc}", file=sys.stderr)
        return 2
