# cython: annotation_typing=False
"""One request in flight (:class:`Exchange`) and the direction it travels (:class:`Side`).

The exchange carries everything the forwarding layer needs (the caller's sink, the parsed head,
the target and headers to send, the compiled policy) so the layer's functions take one object
instead of a dozen parameters; it is also the record metrics and the access log read.

This file is compiled a second time by Cython as ``_exchange_c`` (``_exchange_c.py`` is a symlink
to it and ``_exchange_c.pxd`` makes :class:`Exchange` and :class:`Side` ``cdef class`` objects
with typed fields); ``proxy/transport/exchange.py`` picks the build.
"""

from __future__ import annotations

import time
from typing import Any

from control_plane.api.hosts import split_host_port
from proxy.resilience.attempts import Env
from proxy.server.headers import SPOOFABLE_INBOUND
from proxy.telemetry.tracing import PROPAGATION_HEADERS

_monotonic = time.monotonic
_wallclock = time.time

# Every request header the forwarding path reads, collected in one pass over the head (first
# value wins, as head.get) instead of one scan of the header list per name.
WANTED = frozenset(
    {
        "x-request-id",
        "x-forwarded-proto",
        "x-forwarded-for",
        "x-envoy-retry-on",
        "x-envoy-retry-grpc-on",
        "x-envoy-max-retries",
        "x-envoy-expected-rq-timeout-ms",
        "idempotency-key",
        "content-type",
        "grpc-timeout",
        *PROPAGATION_HEADERS,
    }
)


class Side:
    """What differs between the two directions, decided once per sidecar.

    ``name``: the reporter the recorder files the request under ("outbound": this workload is
    the source, "inbound": the destination). ``outbound``: the attempt machine's view of the
    direction. ``service_time``: answer ``x-envoy-upstream-service-time`` (Envoy does on the
    client side). ``endpoint_peer``: the peer identity is the endpoint's (outbound) rather than
    the caller's certificate (inbound). ``retry_overrides``: the caller's ``x-envoy-retry-*``
    headers are honoured (only from the local app, never from a remote peer)."""

    __slots__ = ("rt", "name", "outbound", "service_time", "endpoint_peer", "retry_overrides",
                 "env")

    def __init__(self, rt: Any, name: str, *, outbound: bool) -> None:
        self.rt = rt
        self.name = name
        self.outbound = outbound
        self.service_time = outbound
        self.endpoint_peer = outbound
        self.retry_overrides = outbound
        self.env = RuntimeEnv(rt)

    def account(self, ex: Exchange) -> None:
        """The request is over: metrics, access log, spans (the runtime's recorder, read live)."""
        self.rt.record(ex, ex.head, self.name)


class RuntimeEnv(Env):
    """The attempt machines' Env over the runtime: its counters and random source, and its
    maxRetries gates read live (a config swap replaces them)."""

    __slots__ = ("rt",)

    def __init__(self, rt: Any) -> None:
        self.rt = rt
        self.counters = rt
        self.rng = rt.random
        self.clock = _monotonic
        self.wall = _wallclock

    @property  # type: ignore[override]
    def gates(self) -> Any:
        return self.rt.retry_gates


class Exchange:
    """What one request is and did: its context for the forwarding layer, and the record for
    metrics and the access log (filled as it goes)."""

    __slots__ = (
        "start",
        "status",
        "flags",
        "upstream",
        "cluster",
        "service",
        "route",
        "req_bytes",
        "resp_bytes",
        "upstream_ms",
        "attempts",
        "request_id",
        "grpc",
        "peer",
        "mtls",
        "endpoint",
        "trace",
        "hdrs",
        "downstream",
        "fallback",
        # the request's context (set by the stack before the forwarding layer runs)
        "side",
        "down",
        "head",
        "target",
        "headers",
        "extra",
        "policy",
        "upstream_cluster",
        "resp_ops",
        "deadline",
    )

    def __init__(self, side: Side, down: Any, head: Any, start: float) -> None:
        self.start = start
        self.status = 0
        self.flags = "-"
        self.upstream = ""
        self.cluster = ""  # the cluster's name (what metrics label)
        self.service = ""
        self.route = ""
        self.req_bytes = 0
        self.resp_bytes = 0
        self.upstream_ms = -1.0
        self.attempts = 0
        self.request_id = ""
        self.grpc = ""
        self.peer = ""  # the other side's SPIFFE ID (source on inbound, destination on outbound)
        self.mtls = False
        self.endpoint: Any = None
        self.trace: Any = None
        self.hdrs: dict[str, str] = {}
        self.downstream: tuple[str, int] = down.peer  # the caller's address, for the access log
        self.fallback: Any = None  # the destination's FallbackPolicy, set once policy is known
        self.side = side
        self.down = down
        self.head = head
        self.target: str = head.target  # what goes upstream (rewritten, normalised)
        self.headers: list[tuple[str, str]] = head.headers
        self.extra: list[str] = []  # header lines the sidecar adds
        self.policy: Any = None  # the compiled RoutePolicy
        self.upstream_cluster: Any = None  # the Cluster object
        self.resp_ops: Any = None  # (route ops, destination ops) for the response, or None
        # the caller's deadline (monotonic), derived once by the inbound stack; 0.0: none known
        self.deadline = 0.0


def scan(headers: list[tuple[str, str]], ex: Exchange) -> bool:
    """One pass: the headers the path reads into ``ex.hdrs`` (the first value of each);
    True when a sidecar-only (spoofable) header is present."""
    found: dict[str, str] = {}
    spoofed = False
    for name, value in headers:
        if name in WANTED:
            if name not in found:
                found[name] = value
        elif name in SPOOFABLE_INBOUND:
            spoofed = True
    ex.hdrs = found
    return spoofed


# Host header -> split_host_port(Host): a handful of distinct values per sidecar, so the split is
# remembered (bounded: cleared when full)
_HOST_PORT: dict[str, tuple[str, int]] = {}
_HOST_PORT_MAX = 1024


def host_port(authority: str) -> tuple[str, int]:
    hp = _HOST_PORT.get(authority)
    if hp is None:
        hp = split_host_port(authority)
        if len(_HOST_PORT) >= _HOST_PORT_MAX:
            _HOST_PORT.clear()
        _HOST_PORT[authority] = hp
    return hp
