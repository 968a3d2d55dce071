"""SPIFFE IDs: strict parsing and formatting per the SPIFFE-ID specification (§2)."""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_ID_LENGTH = 2048
MAX_TRUST_DOMAIN_LENGTH = 255

_TRUST_DOMAIN_RE = re.compile(r"[a-z0-9._-]+")
_SEGMENT_RE = re.compile(r"[A-Za-z0-9._-]+")
_SCHEME = "spiffe://"

#: The control plane's own ID. Workload IDs always have the form /ns/NS/sa/SA, so no join token
#: or renewal can ever yield this one.
CONTROL_PLANE_PATH = "/meshlet/control-plane"


class InvalidSpiffeId(ValueError):
    """A string that is not a valid SPIFFE ID; the message names the rule it breaks."""


def validate_trust_domain(trust_domain: str) -> str:
    """Return ``trust_domain`` if it is a valid trust domain name, else raise."""
    if not trust_domain:
        raise InvalidSpiffeId("trust domain is empty")
    if len(trust_domain.encode()) > MAX_TRUST_DOMAIN_LENGTH:
        raise InvalidSpiffeId("trust domain is longer than 255 bytes")
    if not _TRUST_DOMAIN_RE.fullmatch(trust_domain):
        # Also rejects uppercase, percent-encoding, userinfo (@), ports (:) and IPv6 literals.
        raise InvalidSpiffeId(
            f"trust domain {trust_domain!r} may contain only lowercase letters, digits, '.-_'"
        )
    return trust_domain


def _validate_path(path: str) -> str:
    if path == "":
        return path
    if not path.startswith("/"):
        raise InvalidSpiffeId("path must start with '/'")
    if path.endswith("/"):
        raise InvalidSpiffeId("path must not end with '/'")
    for segment in path[1:].split("/"):
        if segment == "":
            raise InvalidSpiffeId("path has an empty segment")
        if segment in (".", ".."):
            raise InvalidSpiffeId("path has a '.' or '..' segment")
        if not _SEGMENT_RE.fullmatch(segment):
            raise InvalidSpiffeId(
                f"path segment {segment!r} may contain only letters, digits, '.', '-', '_'"
            )
    return path


def _validate_name(kind: str, value: str) -> str:
    if not value or not _SEGMENT_RE.fullmatch(value) or value in (".", ".."):
        raise InvalidSpiffeId(f"{kind} {value!r} is not a valid SPIFFE path segment")
    return value


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """``spiffe://<trust_domain><path>``; the path is ``""`` (the trust domain itself) or ``/a/b``.

    Both fields are validated on construction, so an instance is always a valid ID. Equality is
    exact: the trust domain is stored lowercase (it compares case-insensitively by rule 9) and the
    path is case-sensitive.
    """

    trust_domain: str
    path: str = ""

    def __post_init__(self) -> None:
        validate_trust_domain(self.trust_domain)
        _validate_path(self.path)
        if len(str(self).encode()) > MAX_ID_LENGTH:
            raise InvalidSpiffeId("SPIFFE ID is longer than 2048 bytes")

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        """Parse ``text`` strictly; raise :class:`InvalidSpiffeId` naming the broken rule."""
        if not isinstance(text, str):
            raise InvalidSpiffeId("SPIFFE ID must be a string")
        if len(text.encode()) > MAX_ID_LENGTH:
            raise InvalidSpiffeId("SPIFFE ID is longer than 2048 bytes")
        if text[: len(_SCHEME)].lower() != _SCHEME:
            raise InvalidSpiffeId("scheme must be 'spiffe://'")
        rest = text[len(_SCHEME) :]
        if "?" in rest:
            raise InvalidSpiffeId("SPIFFE ID must not have a query")
        if "#" in rest:
            raise InvalidSpiffeId("SPIFFE ID must not have a fragment")
        slash = rest.find("/")
        authority, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
        if not authority:
            raise InvalidSpiffeId("trust domain is empty")
        if "@" in authority:
            raise InvalidSpiffeId("SPIFFE ID must not have userinfo")
        if ":" in authority or "[" in authority:
            raise InvalidSpiffeId("SPIFFE ID must not have a port or an IPv6 literal")
        if "%" in text:
            raise InvalidSpiffeId("SPIFFE ID must not be percent-encoded")
        return cls(validate_trust_domain(authority), _validate_path(path))

    @classmethod
    def for_workload(cls, trust_domain: str, namespace: str, service_account: str) -> SpiffeId:
        """The mesh convention: ``spiffe://TD/ns/NAMESPACE/sa/SERVICE_ACCOUNT``."""
        _validate_name("namespace", namespace)
        _validate_name("service account", service_account)
        return cls(trust_domain, f"/ns/{namespace}/sa/{service_account}")

    @classmethod
    def for_trust_domain(cls, trust_domain: str) -> SpiffeId:
        return cls(trust_domain, "")

    @classmethod
    def for_control_plane(cls, trust_domain: str) -> SpiffeId:
        return cls(trust_domain, CONTROL_PLANE_PATH)

    @property
    def is_control_plane(self) -> bool:
        return self.path == CONTROL_PLANE_PATH

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}{self.path}"

    @property
    def uri(self) -> str:
        return str(self)

    @property
    def is_root(self) -> bool:
        """True for the trust domain's own ID (no path); such an ID never names a workload."""
        return self.path == ""

    def _workload_parts(self) -> tuple[str, str] | None:
        parts = self.path.split("/")
        if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa":
            return parts[2], parts[4]
        return None

    @property
    def namespace(self) -> str | None:
        """The ``ns`` segment of a ``/ns/NS/sa/SA`` ID, else None."""
        parts = self._workload_parts()
        return parts[0] if parts else None

    @property
    def service_account(self) -> str | None:
        """The ``sa`` segment of a ``/ns/NS/sa/SA`` ID, else None."""
        parts = self._workload_parts()
        return parts[1] if parts else None

    def member_of(self, trust_domain: str) -> bool:
        return self.trust_domain == trust_domain.lower()
