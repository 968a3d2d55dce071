"""Join tokens kept in etcd, so a token created through one replica works against any other.

Same contract as :class:`control_plane.ca.tokens.TokenStore` (only sha256(secret) is stored,
checked in constant time; the CA pin is the shared CA's), with coroutine methods: one key per
token, ``<prefix>tokens/<token id>``, read from etcd on every check (a token is used once per
sidecar start; it must work the instant it was created, whichever replica created it).
Expired tokens are pruned by the leader.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable

from certs.join_token import InvalidToken, JoinToken
from certs.spiffe import InvalidSpiffeId, SpiffeId
from control_plane.ca.tokens import DEFAULT_TTL, MAX_TTL, TokenInfo
from control_plane.etcd.client import EtcdClient


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class EtcdTokenStore:
    def __init__(self, client: EtcdClient, ca_pin: Callable[[], str], prefix: str = "/meshlet/",
                 *, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self._p = prefix.encode() + b"tokens/"
        self._ca_pin = ca_pin
        self._clock = clock

    def close(self) -> None:
        """Nothing held: the client belongs to the control plane."""

    async def create(self, service: str, namespace: str = "default",
                     ttl: float = DEFAULT_TTL) -> str:
        try:
            SpiffeId.for_workload("x", namespace, service)
        except InvalidSpiffeId as exc:
            raise ValueError(str(exc)) from None
        if not 0 < ttl <= MAX_TTL:
            raise ValueError(f"token TTL must be between 0 and {MAX_TTL} seconds")
        token = JoinToken.generate(self._ca_pin())
        now = self._clock()
        value = {"secret_hash": _hash(token.secret), "service": service,
                 "namespace": namespace, "created_at": now, "expires_at": now + ttl}
        await self.client.put(self._p + token.token_id.encode(), json.dumps(value).encode())
        return str(token)

    async def verify(self, token: str) -> tuple[str, str]:
        parsed = JoinToken.parse(token)
        kv = await self.client.get(self._p + parsed.token_id.encode())
        row = json.loads(kv.value) if kv is not None else None
        stored = str(row["secret_hash"]) if row else "0" * 64
        if not hmac.compare_digest(stored, _hash(parsed.secret)) or row is None:
            raise InvalidToken("unknown join token")
        if self._clock() >= float(row["expires_at"]):
            raise InvalidToken("join token has expired")
        return str(row["service"]), str(row["namespace"])

    async def revoke(self, token_id: str) -> bool:
        kv = await self.client.get(self._p + token_id.encode())
        if kv is None:
            return False
        await self.client.delete(self._p + token_id.encode())
        return True

    async def list(self) -> list[TokenInfo]:
        _, kvs = await self.client.get_prefix(self._p)
        out = []
        for kv in kvs:
            d = json.loads(kv.value)
            out.append(TokenInfo(kv.key[len(self._p):].decode(), d["service"], d["namespace"],
                                 d["created_at"], d["expires_at"]))
        return sorted(out, key=lambda t: t.created_at)

    async def prune(self) -> int:
        """Delete expired tokens (a leader job); return how many."""
        now = self._clock()
        n = 0
        for info in await self.list():
            if info.expires_at <= now:
                await self.client.delete(self._p + info.token_id.encode())
                n += 1
        return n
