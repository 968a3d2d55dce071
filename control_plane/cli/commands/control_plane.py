"""``meshlet control-plane``: run the control plane (HTTPS API, config stream, CA)."""

from __future__ import annotations

import argparse
import logging
import os

NAME = "control-plane"
HELP = "run the control plane: operator API, config push and CA on one HTTPS port"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", metavar="DIR", default=None,
                        help="where the CA, the store and admin.token live "
                             "(env MESHLET_DATA_DIR; default ~/.meshlet)")
    parser.add_argument("--listen", metavar="HOST:PORT", default="127.0.0.1:15012",
                        help="address to serve HTTPS on (default 127.0.0.1:15012; port 0 picks "
                             "a free port, written to DIR/listen.addr)")
    parser.add_argument("--grace-period", metavar="DURATION", default="30s",
                        help="how long a sidecar whose stream dropped stays registered "
                             "(default 30s)")
    parser.add_argument("--push-debounce", metavar="DURATION",
                        default=os.environ.get("MESHLET_PUSH_DEBOUNCE", "100ms"),
                        help="push once no config change came for this long (env "
                             "MESHLET_PUSH_DEBOUNCE; default 100ms, Istio's PILOT_DEBOUNCE_AFTER)")
    parser.add_argument("--push-debounce-max", metavar="DURATION",
                        default=os.environ.get("MESHLET_PUSH_DEBOUNCE_MAX", "10s"),
                        help="push at the latest this long after the first change of a burst "
                             "(env MESHLET_PUSH_DEBOUNCE_MAX; default 10s, PILOT_DEBOUNCE_MAX)")
    parser.add_argument("--push-throttle", metavar="N", type=int,
                        default=os.environ.get("MESHLET_PUSH_THROTTLE", "100"),
                        help="at most N sidecars are pushed to at once (env "
                             "MESHLET_PUSH_THROTTLE; default 100, PILOT_PUSH_THROTTLE)")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])


def run(args: argparse.Namespace) -> int:
    from control_plane.api.resources import parse_duration
    from control_plane.cli import output
    from control_plane.push import PushSettings
    from control_plane.server import default_data_dir, split_listen
    from control_plane.server import run as serve

    try:
        split_listen(args.listen)
        grace = parse_duration(args.grace_period)
        push = PushSettings(debounce=parse_duration(args.push_debounce),
                            debounce_max=parse_duration(args.push_debounce_max),
                            throttle=args.push_throttle)
        if push.throttle < 1:
            raise ValueError("--push-throttle must be at least 1")
        if push.debounce_max < push.debounce:
            raise ValueError("--push-debounce-max must not be shorter than --push-debounce")
    except ValueError as e:
        output.error(str(e))
        return 2
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from control_plane.memory import fix_mmap_threshold

    fix_mmap_threshold()  # ~90 MB less RSS at 1,000 config streams (see the module)
    try:
        serve(args.data_dir or default_data_dir(), args.listen, grace_s=grace, push=push)
    except OSError as e:
        output.error(f"cannot start the control plane on {args.listen}: {e.strerror or e}")
        return 1
    return 0
