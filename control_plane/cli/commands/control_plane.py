"""``meshlet control-plane``: run the control plane (HTTPS API, config stream, CA)."""

from __future__ import annotations

import argparse
import errno
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
    g = parser.add_argument_group(
        "replicas on etcd",
        "With --store etcd://..., any number of control planes serve the same mesh: resources, "
        "the CA, join tokens, the admin token's hash and the registry are in etcd; each "
        "replica still needs its own --data-dir (a cache: the CA files, listen.addr).")
    g.add_argument("--store", metavar="URL", default=None,
                   help="sqlite (default: DIR/store.db, one control plane per data dir) or "
                        "etcd://HOST:PORT[,HOST:PORT...] (etcds:// for TLS); env MESHLET_STORE")
    g.add_argument("--etcd-cacert", metavar="FILE", help="CA bundle that signed etcd's "
                   "serving certificates (implies TLS)")
    g.add_argument("--etcd-cert", metavar="FILE", help="client certificate for etcd "
                   "(--client-cert-auth)")
    g.add_argument("--etcd-key", metavar="FILE", help="its private key")
    g.add_argument("--etcd-user", metavar="NAME", help="etcd user (etcd auth)")
    g.add_argument("--etcd-password-file", metavar="FILE",
                   help="file holding that user's password (env MESHLET_ETCD_PASSWORD)")
    g.add_argument("--etcd-prefix", metavar="PREFIX", default="/meshlet/",
                   help="key prefix of this mesh in etcd (default /meshlet/)")
    g.add_argument("--etcd-timeout", metavar="DURATION", default="3s",
                   help="bound on one etcd request, all endpoints tried (default 3s)")
    g.add_argument("--lease-ttl", metavar="DURATION", default="10s",
                   help="a dead replica's sidecars leave the registry after this (default 10s)")
    g.add_argument("--advertise-address", metavar="HOST", default=None,
                   help="where other replicas reach this one (default: the --listen host, or "
                        "this host's address when that is a wildcard; in Kubernetes the pod IP)")
    g.add_argument("--admin-token-file", metavar="FILE", default=None,
                   help="the mesh's admin token (e.g. from a Secret); default DIR/admin.token, "
                        "created on first start")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])


def run(args: argparse.Namespace) -> int:
    from control_plane.api.resources import parse_duration
    from control_plane.cli import output
    from control_plane.push import PushSettings
    from control_plane.server import default_data_dir, split_listen
    from control_plane.server import run as serve
    from control_plane.store import StoreUnavailable
    from control_plane.store.lock import DataDirBusy

    try:
        split_listen(args.listen)
        grace = parse_duration(args.grace_period)
        etcd = etcd_options(args)
        if args.admin_token_file:
            with open(args.admin_token_file, encoding="utf-8") as f:
                if not f.read().strip():
                    raise ValueError(f"--admin-token-file {args.admin_token_file} is empty")
        push = PushSettings(debounce=parse_duration(args.push_debounce),
                            debounce_max=parse_duration(args.push_debounce_max),
                            throttle=args.push_throttle)
        if push.throttle < 1:
            raise ValueError("--push-throttle must be at least 1")
        if push.debounce_max < push.debounce:
            raise ValueError("--push-debounce-max must not be shorter than --push-debounce")
    except OSError as e:
        output.error(f"--admin-token-file {args.admin_token_file}: {e.strerror}")
        return 2
    except ValueError as e:
        output.error(str(e))
        return 2
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from control_plane.memory import fix_mmap_threshold, start_debug_dumps

    fix_mmap_threshold()  # ~90 MB less RSS at 1,000 config streams (see the module)
    start_debug_dumps()  # MESHLET_MEMORY_DUMP_DIR: tracemalloc snapshots on SIGUSR2
    data_dir = args.data_dir or default_data_dir()
    try:
        serve(data_dir, args.listen, grace_s=grace, etcd=etcd, push=push,
              admin_token_file=args.admin_token_file, advertise_address=args.advertise_address)
    except DataDirBusy as e:
        output.error(f"refusing to start: {e}")
        return 1
    except StoreUnavailable as e:
        output.error(f"cannot start the control plane: {e}")
        return 1
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


def etcd_options(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The etcd flags, checked; None for the SQLite store."""
    import os

    from control_plane.api.resources import parse_duration
    from control_plane.etcd.client import parse_endpoints
    from control_plane.server import EtcdOptions

    store = args.store or os.environ.get("MESHLET_STORE") or "sqlite"
    if store == "sqlite":
        for flag in ("etcd_cacert", "etcd_cert", "etcd_key", "etcd_user", "etcd_password_file"):
            if getattr(args, flag):
                raise ValueError(f"--{flag.replace('_', '-')} needs --store etcd://...")
        return None
    endpoints = parse_endpoints(store)
    if bool(args.etcd_cert) != bool(args.etcd_key):
        raise ValueError("--etcd-cert and --etcd-key go together")
    password = os.environ.get("MESHLET_ETCD_PASSWORD")
    if args.etcd_password_file:
        try:
            with open(args.etcd_password_file, encoding="utf-8") as f:
                password = f.read().strip()
        except OSError as e:
            raise ValueError(f"--etcd-password-file {args.etcd_password_file}: {e.strerror}")
    if password and not args.etcd_user:
        raise ValueError("an etcd password needs --etcd-user")
    for flag in ("etcd_cacert", "etcd_cert", "etcd_key"):
        path = getattr(args, flag)
        if path and not os.path.isfile(path):
            raise ValueError(f"--{flag.replace('_', '-')} {path}: no such file")
    if args.etcd_cacert or args.etcd_cert:
        endpoints = [e.replace("http://", "https://", 1) for e in endpoints]
    ttl = parse_duration(args.lease_ttl)
    if ttl < 2:
        raise ValueError("--lease-ttl must be at least 2s")
    return EtcdOptions(endpoints, cacert=args.etcd_cacert, cert=args.etcd_cert,
                       key=args.etcd_key, user=args.etcd_user, password=password,
                       prefix=args.etcd_prefix if args.etcd_prefix.endswith("/")
                       else args.etcd_prefix + "/",
                       lease_ttl=int(ttl), timeout=parse_duration(args.etcd_timeout))
