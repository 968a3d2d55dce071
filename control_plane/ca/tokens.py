"""Join tokens: issued per (service, namespace) with an expiry, stored hashed, checked in
constant time.

A token lets any replica of its service obtain a first certificate until it expires (like a
kubeadm bootstrap token); renewals then use the certificate. Only sha256(secret) is stored, in
``<data_dir>/ca/tokens.db`` (SQLite, mode 0600), so a copy of the database grants nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from certs.join_token import InvalidToken, JoinToken
from certs.keys import make_private_dir
from certs.spiffe import InvalidSpiffeId, SpiffeId

DEFAULT_TTL = 24 * 3600
MAX_TTL = 365 * 24 * 3600

_SCHEMA = """
CREATE TABLE IF NOT EXISTS join_tokens (
    token_id    TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    service     TEXT NOT NULL,
    namespace   TEXT NOT NULL,
    created_at  REAL NOT NULL,
    expires_at  REAL NOT NULL
)
"""

__all__ = ["DEFAULT_TTL", "InvalidToken", "TokenInfo", "TokenStore"]


@dataclass(frozen=True, slots=True)
class TokenInfo:
    token_id: str
    service: str
    namespace: str
    created_at: float
    expires_at: float


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenStore:
    """Creates and verifies join tokens.

    ``ca_pin`` returns the current CA pin (``CertificateAuthority.root_pin``) so tokens created
    after a root rotation pin the new root.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        ca_pin: Callable[[], str],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        ca_dir = make_private_dir(Path(data_dir) / "ca")
        self.path = ca_dir / "tokens.db"
        if not self.path.exists():
            # Create it 0600 before SQLite opens it; SQLite gives its journal the same mode.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        os.chmod(self.path, 0o600)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute(_SCHEMA)
        self._ca_pin = ca_pin
        self._clock = clock

    def close(self) -> None:
        self._db.close()

    def create(self, service: str, namespace: str = "default", ttl: float = DEFAULT_TTL) -> str:
        """A new token for ``service`` in ``namespace``, valid ``ttl`` seconds. Returned once,
        never stored in clear."""
        try:
            SpiffeId.for_workload("x", namespace, service)
        except InvalidSpiffeId as exc:
            raise ValueError(str(exc)) from None
        if not 0 < ttl <= MAX_TTL:
            raise ValueError(f"token TTL must be between 0 and {MAX_TTL} seconds")
        token = JoinToken.generate(self._ca_pin())
        now = self._clock()
        self._db.execute(
            "INSERT INTO join_tokens VALUES (?, ?, ?, ?, ?, ?)",
            (token.token_id, _hash(token.secret), service, namespace, now, now + ttl),
        )
        return str(token)

    def verify(self, token: str) -> tuple[str, str]:
        """(service, namespace) for a valid token; raise :class:`InvalidToken` otherwise.

        The token's CA pin is not checked here: it is for the sidecar to check the CA, and a
        token stays valid across a root rotation.
        """
        parsed = JoinToken.parse(token)
        row = self._db.execute(
            "SELECT secret_hash, service, namespace, expires_at FROM join_tokens"
            " WHERE token_id = ?",
            (parsed.token_id,),
        ).fetchone()
        # Compare against a dummy hash when the id is unknown, so both paths cost the same.
        stored = row[0] if row else "0" * 64
        if not hmac.compare_digest(stored, _hash(parsed.secret)) or row is None:
            raise InvalidToken("unknown join token")
        if self._clock() >= row[3]:
            raise InvalidToken("join token has expired")
        return row[1], row[2]

    def revoke(self, token_id: str) -> bool:
        cur = self._db.execute("DELETE FROM join_tokens WHERE token_id = ?", (token_id,))
        return cur.rowcount > 0

    def list(self) -> list[TokenInfo]:
        rows = self._db.execute(
            "SELECT token_id, service, namespace, created_at, expires_at FROM join_tokens"
            " ORDER BY created_at"
        ).fetchall()
        return [TokenInfo(*r) for r in rows]

    def prune(self) -> int:
        """Delete expired tokens; return how many."""
        cur = self._db.execute("DELETE FROM join_tokens WHERE expires_at <= ?", (self._clock(),))
        return cur.rowcount
