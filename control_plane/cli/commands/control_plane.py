"""``meshlet control-plane``: run the control plane (HTTPS API, config stream, CA)."""

from __future__ import annotations

import argparse
import errno
import logging

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
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])


def run(args: argparse.Namespace) -> int:
    from control_plane.api.resources import parse_duration
    from control_plane.cli import output
    from control_plane.server import default_data_dir, split_listen
    from control_plane.server import run as serve

    try:
        split_listen(args.listen)
        grace = parse_duration(args.grace_period)
    except ValueError as e:
        output.error(str(e))
        return 2
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        serve(args.data_dir or default_data_dir(), args.listen, grace_s=grace)
    except OSError as e:
        reason = e.strerror or str(e)
        if e.errno == errno.EADDRINUSE:
            reason = ("address already in use (is another control plane running?); stop it or "
                      "pick another address with --listen HOST:PORT")
        elif e.errno == errno.EACCES and e.filename is None:
            reason += "; pick another address with --listen HOST:PORT"
        output.error(f"cannot start the control plane on {args.listen}: {reason}")
        return 1
    return 0
