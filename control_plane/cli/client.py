"""The CLI's client of the operator API: where the control plane is, its credentials, exit codes.

Every command that talks to the control plane goes through :class:`Client`, which turns every
failure into a :class:`CLIError` with one readable line and a distinct exit status
(:class:`ExitStatus`). Commands wrap ``run`` in :func:`command` so those errors become a line on
stderr and the exit status, in one place (httpie's ``raw_main``).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import ssl
import sys
from collections.abc import Callable
from enum import IntEnum
from pathlib import Path
from typing import Any

DEFAULT_URL = "https://127.0.0.1:15012"
# Files the CA keeps its root in, in the order they are looked for in the data dir.
CA_FILES = ("ca/trust-bundle.pem",)


class ExitStatus(IntEnum):
    SUCCESS = 0
    ERROR = 1  # the request failed: invalid configuration, not found, server error
    USAGE = 2  # bad arguments, a file that cannot be read
    CHECK_FAILED = 3  # `meshlet check` found a problem
    AUTH = 4  # the control plane rejected the admin token, or there is none
    UNREACHABLE = 5  # no answer from the control plane
    TLS = 6  # the control plane's certificate is not trusted
    INTERRUPTED = 130


EXIT_CODES_EPILOG = """exit status:
  0  success
  1  the request failed (invalid configuration, not found, server error)
  2  usage error or unreadable file
  3  a check failed (meshlet check)
  4  missing or rejected admin token
  5  control plane unreachable
  6  control plane certificate not trusted"""


class CLIError(Exception):
    def __init__(self, message: str, status: ExitStatus = ExitStatus.ERROR,
                 details: list[str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.details = details or []


def command(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Decorate a command's ``run``: print a CLIError as one line on stderr, return its status."""

    @functools.wraps(run)
    def wrapper(args: argparse.Namespace) -> int:
        from control_plane.cli import output

        try:
            return int(run(args))
        except CLIError as e:
            output.error(str(e), e.details)
            return int(e.status)

    return wrapper


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("control plane connection")
    g.add_argument("--control-plane", metavar="URL[,URL...]", default=None,
                   help="control plane URL, or several replicas' comma-separated, tried in "
                        "order while unreachable (env MESHLET_CONTROL_PLANE; default: the "
                        "address the control plane of --data-dir listens on, else "
                        f"{DEFAULT_URL})")
    g.add_argument("--data-dir", metavar="DIR", default=None,
                   help="where the admin token and the CA root are (env MESHLET_DATA_DIR; "
                        "default ~/.meshlet)")
    g.add_argument("--token-file", metavar="FILE", default=None,
                   help="admin token file (env MESHLET_TOKEN: the token or a file holding it)")
    g.add_argument("--ca-file", metavar="FILE", default=None,
                   help="CA certificate(s) to trust (default: the CA root in --data-dir)")
    g.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                   help="per-request timeout (default 10)")


def known_kind(name: str, *, allow_all: bool = False) -> str:
    """The canonical kind for ``name`` (``vs``, ``virtualservices`` ...), or an error that lists
    every kind and its short name, checked here before anything is sent."""
    from control_plane.store import KINDS, canonical_kind

    if allow_all and name.lower() == "all":
        return "all"
    kind = canonical_kind(name)
    if kind is None:
        known = ", ".join(f"{k} ({names[-1]})" for k, names in KINDS.items())
        raise CLIError(f"unknown kind {name!r}; the kinds are {known}"
                       + (", or all" if allow_all else ""))
    return kind


def data_dir(args: argparse.Namespace) -> Path:
    d = getattr(args, "data_dir", None) or os.environ.get("MESHLET_DATA_DIR") or "~/.meshlet"
    return Path(d).expanduser()


