"""``meshlet tap SERVICE``: stream live requests to and from a service, as ``linkerd viz tap``.

The control plane asks every sidecar of the service to tap (with the filter, a maximum rate and
an expiry) and streams their summaries back (``GET /v1/tap/{service}``, one JSON object a line).
A summary has the method, path, status, response flags, latency, route, upstream and the caller
and callee identities; the sidecar never puts a header value or a body in one, and this command
prints only those named fields, with control characters escaped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any
from urllib.parse import quote, urlencode

from control_plane.cli import client as cli_client
from control_plane.cli.client import CLIError, ExitStatus

NAME = "tap"
HELP = "stream live requests to and from a service (sampled; no bodies, no header values)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("service", metavar="SERVICE", help="the service (NAME or NAME.NS)")
    parser.add_argument("--namespace", metavar="NS", help="its namespace (default: default)")
    parser.add_argument("--path-prefix", metavar="PREFIX", default="",
                        help="only requests whose path starts with PREFIX")
    parser.add_argument("--method", metavar="METHOD", default="", help="only this method")
    parser.add_argument("--status", metavar="CODE", default="",
                        help="only this status (404) or class (5 for 5xx)")
    parser.add_argument("--max", type=int, default=0, metavar="N",
                        help="stop after N requests (default: no limit)")
    parser.add_argument("--duration", default="60s", metavar="DURATION",
                        help="stop after this long (default 60s, at most 1h)")
    parser.add_argument("--max-rate", type=float, default=100.0, metavar="RPS",
                        help="most requests per second each sidecar sends (default 100)")
    parser.add_argument("-o", "--output", choices=("text", "json"), default="text")
    cli_client.add_connection_arguments(parser)
    parser.epilog = cli_client.EXIT_CODES_EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


#: The only fields of a tap event this command ever prints.
FIELDS = ("ts", "direction", "workload", "method", "authority", "path", "status", "flags",
          "latency_ms", "route", "upstream", "upstream_cluster", "source", "destination", "mtls")


def _clean(v: Any) -> str:
    """A value as one printable token: control characters and spaces escaped."""
    s = str(v) if v not in (None, "") else "-"
    return "".join(c if c.isprintable() and c != " " else f"\\x{ord(c):02x}" for c in s)


def render_event(ev: dict) -> str:
    direction = "in " if ev.get("direction") == "inbound" else "out"
    return (
        f"{direction} {_clean(ev.get('method'))} {_clean(ev.get('authority'))}"
        f"{_clean(ev.get('path'))} :status={_clean(ev.get('status'))}"
        f" flags={_clean(ev.get('flags'))} latency={float(ev.get('latency_ms') or 0):.1f}ms"
        f" route={_clean(ev.get('route'))} upstream={_clean(ev.get('upstream'))}"
        f" src={_clean(ev.get('source'))} dst={_clean(ev.get('destination'))}"
        f" tls={'true' if ev.get('mtls') else 'false'} workload={_clean(ev.get('workload'))}"
    )


def render_line(msg: dict, fmt: str) -> str | None:
    kind = msg.get("type")
    if kind == "event":
        if fmt == "json":
            return json.dumps({k: msg[k] for k in FIELDS if k in msg}, separators=(",", ":"))
        return render_event(msg)
    if fmt == "json":
        return None
    if kind == "started":
        nodes = msg.get("sidecars") or []
        return f"# tapping {_clean(msg.get('service'))} on {len(nodes)} sidecar(s)"
    if kind == "end":
        return f"# {msg.get('events', 0)} request(s) shown, {msg.get('dropped', 0)} dropped " \
               "(over the rate)"
    return None


def _query(args: argparse.Namespace, seconds: float) -> str:
    q = {"duration": f"{seconds:g}", "max_rate": f"{args.max_rate:g}"}
    q.update({name: v for name, v in (
        ("namespace", args.namespace), ("path_prefix", args.path_prefix),
        ("method", args.method), ("status", args.status)) if v})
    if args.max:
        q["max"] = str(args.max)
    return urlencode(q)


async def _stream(c: cli_client.Client, path: str, fmt: str, timeout: float) -> int:
    import aiohttp

    headers = {"Authorization": f"Bearer {c.token()}"}
    t = aiohttp.ClientTimeout(total=None, sock_connect=c.timeout, sock_read=timeout)
    try:
        async with aiohttp.ClientSession(timeout=t) as s, s.get(
            c.url + path, headers=headers, ssl=c.ssl_context()
        ) as resp:
            if resp.status != 200:
                body = await resp.read()
                try:
                    msg = json.loads(body).get("error")
                except (ValueError, AttributeError):
                    msg = body.decode("utf-8", "replace")[:200]
                status = ExitStatus.AUTH if resp.status == 401 else ExitStatus.ERROR
                raise CLIError(msg or f"the control plane answered {resp.status}", status)
            async for raw in resp.content:
                try:
                    msg = json.loads(raw)
                except ValueError:
                    continue
                if not isinstance(msg, dict):
                    continue
                line = render_line(msg, fmt)
                if line is not None:
                    sys.stdout.write(line + "\n")
                    sys.stdout.flush()
    except aiohttp.ClientConnectorError as e:
        raise CLIError(f"cannot reach the control plane at {c.url}: {e.strerror or e}",
                       ExitStatus.UNREACHABLE)
    except (aiohttp.ClientError, TimeoutError) as e:
        raise CLIError(f"the tap stream from {c.url} broke: {e or type(e).__name__}",
                       ExitStatus.UNREACHABLE)
    return 0


@cli_client.command
def run(args: argparse.Namespace) -> int:
    from control_plane.api.resources import parse_duration

    try:
        seconds = float(parse_duration(args.duration))
        if not 0 < seconds <= 3600:
            raise ValueError("must be between 0 and 1h")
    except ValueError as e:
        raise CLIError(f"--duration {args.duration!r}: {e}", ExitStatus.USAGE)
    if args.max < 0 or args.max_rate <= 0:
        raise CLIError("--max must be >= 0 and --max-rate > 0", ExitStatus.USAGE)
    c = cli_client.Client(args)
    path = f"/v1/tap/{quote(args.service, safe='')}?{_query(args, seconds)}"
    try:
        # the server sends a line at least at the end; allow the whole duration plus slack
        return asyncio.run(_stream(c, path, args.output, seconds + 15))
    except KeyboardInterrupt:
        return 0
