"""The join token's wire format, shared by the CA (which issues and checks tokens) and the
sidecar (which reads the CA pin out of it). Storage and checking live in control_plane/ca.

``meshlet1.<token-id>.<secret>.<ca-pin>``

- ``token-id``: 16 hex digits, the lookup key (not secret);
- ``secret``: 32 URL-safe base64 characters (192 bits from ``secrets``);
- ``ca-pin``: sha256 of the root CA's DER SubjectPublicKeyInfo, 64 hex digits, like kubeadm's
  ``--discovery-token-ca-cert-hash``. It lets a sidecar trust the control plane with nothing
  but the token.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

PREFIX = "meshlet1"
_TOKEN_RE = re.compile(
    r"meshlet1\.(?P<id>[0-9a-f]{16})\.(?P<secret>[A-Za-z0-9_-]{32})\.(?P<pin>[0-9a-f]{64})"
)


class InvalidToken(ValueError):
    """Malformed, unknown, expired or revoked; the message is safe to show the caller."""


@dataclass(frozen=True, slots=True)
class JoinToken:
    token_id: str
    secret: str
    ca_pin: str

    def __str__(self) -> str:
        return f"{PREFIX}.{self.token_id}.{self.secret}.{self.ca_pin}"

    def __repr__(self) -> str:  # never print the secret by accident
        return f"JoinToken(token_id={self.token_id!r}, ca_pin={self.ca_pin!r})"

    @classmethod
    def generate(cls, ca_pin: str) -> JoinToken:
        return cls(secrets.token_hex(8), secrets.token_urlsafe(24), ca_pin.lower())

    @classmethod
    def parse(cls, text: str) -> JoinToken:
        m = _TOKEN_RE.fullmatch(text.strip())
        if m is None:
            raise InvalidToken("malformed join token")
        return cls(m["id"], m["secret"], m["pin"])
