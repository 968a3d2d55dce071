"""A small etcd v3 client over etcd's own JSON gateway (``/v3/...``), on aiohttp.

Why the gateway and not a gRPC client library: every etcd v3 server (3.4 here, Debian's
``etcd-server``) serves the same API as JSON on its client port, so the control plane needs no
new dependency (aiohttp is already its HTTP stack) and nothing generated from ``.proto`` files
that must match the installed protobuf. The Python gRPC clients were weighed and left: ``etcd3``
is unmaintained since 2020 and breaks on protobuf >= 4; ``aetcd`` is maintained but pins its own
generated stubs and grpcio, one more native stack in a process that already has two event-loop
integrations. What the control plane uses is small: range, put, delete, txn, lease grant /
keep-alive / revoke, watch (a newline-delimited JSON stream) and authenticate.

Endpoints: a request goes to the current endpoint and, if it cannot be reached or answers that
it has no leader, to the next one; every request is bounded by ``timeout`` in total, so a dead
cluster is a quick :class:`EtcdUnavailable`, never a hang. Keys and values are bytes (the
gateway's base64 is hidden here); int64 fields arrive as strings and are converted.

TLS (``ssl_context``: the etcd CA, and the client certificate etcd's ``--client-cert-auth``
requires) and etcd auth (``user``/``password``: a token from ``/v3/auth/authenticate``, renewed
when etcd says it is invalid) are supported.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from control_plane.store.base import StoreUnavailable

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 3.0
# etcd's default --max-request-bytes is 1.5 MiB, and base64 plus JSON grow a batch of events
# well past it; this only bounds memory against a broken stream.
MAX_WATCH_MESSAGE = 64 * 1024 * 1024


class EtcdUnavailable(StoreUnavailable):
    """No endpoint answered (down, no quorum, timeout)."""


class EtcdError(StoreUnavailable):
    """etcd answered with an error that another endpoint would answer too (auth, bad request)."""


class WatchCompacted(Exception):
    """The watch's start revision was compacted: reload everything, then watch again."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted up to {compact_revision}")
        self.compact_revision = compact_revision


def b64(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: bytes) -> bytes:
    """The range end that selects every key starting with ``prefix`` (etcd's ``WithPrefix``)."""
    p = bytearray(prefix)
    for i in range(len(p) - 1, -1, -1):
        if p[i] < 0xFF:
            p[i] += 1
            return bytes(p[: i + 1])
    return b"\0"


@dataclass(frozen=True, slots=True)
class KV:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def from_json(cls, d: dict) -> KV:
        return cls(
            unb64(d.get("key")),
            unb64(d.get("value")),
            int(d.get("create_revision") or 0),
            int(d.get("mod_revision") or 0),
            int(d.get("version") or 0),
            int(d.get("lease") or 0),
        )


@dataclass(frozen=True, slots=True)
class Event:
    type: str  # PUT | DELETE
    kv: KV


def parse_endpoints(spec: str) -> list[str]:
    """``etcd://h1:2379,h2:2379`` (plain) or ``etcds://...`` (TLS) -> base URLs."""
    scheme, sep, rest = spec.partition("://")
    if not sep or scheme not in ("etcd", "etcds", "http", "https"):
        raise ValueError(f"--store {spec!r}: expected etcd://HOST:PORT[,HOST:PORT...]")
    http = "https" if scheme in ("etcds", "https") else "http"
    out = []
    for hp in rest.strip("/").split(","):
        hp = hp.strip()
        host, sep, port = hp.rpartition(":")
        if not hp or not sep or not port.isdigit() or not host:
            raise ValueError(f"--store {spec!r}: {hp!r} is not HOST:PORT")
        out.append(f"{http}://{hp}")
    return out


