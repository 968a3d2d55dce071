"""``meshlet iptables``: the init step that captures a pod's traffic into its sidecar (istio-init).

Runs once, as root (or with NET_ADMIN), in the pod's network namespace before the app starts;
``--dry-run`` prints what it would install, ``--cleanup`` removes it again. ``--hosts-file`` with
``--host NAME=IP`` writes the service names the app will call (the init step's DNS answer).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

NAME = "iptables"
HELP = "install (or --cleanup) the NAT rules redirecting a pod's TCP traffic to its sidecar"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from proxy.capture.iptables import DEFAULT_EXCLUDE_INBOUND

    p.add_argument("--outbound-port", "-p", type=int, default=15001,
                   help="the sidecar's outbound port outbound TCP is redirected to (default 15001)")
    p.add_argument("--inbound-port", "-z", type=int, default=15006,
                   help="the sidecar's inbound port inbound TCP is redirected to (default 15006)")
    p.add_argument("--proxy-uid", "-u", default="1337",
                   help="UID(s) of the sidecar, comma-separated; their traffic is never "
                        "captured (default 1337; the app must not run as it)")
    p.add_argument("--proxy-gid", "-g", default=None,
                   help="GID(s) of the sidecar, comma-separated (default: same as --proxy-uid)")
    p.add_argument("--inbound-ports", "-b", default="*",
                   help="inbound ports to capture: '*' (all, default), '' (none) or a list")
    p.add_argument("--exclude-inbound-ports", "-d",
                   default=",".join(map(str, DEFAULT_EXCLUDE_INBOUND)),
                   help="inbound ports never captured (default: the sidecar's own, "
                        f"{','.join(map(str, DEFAULT_EXCLUDE_INBOUND))})")
    p.add_argument("--include-outbound-cidrs", "-i", default="*",
                   help="destination ranges to capture: '*' (all, default), '' (none) or a list")
    p.add_argument("--exclude-outbound-cidrs", "-x", default="",
                   help="destination ranges never captured, comma-separated")
    p.add_argument("--exclude-outbound-ports", "-o", default="",
                   help="destination ports never captured, comma-separated")
    p.add_argument("--dry-run", action="store_true", help="print the rules; change nothing")
    p.add_argument("--format", choices=["restore", "commands"], default="restore",
                   help="--dry-run output: an iptables-restore file (default) or iptables commands")
    p.add_argument("--cleanup", action="store_true",
                   help="remove the rules (and only those) this command installs; idempotent")
    p.add_argument("--hosts-file", metavar="PATH",
                   help="also write --host entries into this hosts file (e.g. /etc/hosts, or "
                        "/etc/netns/<ns>/hosts for `ip netns exec`)")
    p.add_argument("--host", action="append", default=[], metavar="NAME=IP",
                   help="a service name and the address the app should dial for it; repeatable")
    p.add_argument("--namespace", default="default",
                   help="namespace used to expand short --host names (default: default)")
    p.add_argument("--skip-rules", action="store_true",
                   help="only write --hosts-file; leave iptables alone")
    p.add_argument("--iptables", default="iptables", help="the iptables binary (default iptables)")


def _fail(msg: str, status: int = 2) -> int:
    print(f"meshlet iptables: {msg}", file=sys.stderr)
    return status


def run(args: argparse.Namespace) -> int:
    from proxy.capture import iptables as cap

    try:
        cfg = cap.CaptureConfig(
            outbound_port=args.outbound_port, inbound_port=args.inbound_port,
            proxy_uids=cap.parse_ids(args.proxy_uid),
            proxy_gids=cap.parse_ids(args.proxy_gid if args.proxy_gid is not None
                                     else args.proxy_uid),
            inbound_ports=cap.parse_ports(args.inbound_ports),
            exclude_inbound_ports=cap.parse_ports(args.exclude_inbound_ports) or (),
            exclude_outbound_ports=cap.parse_ports(args.exclude_outbound_ports) or (),
            include_outbound_cidrs=cap.parse_cidrs(args.include_outbound_cidrs),
            exclude_outbound_cidrs=cap.parse_cidrs(args.exclude_outbound_cidrs) or (),
        )
        entries = []
        for item in args.host:
            name, sep, ip = item.partition("=")
            if not sep or not name or not ip:
                raise ValueError(f"--host {item!r} is not NAME=IP")
            entries.append((name.strip(), ip.strip()))
        block = cap.hosts_block(entries, args.namespace) if entries else ""
    except ValueError as e:
        return _fail(str(e))
    if entries and not args.hosts_file:
        return _fail("--host needs --hosts-file")
    ipt = args.iptables
    base = os.path.dirname(ipt)
    save = os.path.join(base, "iptables-save") if base else "iptables-save"
    restore = os.path.join(base, "iptables-restore") if base else "iptables-restore"

    if args.dry_run:
        if not args.skip_rules:
            if args.cleanup:
                print(f"# removes every {cap.PREFIX}* chain of the nat table and the jumps into it")
            elif args.format == "restore":
                sys.stdout.write(cap.restore_file(cfg))
            else:
                for cmd in cap.commands(cfg, ipt):
                    print(shlex.join(cmd))
        if block and not args.cleanup:
            print(f"# {args.hosts_file}:")
            sys.stdout.write(block)
        return 0

    try:
        if not args.skip_rules:
            if args.cleanup:
                removed = cap.cleanup(iptables=ipt, save=save)
                print(f"meshlet iptables: removed {len(removed)} rules/chains" if removed
                      else "meshlet iptables: nothing to remove")
            else:
                cap.apply(cfg, iptables=ipt, restore=restore, save=save)
                print(f"meshlet iptables: outbound TCP -> {cfg.outbound_port}, "
                      f"inbound TCP -> {cfg.inbound_port}, proxy uid {','.join(cfg.proxy_uids)} "
                      "excluded")
        if args.hosts_file and (block or args.cleanup):
            _write_hosts(args.hosts_file, block)
    except cap.CaptureError as e:
        return _fail(str(e), 1)
    except OSError as e:
        return _fail(f"{args.hosts_file}: {e.strerror or e}", 1)
    return 0


def _write_hosts(path: str, block: str) -> None:
    from proxy.capture.iptables import merge_hosts

    try:
        with open(path, encoding="utf-8") as f:
            existing = f.read()
    except FileNotFoundError:
        existing = ""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    text = merge_hosts(existing, block)
    # /etc/hosts is often a bind mount (containers): rewrite in place, never replace the inode
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
