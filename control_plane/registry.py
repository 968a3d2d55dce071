"""The service registry: which sidecars are connected, what they serve, and what they acknowledged.

A sidecar registers when its config stream opens (service, namespace, version, labels, the
address of its inbound mTLS port, its admin address). When the stream drops, the entry is kept
for a grace period (a reconnecting sidecar keeps its place and endpoints do not flap) and then
removed; a draining sidecar deregisters explicitly and is removed at once. The registry also keeps
the per-sidecar push status that ``meshlet proxy-status`` shows (go-control-plane's
``GetStatusInfo``).

Sans-I/O: the clock is injected and :meth:`Registry.expire` is called by the server's timer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

DEFAULT_GRACE_S = 30.0


@dataclass
class Registration:
    node_id: str
    service: str
    namespace: str = "default"
    version: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    address: str = ""  # host:port of the sidecar's inbound mTLS listener
    admin_address: str = ""  # host:port of the sidecar's admin listener
    hbone_port: int = 0  # the sidecar's HBONE port (opaque TCP tunnels), 0: none
    connected_at: float = 0.0  # wall clock, for display
    connected: bool = True
    disconnected_at: float | None = None  # monotonic, for the grace period
    sent_version: str = ""
    sent_at: float = 0.0
    acked_version: str = ""
    acked_at: float = 0.0
    nack_version: str = ""
    nack_error: str = ""
    cert_expiry: float | None = None  # unix time the sidecar reported for its certificate
    replica: str = ""  # the control-plane replica the sidecar is connected to (etcd store)

    def answers_to(self, name: str) -> bool:
        return answers_to(name, self.node_id, self.service, self.namespace, self.version)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("disconnected_at")
        return d


def answers_to(name: str, node_id: str, service: str, namespace: str, version: str) -> bool:
    """Whether ``name`` names this sidecar, in any form the CLI prints: the node id, the node id
    without its address (``orders-v1.default``), ``service-version`` (what ``meshlet demo`` calls
    its sidecars), or the service (``orders``, ``orders.default``)."""
    if name in (node_id, node_id.partition("@")[0]):
        return True
    base, _, ns = name.partition(".")
    if ns and ns != namespace:
        return False
    return base == service or bool(version) and base == f"{service}-{version}"


def short_name(reg: Registration, others: list[Registration]) -> str:
    """The node id without its address when no other sidecar shares it, else the node id."""
    short = reg.node_id.partition("@")[0]
    clash = sum(o.node_id.partition("@")[0] == short for o in others)
    return short if clash <= 1 else reg.node_id


class Registry:
    """Registrations by node id."""

    def __init__(
        self, grace_s: float = DEFAULT_GRACE_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.grace_s = grace_s
        self._clock = clock
        self._nodes: dict[str, Registration] = {}
        self._listeners: list[Callable[[], None]] = []

    def add_listener(self, fn: Callable[[], None]) -> None:
        """``fn()`` is called whenever the set of endpoints may have changed."""
        self._listeners.append(fn)

    def _changed(self) -> None:
        for fn in list(self._listeners):
            fn()

    # -- membership ------------------------------------------------------------------------
    def register(self, reg: Registration) -> None:
        old = self._nodes.get(reg.node_id)
        if old is not None:
            # A reconnect within the grace period: keep what it acknowledged before.
            reg.acked_version = reg.acked_version or old.acked_version
            reg.acked_at = reg.acked_at or old.acked_at
        reg.connected = True
        reg.disconnected_at = None
        reg.connected_at = reg.connected_at or time.time()
        self._nodes[reg.node_id] = reg
        self._changed()

    def disconnected(self, node_id: str, reg: Registration | None = None) -> None:
        """The stream of ``node_id`` dropped: start its grace period.

        ``reg`` guards against a late disconnect of an old stream after the sidecar has already
        reconnected with a new one.
        """
        cur = self._nodes.get(node_id)
        if cur is None or (reg is not None and cur is not reg):
            return
        cur.connected = False
        cur.disconnected_at = self._clock()
        if self.grace_s <= 0:
            self.expire()

    def deregister(self, node_id: str) -> None:
        """A draining sidecar leaves: remove it now, without a grace period."""
        if self._nodes.pop(node_id, None) is not None:
            self._changed()

    def expire(self) -> list[str]:
        """Remove sidecars whose stream has been down longer than the grace period."""
        now = self._clock()
        gone = [
            nid
            for nid, r in self._nodes.items()
            if not r.connected
            and r.disconnected_at is not None
            and now - r.disconnected_at >= self.grace_s
        ]
        for nid in gone:
            del self._nodes[nid]
        if gone:
            self._changed()
        return gone

    # -- reading ---------------------------------------------------------------------------
    def get(self, node_id: str) -> Registration | None:
        return self._nodes.get(node_id)

    def all(self) -> list[Registration]:
        return sorted(self._nodes.values(), key=lambda r: (r.namespace, r.service, r.node_id))

    def find(self, name: str) -> list[Registration]:
        """The sidecar whose node id is ``name``, else every one that answers to it
        (:func:`answers_to`)."""
        if name in self._nodes:
            return [self._nodes[name]]
        return [r for r in self.all() if r.answers_to(name)]

    # -- push status -----------------------------------------------------------------------
    def sent(self, node_id: str, version: str) -> None:
        r = self._nodes.get(node_id)
        if r is not None:
            r.sent_version, r.sent_at = version, time.time()

    def acked(self, node_id: str, version: str) -> None:
        r = self._nodes.get(node_id)
        if r is not None:
            r.acked_version, r.acked_at = version, time.time()
            r.nack_version = r.nack_error = ""

    def nacked(self, node_id: str, version: str, error: str) -> None:
        r = self._nodes.get(node_id)
        if r is not None:
            r.nack_version, r.nack_error = version, error

    def update(self, node_id: str, **fields: object) -> None:
        """Status the sidecar reports after registering (today: its certificate expiry)."""
        r = self._nodes.get(node_id)
        if r is not None and "cert_expiry" in fields:
            v = fields["cert_expiry"]
            r.cert_expiry = float(v) if isinstance(v, int | float) else None