class EtcdClient:
    def __init__(
        self,
        endpoints: list[str],
        *,
        ssl_context: ssl.SSLContext | None = None,
        user: str | None = None,
        password: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoints")
        self.endpoints = list(endpoints)
        if ssl_context is None and any(e.startswith("https://") for e in endpoints):
            ssl_context = ssl.create_default_context()
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else False
        self._user, self._password = user, password
        self.timeout = timeout
        self._current = 0
        self._token: str | None = None
        self._session: aiohttp.ClientSession | None = None

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=0)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- transport -------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        return {"Authorization": self._token} if self._token else {}

    async def _authenticate(self, base: str) -> None:
        async with self._sess().post(
            f"{base}/v3/auth/authenticate",
            json={"name": self._user, "password": self._password or ""},
            timeout=aiohttp.ClientTimeout(total=self.timeout),
        ) as resp:
            data = await resp.json(content_type=None)
            if resp.status != 200 or "token" not in data:
                raise EtcdError(f"etcd refused user {self._user!r}: {_message(data)}")
            self._token = str(data["token"])

    async def call(self, path: str, body: dict) -> dict:
        """POST ``body`` to ``/v3/<path>`` on the first endpoint that answers."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        errors: list[str] = []
        reauthed = False
        n = len(self.endpoints)
        i = 0
        # Round after round over the endpoints until the deadline: a cluster electing a new
        # leader answers "no leader" for about an election timeout, then serves again.
        refused = 0  # endpoints in a row that refused the connection: down, not slow
        while True:
            if refused >= 3 * n:
                break  # every member refused three rounds running: answer now, do not wait
            if i and i % n == 0:
                await asyncio.sleep(0.05)
            base = self.endpoints[(self._current + i) % n]
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                if self._user and self._token is None:
                    await self._authenticate(base)
                async with self._sess().post(
                    f"{base}/v3/{path}", json=body, headers=self._headers(),
                    timeout=aiohttp.ClientTimeout(total=left),
                ) as resp:
                    data = await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                errors.append(f"{base}: {e or type(e).__name__}")
                refused = refused + 1 if isinstance(e, aiohttp.ClientConnectorError) else 0
                i += 1
                continue
            refused = 0
            if resp.status == 200 and "error" not in data:
                self._current = (self._current + i) % n
                return data
            msg = _message(data)
            if self._user and not reauthed and ("token" in msg or "auth" in msg):
                self._token, reauthed = None, True  # expired simple token: log in again
                continue
            if _retryable(msg):
                errors.append(f"{base}: {msg}")
                i += 1
                continue
            raise EtcdError(f"etcd {path}: {msg}")
        errors = list(dict.fromkeys(errors))[-n:]  # the last round, once each
        raise EtcdUnavailable("etcd is unavailable: " + ("; ".join(errors) or "timed out"))

    # -- KV --------------------------------------------------------------------------------
    async def range(
        self, key: bytes, range_end: bytes | None = None, *, revision: int = 0,
        serializable: bool = False,
    ) -> tuple[int, list[KV]]:
        body: dict[str, Any] = {"key": b64(key)}
        if range_end is not None:
            body["range_end"] = b64(range_end)
        if revision:
            body["revision"] = str(revision)
        if serializable:
            body["serializable"] = True
        data = await self.call("kv/range", body)
        return _rev(data), [KV.from_json(kv) for kv in data.get("kvs", [])]

    async def get_prefix(self, prefix: bytes) -> tuple[int, list[KV]]:
        return await self.range(prefix, prefix_end(prefix))

    async def get(self, key: bytes) -> KV | None:
        _, kvs = await self.range(key)
        return kvs[0] if kvs else None

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        return _rev(await self.call("kv/put", body))

    async def delete(self, key: bytes, range_end: bytes | None = None) -> int:
        body: dict[str, Any] = {"key": b64(key)}
        if range_end is not None:
            body["range_end"] = b64(range_end)
        return _rev(await self.call("kv/deleterange", body))

    async def txn(self, compare: list[dict], success: list[dict],
                  failure: list[dict] | None = None) -> tuple[bool, int, list[dict]]:
        """(succeeded, revision, responses). Build operands with the helpers below."""
        data = await self.call(
            "kv/txn", {"compare": compare, "success": success, "failure": failure or []}
        )
        return bool(data.get("succeeded")), _rev(data), list(data.get("responses") or [])

    # -- leases ----------------------------------------------------------------------------
    async def lease_grant(self, ttl: int) -> int:
        data = await self.call("lease/grant", {"TTL": str(ttl)})
        return int(data["ID"])

    async def lease_keepalive(self, lease: int) -> int:
        """Renew once; returns the TTL left (<= 0: the lease is gone)."""
        data = await self.call("lease/keepalive", {"ID": str(lease)})
        result = data.get("result", data)
        return int(result.get("TTL") or 0)

    async def lease_revoke(self, lease: int) -> None:
        try:
            await self.call("kv/lease/revoke", {"ID": str(lease)})
        except EtcdError:
            pass  # already gone

    # -- watch -----------------------------------------------------------------------------
    async def watch(self, key: bytes, range_end: bytes | None,
                    start_revision: int) -> AsyncIterator[tuple[int, list[Event]]]:
        """Yield (revision, events) from ``start_revision`` on, until the stream breaks (then
        :class:`EtcdUnavailable`: the caller reconnects from the last revision + 1)."""
        req: dict[str, Any] = {"key": b64(key), "start_revision": str(start_revision)}
        if range_end is not None:
            req["range_end"] = b64(range_end)
        n = len(self.endpoints)
        errors = []
        for i in range(n):
            base = self.endpoints[(self._current + i) % n]
            try:
                if self._user and self._token is None:
                    await self._authenticate(base)
                # hasleader: the member cancels the watch if it loses its leader (partitioned),
                # rather than leave us waiting for events that will never come.
                headers = {**self._headers(), "Grpc-Metadata-hasleader": "true"}
                resp = await self._sess().post(
                    f"{base}/v3/watch", json={"create_request": req}, headers=headers,
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout),
                )
            except (aiohttp.ClientError, TimeoutError) as e:
                errors.append(f"{base}: {e or type(e).__name__}")
                continue
            break
        else:
            raise EtcdUnavailable("etcd watch: " + "; ".join(errors))
        buf = bytearray()

        async def next_line() -> bytes:
            # Not StreamReader.readline: its line limit (128 KiB) is far below what one watch
            # message holds after a large apply (etcd batches up to its request size limit).
            while True:
                i = buf.find(b"\n")
                if i >= 0:
                    line = bytes(buf[:i])
                    del buf[: i + 1]
                    return line
                chunk = await resp.content.readany()
                if not chunk:
                    return bytes(buf)
                buf.extend(chunk)
                if len(buf) > MAX_WATCH_MESSAGE:
                    raise EtcdUnavailable(f"etcd watch on {base}: message over "
                                          f"{MAX_WATCH_MESSAGE} bytes")

        try:
            if resp.status != 200:
                raise EtcdUnavailable(f"etcd watch on {base}: HTTP {resp.status}")
            # The first message (created) arrives at once; a member without quorum stays silent.
            first = True
            while True:
                if first:
                    async with asyncio.timeout(self.timeout):
                        line = await next_line()
                    first = False
                else:
                    line = await next_line()
                if not line:
                    raise EtcdUnavailable(f"etcd watch on {base} ended")
                msg = json.loads(line)
                if "error" in msg:
                    raise EtcdUnavailable(f"etcd watch on {base}: {_message(msg['error'])}")
                result = msg.get("result", {})
                compact = int(result.get("compact_revision") or 0)
                if compact:
                    raise WatchCompacted(compact)
                if result.get("canceled"):
                    raise EtcdUnavailable(f"etcd watch canceled: {result.get('cancel_reason')}")
                events = [
                    Event(str(ev.get("type") or "PUT"), KV.from_json(ev.get("kv", {})))
                    for ev in result.get("events", [])
                ]
                yield _rev(result), events
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise EtcdUnavailable(f"etcd watch on {base}: {e or type(e).__name__}") from None
        finally:
            resp.release()


# -- txn operands -----------------------------------------------------------------------------
def cmp_mod(key: bytes, mod_revision: int) -> dict:
    return {"key": b64(key), "result": "EQUAL", "target": "MOD", "mod_revision": str(mod_revision)}


def cmp_absent(key: bytes) -> dict:
    return {"key": b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": "0"}


def cmp_value(key: bytes, value: bytes) -> dict:
    return {"key": b64(key), "result": "EQUAL", "target": "VALUE", "value": b64(value)}


def op_put(key: bytes, value: bytes, lease: int = 0) -> dict:
    req: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease:
        req["lease"] = str(lease)
    return {"request_put": req}


def op_delete(key: bytes, range_end: bytes | None = None) -> dict:
    req = {"key": b64(key)}
    if range_end is not None:
        req["range_end"] = b64(range_end)
    return {"request_delete_range": req}


def op_range(key: bytes, range_end: bytes | None = None) -> dict:
    req = {"key": b64(key)}
    if range_end is not None:
        req["range_end"] = b64(range_end)
    return {"request_range": req}


def _rev(data: dict) -> int:
    return int((data.get("header") or {}).get("revision") or 0)


def _message(data: object) -> str:
    if isinstance(data, dict):
        return str(data.get("message") or data.get("error") or data)
    return str(data)


def _retryable(msg: str) -> bool:
    """Errors another member may not have: no leader, timeouts, a member shutting down."""
    m = msg.lower()
    return any(s in m for s in ("leader", "timed out", "timeout", "unavailable", "stopped",
                                "shutdown", "not capable", "too many requests", "connection"))
