"""``meshlet check``: pre-flight and health checks, each failure with a hint (``linkerd check``).

Checks run in order; a fatal failure (no control plane, untrusted TLS, bad token) stops the
ones that depend on it. Exit status 0 when every check passes, 3 otherwise.
"""

from __future__ import annotations

import argparse
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from control_plane.cli import client as cli_client
from control_plane.cli.client import CLIError, ExitStatus

NAME = "check"
HELP = "check the control plane, its credentials, its store and every sidecar; hint per failure"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--min-cert-validity", metavar="DURATION", default="1h",
                        help="a sidecar certificate expiring sooner fails (default 1h)")
    parser.add_argument("--min-ca-validity", metavar="DURATION", default="720h",
                        help="a CA root expiring sooner fails (default 720h = 30 days)")
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table")
    cli_client.add_connection_arguments(parser)
    parser.epilog = cli_client.EXIT_CODES_EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


SETTLE_S = 3.0


class CheckFailed(Exception):
    def __init__(self, detail: str, hint: str = "") -> None:
        super().__init__(detail)
        self.hint = hint


@dataclass
class Check:
    description: str
    hint: str
    fn: Callable[[], str | None]  # returns a detail line, raises CheckFailed
    fatal: bool = False


@dataclass
class Result:
    description: str
    status: str  # ok | fail
    detail: str = ""
    hint: str = ""

    def to_dict(self) -> dict:
        return {"description": self.description, "result": self.status,
                "detail": self.detail, "hint": self.hint}


class Checker:
    def __init__(self, args: argparse.Namespace) -> None:
        from control_plane.api.resources import parse_duration

        self.args = args
        self.client = cli_client.Client(args)
        self.min_cert = parse_duration(args.min_cert_validity)
        self.min_ca = parse_duration(args.min_ca_validity)
        self.status: dict = {}
        self.proxies: dict = {}

    def checks(self) -> list[Check]:
        c = self.client
        return [
            Check("control plane is reachable",
                  f"start it with `meshlet control-plane --data-dir {c.data_dir}`, or point "
                  "--control-plane / MESHLET_CONTROL_PLANE at it", self.reachable, fatal=True),
            Check("control plane certificate is trusted",
                  "use the --data-dir of that control plane (its ca/trust-bundle.pem) or "
                  "--ca-file", self.tls_trusted, fatal=True),
            Check("admin token is accepted",
                  "use the admin.token from the control plane's data dir (--data-dir or "
                  "--token-file)", self.token_ok, fatal=True),
            Check("admin token file is private",
                  "chmod 600 the token file: anyone who reads it controls the mesh",
                  self.token_private),
            Check("store is writable",
                  "check free space and permissions of store.db in the control plane's data dir",
                  self.store_writable),
            Check("CA roots are valid long enough",
                  "rotate the CA root before it expires", self.ca_valid),
            Check("every sidecar acknowledged the current config",
                  "see `meshlet proxy-status`; a NACK names the field the sidecar rejected, fix "
                  "it and `meshlet apply` again", self.sidecars_acked),
            Check("sidecar certificates are not near expiry",
                  "a sidecar renews at half its certificate's lifetime; one near expiry cannot "
                  "reach the CA: see its log and `meshlet proxy-config certs SIDECAR`",
                  self.certs_fresh),
        ]

    def reachable(self) -> str | None:
        u = urlsplit(self.client.url)
        port = u.port or (443 if u.scheme == "https" else 80)
        try:
            with socket.create_connection((u.hostname or "127.0.0.1", port), timeout=5):
                pass
        except OSError as e:
            raise CheckFailed(f"{self.client.url}: {e.strerror or e}")
        return self.client.url

    def tls_trusted(self) -> str | None:
        if not self.client.url.startswith("https://"):
            raise CheckFailed(f"{self.client.url} is not HTTPS")
        try:
            self.client.request("GET", "/healthz", auth=False)
        except CLIError as e:
            raise CheckFailed(str(e))
        return str(self.client.ca_file())

    def token_ok(self) -> str | None:
        try:
            self.status = self.client.request("GET", "/v1/status")
            self.proxies = self.client.request("GET", "/v1/proxies")
        except CLIError as e:
            raise CheckFailed(str(e))
        return self.client.token_source

    def token_private(self) -> str | None:
        import os
        import stat

        path = self.client.token_path
        if path is None:
            return None  # given in MESHLET_TOKEN itself
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o077:
            raise CheckFailed(f"{path} has mode {mode:04o}")
        return None

    def store_writable(self) -> str | None:
        if not self.status.get("store_writable"):
            raise CheckFailed("the control plane cannot open a write transaction on its store")
        return f"revision {self.status.get('revision')}"

    def ca_valid(self) -> str | None:
        roots = (self.status.get("ca") or {}).get("roots") or []
        if not roots:
            raise CheckFailed("the control plane reports no CA root")
        now = time.time()
        soonest = min(r["not_after"] for r in roots)
        if soonest - now < self.min_ca:
            from control_plane.cli import output

            raise CheckFailed(f"a CA root expires {output.expiry(soonest, now)}")
        return None

    def sidecars_acked(self) -> str | None:
        from control_plane.cli.commands.proxy_status import sync_state

        # A push in flight is not a failure: STALE / NOT SENT get a few seconds to settle
        # (linkerd's retryDeadline); a NACK fails at once.
        deadline = time.monotonic() + SETTLE_S
        while True:
            current = self.proxies.get("snapshot_version", "")
            states = [(p["node_id"], sync_state(p, current))
                      for p in self.proxies.get("proxies", [])]
            bad = [f"{node}: {state}" for node, state in states if state != "SYNCED"]
            settling = any(state in ("STALE", "NOT SENT") for _, state in states)
            if not bad or not settling or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
            try:
                self.proxies = self.client.request("GET", "/v1/proxies")
            except CLIError as e:
                raise CheckFailed(str(e))
        if bad:
            raise CheckFailed("; ".join(bad))
        n = len(self.proxies.get("proxies", []))
        return f"{n} sidecar{'s' if n != 1 else ''} on {current or '-'}"

    def certs_fresh(self) -> str | None:
        from control_plane.cli import output

        now = time.time()
        bad = [f"{p['node_id']}: expires {output.expiry(p['cert_expiry'], now)}"
               for p in self.proxies.get("proxies", [])
               if p.get("cert_expiry") and p["cert_expiry"] - now < self.min_cert]
        if bad:
            raise CheckFailed("; ".join(bad))
        return None

    def run(self) -> list[Result]:
        results: list[Result] = []
        for check in self.checks():
            try:
                check.fn()
            except CheckFailed as e:
                results.append(Result(check.description, "fail", str(e), check.hint))
                if check.fatal:
                    break
                continue
            results.append(Result(check.description, "ok"))
        return results


def render(results: list[Result]) -> str:
    from control_plane.cli import output

    lines = [output.check_line(r.status, r.description, r.hint, r.detail) for r in results]
    ok = all(r.status == "ok" for r in results)
    lines += ["", f"Status check results are {output.OK if ok else output.FAIL}"]
    return "\n".join(lines)


@cli_client.command
def run(args: argparse.Namespace) -> int:
    from control_plane.cli import output

    try:
        checker = Checker(args)
    except ValueError as e:
        raise CLIError(str(e), ExitStatus.USAGE)
    results = checker.run()
    ok = all(r.status == "ok" for r in results)
    if args.output == "json":
        output.out(output.dump({"success": ok, "checks": [r.to_dict() for r in results]},
                               "json"))
    else:
        output.out(render(results))
    return 0 if ok else int(ExitStatus.CHECK_FAILED)
