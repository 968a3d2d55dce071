"""The one exception the HTTP/1.1 parser raises for bad peer input, shared by both builds."""

from __future__ import annotations


class ProtocolError(Exception):
    """The peer sent something we refuse to parse.

    ``status`` is the HTTP status a proxy should answer with (400, 414, 431, 501, 505 for
    requests; 502 for anything wrong with an upstream response); ``reason`` is short text for the
    access log (Envoy's ``http1.*`` details in spirit). After any of these, close the connection:
    the rest of the buffer cannot be trusted (RFC 9112 §11.2).
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"ProtocolError({self.status!r}, {self.reason!r})"
