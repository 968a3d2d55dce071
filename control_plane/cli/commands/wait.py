"""``meshlet wait``: block until the sidecar beside us is ready (``pilot-agent wait``).

An app's entrypoint runs ``meshlet wait && exec app`` so the app takes no traffic and makes no
call before its sidecar has its listeners, config and certificate. Exit 0 when
``/healthz/ready`` answers 200, 1 on timeout (with the last answer seen), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request

NAME = "wait"
HELP = "wait until the local sidecar's /healthz/ready answers 200 (exit 1 on timeout)"

DEFAULT_ADMIN = "http://127.0.0.1:15000"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--admin", default=DEFAULT_ADMIN, metavar="URL",
                   help=f"the sidecar's admin address (default {DEFAULT_ADMIN}); a bare "
                        "HOST:PORT or PORT works too")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="give up after this long (default 60)")
    p.add_argument("--interval", type=float, default=0.2, metavar="SECONDS",
                   help="time between polls (default 0.2)")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing on success")


def ready_url(admin: str) -> str:
    admin = admin.strip().rstrip("/")
    if admin.isdigit():
        admin = f"127.0.0.1:{admin}"
    if "://" not in admin:
        admin = "http://" + admin
    return admin + "/healthz/ready"


def poll(url: str, timeout: float) -> tuple[int, str]:
    """One probe: (status, body's first line); status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read(200).decode(errors="replace").strip()
    except urllib.error.HTTPError as e:
        body = e.read(200).decode(errors="replace").strip()
        return e.code, body
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return 0, str(reason)


def run(args: argparse.Namespace) -> int:
    if args.timeout < 0 or args.interval <= 0:
        print("meshlet wait: --timeout must be >= 0 and --interval > 0", file=sys.stderr)
        return 2
    url = ready_url(args.admin)
    start = time.monotonic()
    deadline = start + args.timeout
    status, last = 0, "no answer yet"
    while True:
        left = deadline - time.monotonic()
        status, last = poll(url, max(0.1, min(2.0, left)))
        if status == 200:
            if not args.quiet:
                print(f"meshlet wait: sidecar ready after {time.monotonic() - start:.1f}s")
            return 0
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(args.interval, left))
    seen = f"HTTP {status}: {last}" if status else f"no answer ({last})"
    print(f"meshlet wait: the sidecar at {url} is not ready after {args.timeout:g}s; "
          f"last: {seen}", file=sys.stderr)
    return 1
