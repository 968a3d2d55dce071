"""``meshlet sidecar``: run one sidecar, standalone from a file or joined to a control plane."""

from __future__ import annotations

import argparse
import logging
import sys

NAME = "sidecar"
HELP = "run a sidecar proxy beside one service"


def _max_streams(text: str) -> int:
    """--hbone-max-streams: 1 to 2^31-1 (a SETTINGS value), or 0 for the default."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= n < 1 << 31:
        raise argparse.ArgumentTypeError(f"{n} is not between 0 (the default) and 2147483647")
    return n


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--service", required=True, help="the service this sidecar fronts")
    p.add_argument("--namespace", default="default", help="default: default")
    p.add_argument("--version", default="", help="the workload version label (e.g. v1)")
    p.add_argument("--label", action="append", default=[], metavar="K=V", help="workload label")
    p.add_argument("--app-port", type=int, required=True, help="the app's port on --app-host")
    p.add_argument("--app-host", default="127.0.0.1", help="default 127.0.0.1")
    p.add_argument("--inbound", type=int, default=15006, metavar="PORT",
                   help="inbound port peers connect to (mTLS; default 15006)")
    p.add_argument("--outbound", type=int, default=15001, metavar="PORT",
                   help="outbound port the app sends its calls to (default 15001)")
    p.add_argument("--admin", type=int, default=15000, metavar="PORT",
                   help="admin port: /healthz/ready, /metrics, /config_dump ... (default 15000)")
    p.add_argument(
        "--hbone",
        type=int,
        default=None,
        metavar="PORT",
        help="HBONE port: peers tunnel opaque TCP here as HTTP/2 CONNECT over mTLS (needs a "
        "certificate; registered with the control plane, so peers find it). Default 15008 "
        "when --inbound is the default 15006 (one sidecar per host or pod), else 0, a free "
        "port, so that many sidecars share a host without a flag each",
    )
    p.add_argument("--inbound-bind", default="0.0.0.0", help="default 0.0.0.0")
    p.add_argument("--outbound-bind", default="127.0.0.1", help="default 127.0.0.1")
    p.add_argument("--admin-bind", default="127.0.0.1", help="default 127.0.0.1")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--config", help="standalone: a YAML file (or folder) of resources")
    src.add_argument("--control-plane", metavar="URL[,URL...]",
                     help="the control plane's URL (https://host:15012), or several replicas' "
                     "comma-separated: a sidecar whose replica fails moves to the next "
                     "(env MESHLET_CONTROL_PLANE)")
    p.add_argument("--token-file", help="join token file (with --control-plane)")
    p.add_argument("--cert", help="standalone mTLS: certificate chain PEM")
    p.add_argument("--key", help="standalone mTLS: private key PEM")
    p.add_argument("--ca", help="standalone mTLS: trust bundle PEM")
    p.add_argument("--state-dir", help="where the sidecar keeps its key and config cache")
    p.add_argument(
        "--advertise-address",
        default="127.0.0.1",
        help="the address peers reach this sidecar's inbound port at",
    )
    p.add_argument("--drain-timeout", type=float, default=20.0,
                   help="seconds drain waits for requests and TCP connections (default 20)")
    p.add_argument("--hbone-idle-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="an outbound HBONE connection (to a peer's 15008) with no TCP "
                   "connection on it for this long is closed; the next one resumes its TLS "
                   "session (default 300)")
    p.add_argument("--hbone-max-streams", type=_max_streams, default=0, metavar="N",
                   help="concurrent CONNECT streams a peer may open on one inbound HBONE "
                   "connection (SETTINGS_MAX_CONCURRENT_STREAMS; peers open another connection "
                   "past it; default 4096)")
    p.add_argument(
        "--stream-idle-timeout",
        type=float,
        default=300.0,
        help="seconds a request may go without a byte either way before it is ended: 408 if "
        "no response has started, else a reset (Envoy's stream_idle_timeout; default 300, "
        "0 = never, as Istio's sidecars)",
    )
    p.add_argument("--no-access-log", action="store_true", help="turn off the access log")
    p.add_argument("--log-level", default="INFO")


def run(args: argparse.Namespace) -> int:
    from proxy.sidecar import SidecarOptions, run_sidecar

    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    labels = {}
    for item in args.label:
        k, sep, v = item.partition("=")
        if not sep:
            print(f"meshlet sidecar: --label {item!r} is not K=V", file=sys.stderr)
            return 2
        labels[k] = v
    if not args.config and not args.control_plane:
        import os

        args.control_plane = os.environ.get("MESHLET_CONTROL_PLANE") or None
        if not args.control_plane:
            print("meshlet sidecar: one of --config or --control-plane (or "
                  "MESHLET_CONTROL_PLANE) is required", file=sys.stderr)
            return 2
    if args.control_plane and not args.token_file:
        print("meshlet sidecar: --control-plane needs --token-file", file=sys.stderr)
        return 2
    if args.control_plane:
        problem = _token_file_problem(args.token_file, args.service)
        if problem:
            print(f"meshlet sidecar: {problem}", file=sys.stderr)
            return 2
    opts = SidecarOptions(
        service=args.service,
        namespace=args.namespace,
        version=args.version,
        labels=labels,
        app_port=args.app_port,
        app_host=args.app_host,
        outbound_port=args.outbound,
        inbound_port=args.inbound,
        hbone_port=args.hbone,
        admin_port=args.admin,
        outbound_bind=args.outbound_bind,
        inbound_bind=args.inbound_bind,
        admin_bind=args.admin_bind,
        config_file=args.config,
        control_plane=args.control_plane,
        token_file=args.token_file,
        cert_file=args.cert,
        key_file=args.key,
        ca_file=args.ca,
        state_dir=args.state_dir,
        advertise_address=args.advertise_address,
        drain_timeout=args.drain_timeout,
        hbone_idle_timeout=args.hbone_idle_timeout,
        hbone_max_streams=args.hbone_max_streams,
        stream_idle_timeout=args.stream_idle_timeout,
        access_log=not args.no_access_log,
    )
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a hard dependency; keep a clear message
        print("meshlet sidecar: uvloop is not installed", file=sys.stderr)
        return 1
    try:
        return uvloop.run(run_sidecar(opts))
    except Exception as exc:  # start-up errors: one clear line, not a traceback
        from control_plane.api.resources import InvalidConfig
        from proxy.identity.manager import IdentityError

        if isinstance(exc, InvalidConfig | OSError):
            print(f"meshlet sidecar: {exc}", file=sys.stderr)
            return 1
        if isinstance(exc, IdentityError):
            # a permanent refusal of the join (the manager retries transient ones itself)
            print(f"meshlet sidecar: cannot join: {exc}", file=sys.stderr)
            return 1
        raise


def _token_file_problem(path: str, service: str) -> str:
    """Why ``path`` cannot be a join token, with the fix; empty if it can. Checked before
    anything starts, so a wrong file is one line, not a traceback from deep in start-up."""
    from certs.join_token import InvalidToken, JoinToken

    fix = f"create one with `meshlet token create --service {service} > FILE`"
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        return f"--token-file {path}: cannot read it ({e.strerror}); {fix}"
    except UnicodeDecodeError:
        text = ""
    try:
        JoinToken.parse(text)
    except InvalidToken:
        return (f"--token-file {path} does not hold a join token (expected "
                f"meshlet1.<id>.<secret>.<ca-pin>, as `meshlet token create` prints); {fix}")
    return ""