class Client:
    """A synchronous facade over aiohttp for one CLI invocation."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.data_dir = data_dir(args)
        self.urls = self._urls(args)
        self.url = self.urls[0]
        self.timeout = float(getattr(args, "timeout", 10.0) or 10.0)
        self._token_arg = getattr(args, "token_file", None)
        self._ca_arg = getattr(args, "ca_file", None)
        self._token: str | None = None
        self.token_source = ""
        self.token_path: Path | None = None  # the file the token came from, if any

    def _urls(self, args: argparse.Namespace) -> list[str]:
        spec = getattr(args, "control_plane", None) or os.environ.get("MESHLET_CONTROL_PLANE")
        if not spec:
            try:
                addr = (self.data_dir / "listen.addr").read_text().strip()
                spec = f"https://{addr}"
            except OSError:
                spec = DEFAULT_URL
        return split_urls(spec) or [DEFAULT_URL]

    # -- credentials -----------------------------------------------------------------------
    def token(self) -> str:
        if self._token is not None:
            return self._token
        env = os.environ.get("MESHLET_TOKEN")
        if self._token_arg:
            path, self.token_source = Path(self._token_arg), f"--token-file {self._token_arg}"
        elif env:
            if not os.path.isfile(env):
                self._token, self.token_source = env.strip(), "MESHLET_TOKEN"
                return self._token
            path, self.token_source = Path(env), f"MESHLET_TOKEN={env}"
        else:
            path = self.data_dir / "admin.token"
            self.token_source = str(path)
        self.token_path = path
        try:
            self._token = path.read_text().strip()
        except FileNotFoundError:
            if path == self.data_dir / "admin.token" and not self.data_dir.exists():
                # the usual first-hour case: no control plane was ever started with this dir
                raise CLIError(
                    f"no control plane has been started with the data dir {self.data_dir} here "
                    "(it holds the admin token): start one with `meshlet control-plane`, or "
                    "point at its data dir with --data-dir DIR or MESHLET_DATA_DIR (`meshlet "
                    "demo` prints its own), or give the admin token with --token-file FILE",
                    ExitStatus.AUTH,
                ) from None
            raise CLIError(
                f"no admin token: cannot read {path} (No such file or directory); "
                "pass --data-dir DIR of the control plane or --token-file FILE",
                ExitStatus.AUTH,
            ) from None
        except OSError as e:
            raise CLIError(
                f"no admin token: cannot read {path} ({e.strerror}); "
                "pass --data-dir DIR of the control plane or --token-file FILE",
                ExitStatus.AUTH,
            )
        if not self._token:
            raise CLIError(f"the admin token file {path} is empty", ExitStatus.AUTH)
        return self._token

    def ca_file(self) -> Path | None:
        if self._ca_arg:
            return Path(self._ca_arg)
        for name in CA_FILES:
            p = self.data_dir / name
            if p.is_file():
                return p
        return None

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.url.startswith("https://"):
            return False
        ca = self.ca_file()
        if ca is None:
            raise CLIError(
                f"no CA root to trust the control plane with: none in {self.data_dir}; "
                "pass --data-dir DIR of the control plane or --ca-file FILE",
                ExitStatus.TLS,
            )
        try:
            return ssl.create_default_context(cafile=str(ca))
        except (OSError, ssl.SSLError) as e:
            raise CLIError(f"cannot load the CA root {ca}: {e}", ExitStatus.TLS)

    # -- requests --------------------------------------------------------------------------
    def request(self, method: str, path: str, *, json_body: Any = None, auth: bool = True,
                text: bool = False) -> Any:
        """Call the operator API; returns the decoded JSON (or text) of a 2xx answer."""
        headers = {"Authorization": f"Bearer {self.token()}"} if auth else {}
        ssl_ctx = self.ssl_context()
        status, body = asyncio.run(self._failover(method, path, headers, json_body, ssl_ctx))
        if status == 401:
            raise CLIError(
                f"the control plane at {self.url} rejected the admin token from "
                f"{self.token_source}; use the admin.token of that control plane's data dir",
                ExitStatus.AUTH,
            )
        if text and 200 <= status < 300:
            return body.decode("utf-8", "replace")
        try:
            data = json.loads(body) if body else {}
        except ValueError:
            data = {"error": body.decode("utf-8", "replace")[:200]}
        if not 200 <= status < 300:
            msg = data.get("error") if isinstance(data, dict) else None
            details = data.get("errors", []) if isinstance(data, dict) else []
            raise CLIError(msg or f"the control plane answered {status}", ExitStatus.ERROR,
                           [str(d) for d in details])
        return data

    async def _failover(self, method: str, path: str, headers: dict, body: Any,
                        ssl_ctx: ssl.SSLContext | bool) -> tuple[int, bytes]:
        """The first replica that answers (any replica serves any request). Only an
        unreachable one is skipped: an answer, even an error, is the answer."""
        unreachable: list[str] = []
        for url in self.urls:
            self.url = url
            try:
                return await self._request(method, path, headers, body, ssl_ctx)
            except CLIError as e:
                if e.status != ExitStatus.UNREACHABLE or url == self.urls[-1]:
                    if unreachable:
                        e.details = [*e.details, *unreachable]
                    raise
                unreachable.append(f"also tried {url}: {e}")
        raise AssertionError("no control-plane URL")  # pragma: no cover - urls is never empty

    async def _request(self, method: str, path: str, headers: dict, body: Any,
                       ssl_ctx: ssl.SSLContext | bool) -> tuple[int, bytes]:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as s, s.request(
                method, self.url + path, headers=headers, json=body, ssl=ssl_ctx
            ) as resp:
                return resp.status, await resp.read()
        except aiohttp.ClientConnectorCertificateError as e:
            raise CLIError(
                f"the control plane at {self.url} presented a certificate not issued by the "
                f"CA in {self.ca_file()}: {e.certificate_error}",
                ExitStatus.TLS,
            )
        except aiohttp.ClientSSLError as e:
            raise CLIError(f"TLS handshake with {self.url} failed: {e}", ExitStatus.TLS)
        except aiohttp.ClientConnectorError as e:
            raise CLIError(
                f"cannot reach the control plane at {self.url}: {e.strerror or e}; "
                "is `meshlet control-plane` running? (--control-plane URL)",
                ExitStatus.UNREACHABLE,
            )
        except (aiohttp.ClientError, TimeoutError) as e:
            raise CLIError(
                f"no answer from the control plane at {self.url}: {e or type(e).__name__}",
                ExitStatus.UNREACHABLE,
            )


def split_urls(spec: str) -> list[str]:
    """``https://a:15012,b:15012`` -> both URLs, ``https://`` assumed, no trailing slash."""
    out = []
    for part in spec.split(","):
        url = part.strip()
        if not url:
            continue
        if "://" not in url:
            url = "https://" + url
        out.append(url.rstrip("/"))
    return out


def read_source(path: str) -> str:
    """The text of ``path`` (``-`` is stdin), or a usage error naming it."""
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise CLIError(f"cannot read {path}: {e.strerror}", ExitStatus.USAGE)
