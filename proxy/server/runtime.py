"""Live state of one sidecar, kept apart from the immutable config it runs.

The route table is swapped by one assignment; everything that must survive a swap — keep-alive
pools, load-balancer positions, per-endpoint active-request counts, outlier state — is keyed by
endpoint or cluster name here, so a config push changes routing without dropping connections.
Per-destination metric series are bound when a cluster is first used under a table, never
resolved label by label per request.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any

from proxy.routes.table import EMPTY, UNLIMITED, Cluster, Endpoint, RouteTable
from proxy.server.policy import DestinationPlan, PolicyStore, RoutePolicy
from proxy.server.pool_limits import RetryGate
from proxy.server.upstream import EndpointPool

log = logging.getLogger("meshlet.proxy")


_bits = random.SystemRandom().getrandbits(64)
_rng = random.Random(_bits)
_RID: list[Any] = []  # [prefix, counter's __next__]: replaced after a fork


def _new_rid_series() -> None:
    """A fresh random prefix (72 random bits, the version and variant nibbles fixed) and a
    counter from a random start for the last group: an id costs one format and one add
    instead of 128 random bits, and stays unique (the prefix across processes, the counter
    within one). A forked child starts its own series."""
    b = "%032x" % random.SystemRandom().getrandbits(128)
    _RID[:] = [
        f"{b[:8]}-{b[8:12]}-4{b[13:16]}-a{b[17:20]}-",
        itertools.count(int(b[20:], 16) >> 8).__next__,
    ]


_new_rid_series()
os.register_at_fork(after_in_child=_new_rid_series)


def new_request_id(_rid: list[Any] = _RID) -> str:
    """A UUIDv4-shaped ``x-request-id``: unique, well-formed, not a secret (Envoy's is not
    either), so it need not be unpredictable."""
    prefix, nxt = _rid
    return prefix + "%012x" % nxt()  # starts below 2**40: 12 digits for ~2**48 ids


class Runtime:
    def __init__(
        self,
        service: str,
        namespace: str,
        version: str,
        labels: dict[str, str],
        app_port: int,
        app_host: str = "127.0.0.1",
        trust_domain: str = "cluster.local",
    ) -> None:
        from control_plane.api.hosts import fqdn

        self.service = service
        self.namespace = namespace
        self.version = version
        self.labels = labels
        self.local_service_fqdn = fqdn(service, namespace)
        self.spiffe_id = f"spiffe://{trust_domain}/ns/{namespace}/sa/{service}"
        self.table: RouteTable = EMPTY
        # id(route destination) -> its compiled plan, for ``table`` (assigned with it)
        self.plans: Mapping[int, DestinationPlan] = {}
        self.config_version = ""
        self.draining = False
        # (endpoint key, how it is dialled, h2, Cluster.pool_settings) -> pool
        self.pools: dict[tuple[Any, ...], Any] = {}
        self._pool_owners: dict[tuple[Any, ...], str] = {}  # the cluster that made each
        # SSL contexts of the DestinationRule TLS settings in force (built at config time)
        self.origination: dict[Any, Any] = {}
        # http.maxRetries: concurrent retries per cluster name (only clusters with a limit)
        self.retry_gates: dict[str, RetryGate] = {}
        self.overflow_counter: Callable[[str, str], None] | None = None
        self.rr: dict[str, int] = {}
        self.active: dict[str, int] = {}
        self.random = random.Random()
        self.policies = PolicyStore(self.random)
        self._passthrough: dict[str, Cluster] = {}
        self.inbound_cluster = Cluster(
            name=f"inbound|{app_port}||{self.local_service_fqdn}",
            service=self.local_service_fqdn,
            subset="",
            port=app_port,
            endpoints=(Endpoint(app_host, app_port, {}, 1, False, "", f"{app_host}:{app_port}"),),
        )
        self.client_ssl: Callable[[], ssl.SSLContext | None] = lambda: None
        self.client_ssl_h2: Callable[[], ssl.SSLContext | None] = lambda: None  # ALPN h2
        self.peer_identity: Callable[[Any], str | None] | None = None
        self.mtls_mode = "PERMISSIVE"  # inbound PeerAuthentication mode in force
        self.authz: Any = None  # the compiled AuthorizationPolicies for this workload
        self.authz_tcp: Any = None  # the same for opaque TCP (HBONE streams): L4 fields only
        self.inbound_limits: Any = None  # the compiled InboundRateLimits for this workload
        self.recorder: Callable[[Any, Any, str], None] | None = None
        self.local_reply_counter: Callable[[int, str], None] | None = None
        self.mirrors_in_flight = 0
        self.max_mirrors = 64
        self.tasks: set[asyncio.Task[Any]] = set()
        self.new_request_id = new_request_id
        self.sampler: Any = None  # trace sampler; None turns trace propagation off
        self.protection_counter: Callable[[Any, str], None] | None = None
        self.retry_counter: Callable[[Any, Any], None] | None = None

    # -- config ------------------------------------------------------------------------------
    def swap(self, table: RouteTable) -> None:
        """Install a new table (one assignment; in-flight requests keep the old one).

        Raises (before changing anything) when a DestinationRule's TLS files are unusable."""
        from proxy.server import origination

        self.origination = origination.build(table, self.origination)
        self._refit_retry_gates(table)
        plans = self.policies.compile(table)
        self.table, self.plans = table, plans
        self.config_version = table.version
        self._refit_pools(table)

    def _refit_pools(self, table: RouteTable) -> None:
        """Fit the endpoint pools to a new table without dropping open connections.

        A pool belongs to one endpoint, one way of dialling it (plaintext, mesh mTLS, or a
        DestinationRule's TLS) *and* one set of connection settings (idleTimeout,
        maxRequestsPerConnection and the connectionPool thresholds), as Envoy keeps a pool per
        cluster: two subsets or services reaching the same endpoint with different
        DestinationRule settings get a pool each, and equal settings share one. A pool whose
        settings no cluster uses any more takes over settings that have no pool yet (its
        connections stay open and follow the new settings from the next request), else it
        closes. Every pool also takes the endpoint's current expected identity."""
        want: dict[tuple[str, Any], set[tuple[Any, ...]]] = {}
        verifiers: dict[tuple[str, Any], Callable[[Any], bool] | None] = {}
        by_cluster: dict[str, tuple[Any, ...]] = {}
        for c in (*table.clusters.values(), self.inbound_cluster):
            settings = by_cluster[c.name] = c.pool_settings
            for ep in c.endpoints:
                k = (ep.key, c.origination or ep.tls)
                want.setdefault(k, set()).add(settings)
                verifiers[k] = self._verifier(ep, c)
        pools, owners = self.pools, self._pool_owners
        moved: dict[tuple[Any, ...], Any] = {}
        for key, p in list(pools.items()):
            k, tls, h2, settings = key
            wanted = want.get((k, tls))
            if wanted is not None and settings in wanted:
                continue
            del pools[key]
            owner = owners.pop(key, "")
            free = [
                s
                for s in wanted or ()
                if (k, tls, h2, s) not in pools and (k, tls, h2, s) not in moved
            ]
            if not free:
                p.close()
                continue
            # the settings of the cluster that made the pool, if that cluster still has it
            mine = by_cluster.get(owner)
            s = mine if mine in free else min(free)
            p.apply(s)
            moved[(k, tls, h2, s)] = p
            owners[(k, tls, h2, s)] = owner
        pools.update(moved)
        for (k, tls, _h2, _s), p in pools.items():
            p.verify_peer = verifiers[(k, tls)]

    def _refit_retry_gates(self, table: RouteTable) -> None:
        """One gate per cluster with a ``maxRetries`` limit, kept across swaps (a retry in
        flight still holds its slot) and given the new limit."""
        gates: dict[str, RetryGate] = {}
        for c in table.clusters.values():
            if c.max_retries < UNLIMITED:
                g = self.retry_gates.get(c.name) or RetryGate(c.service)
                g.limit = c.max_retries
                gates[c.name] = g
        self.retry_gates = gates

    def route_policy(self, dest: Any, port: int) -> RoutePolicy | None:
        """The compiled policy of route destination ``dest`` for a request on ``port``, under
        the table in force (None: its cluster does not exist)."""
        plan = self.plans.get(id(dest))
        return plan.for_port(port) if plan is not None else None

    def passthrough_cluster(self, dst: tuple[str, int]) -> Cluster:
        key = f"{dst[0]}:{dst[1]}"
        c = self._passthrough.get(key)
        if c is None:
            if len(self._passthrough) > 4096:
                self._passthrough.clear()
            c = self._passthrough[key] = Cluster(
                name="PassthroughCluster",
                service=key,
                subset="",
                port=dst[1],
                endpoints=(Endpoint(dst[0], dst[1], {}, 1, False, "", key),),
            )
        return c

    # -- endpoints -----------------------------------------------------------------------------
    def pick_endpoint(
        self, cluster: Cluster, tried: set[str], outlier: Any = None
    ) -> Endpoint | None:
        """Load-balance over healthy endpoints, preferring ones this request has not tried.

        Istio's retry host predicate (previous_hosts): a retry goes elsewhere when it can, and
        to the same endpoint when it is the only one. When outlier detection has ejected every
        endpoint, all of them are used (Envoy's panic mode).
        """
        eps = cluster.endpoints
        if not eps:
            return None
        if outlier is not None and outlier.ejected_count:
            eps = tuple(outlier.healthy(eps)) or eps
        if tried:
            fresh = tuple(ep for ep in eps if ep.key not in tried)
            eps = fresh or eps
        n = len(eps)
        if n == 1:
            return eps[0]
        lb = cluster.lb
        if lb == "ROUND_ROBIN":
            i = self.rr.get(cluster.name, 0) % n
            self.rr[cluster.name] = i + 1
            return eps[i]
        if lb == "LEAST_REQUEST":
            # power of two choices (Envoy's default for LEAST_REQUEST)
            a, b = self.random.sample(eps, 2)
            act = self.active
            return a if act.get(a.key, 0) <= act.get(b.key, 0) else b
        return eps[int(self.random.random() * n)]

    def pool(self, ep: Endpoint, cluster: Cluster, h2: bool = False) -> Any:
        # one pool per endpoint, way of dialling and connection settings (see _refit_pools)
        o = cluster.origination
        key = (ep.key, o or ep.tls, h2, cluster.pool_settings)
        p = self.pools.get(key)
        if p is None:
            p = self.pools[key] = self._new_pool(ep, cluster, h2)
            self._pool_owners[key] = cluster.name
        return p

    def _new_pool(self, ep: Endpoint, cluster: Cluster, h2: bool) -> Any:
        o = cluster.origination
        ssl_factory: Callable[[], ssl.SSLContext | None] | None = None
        server_name = ""
        if o is not None and o.mode != "ISTIO_MUTUAL":
            first = self.origination[o]

            def ssl_factory() -> ssl.SSLContext:
                # per new connection: the contexts of the config in force (files re-read)
                ctxs = self.origination.get(o) or first
                return ctxs.h2 if h2 else ctxs.h1

            from proxy.server.origination import server_name as _sni

            server_name = _sni(o, cluster.service)
        elif ep.tls:
            if o is not None and self.peer_identity is None:
                ssl_factory = _no_identity  # ISTIO_MUTUAL asks for a certificate it has not
            else:
                ssl_factory = self.client_ssl_h2 if h2 else self.client_ssl
            server_name = o.sni if o is not None else ""
        verify = self._verifier(ep, cluster)
        if h2:
            from proxy.server.h2.client import H2UpstreamPool

            p: Any = H2UpstreamPool(ep.address, ep.port, ssl_factory, verify_peer=verify)
        else:
            p = EndpointPool(ep.address, ep.port, ssl_factory, verify_peer=verify)
        if ssl_factory is not None:
            p.server_hostname = server_name
        p.apply(cluster.pool_settings)
        p.on_overflow = self._overflow_counter(cluster)
        return p

    def _verifier(
        self, ep: Endpoint, cluster: Cluster | None = None
    ) -> Callable[[Any], bool] | None:
        """The check of a TLS upstream's identity. Mesh mTLS: the server must be the identity
        the destination should have (its SPIFFE ID from the registry or ServiceEntry), or one
        of the DestinationRule's ``subjectAltNames``. SIMPLE/MUTUAL: one of the
        ``subjectAltNames`` (without them OpenSSL checks the host name)."""
        o = cluster.origination if cluster is not None else None
        if o is not None and o.mode != "ISTIO_MUTUAL":
            if not o.subject_alt_names or o.insecure_skip_verify:
                return None
            from proxy.server.origination import san_verifier

            return san_verifier(o.subject_alt_names)
        if not ep.tls or self.peer_identity is None:
            return None
        ident = self.peer_identity
        if o is not None and o.subject_alt_names:
            names = frozenset(o.subject_alt_names)

            def verify_any(sslobj: Any) -> bool:
                return ident(sslobj) in names

            return verify_any
        if not ep.spiffe_id:
            return None
        expected = ep.spiffe_id

        def verify(sslobj: Any) -> bool:
            return ident(sslobj) == expected

        return verify

    def _overflow_counter(self, cluster: Cluster) -> Callable[[str], None]:
        """Counts a pool's overflows (kind: connections, pending, requests) under its
        destination; rare (a rejection), so the label lookup happens then."""
        service = cluster.service

        def count(kind: str) -> None:
            self.count_overflow(service, kind)

        return count

    def endpoint_started(self, ep: Endpoint) -> None:
        self.active[ep.key] = self.active.get(ep.key, 0) + 1

    def endpoint_finished(self, ep: Endpoint) -> None:
        self.active[ep.key] -= 1

    def endpoint_outcome(
        self, outlier: Any, ep: Endpoint, status: int | None, local_failure: bool
    ) -> None:
        """Feed passive health: a response status, or a connect failure / reset / timeout."""
        if outlier is not None:
            before = outlier.ejections_total
            outlier.record(ep.key, status, False, local_failure)
            if outlier.ejections_total != before and self.protection_counter is not None:
                self.protection_counter(outlier, "ejection")

    def endpoint_health(self, cluster: Cluster, ep: Endpoint) -> dict[str, Any]:
        det = self.policies.outlier(cluster)
        if det is None:
            return {"healthy": True, "ejected": False}
        st = det.status().get(ep.key, {})
        return {"healthy": not st.get("ejected", False), **st}

    def cluster_health(self, cluster: Cluster) -> dict[str, Any]:
        d = self.policies.destination(cluster)
        out: dict[str, Any] = {"retry_budget_available": d.budget.available}
        if d.breaker is not None:
            out["circuit_breaker"] = d.breaker.status()
        if d.bulkhead is not None:
            out["bulkhead"] = {
                "active": d.bulkhead.active,
                "waiting": d.bulkhead.waiting,
                "rejected": d.bulkhead.rejected,
            }
        det = self.policies.outlier(cluster)
        if det is not None:
            out["outlier_ejections_total"] = det.ejections_total
            out["outlier_ejected"] = det.ejected_count
        return out

    def count_overflow(self, service: str, kind: str) -> None:
        if self.overflow_counter is not None:
            self.overflow_counter(service, kind)

    def pool_status(self, cluster: Cluster) -> dict[str, Any]:
        """The cluster's connectionPool limits and, per endpoint pool it uses, the current
        counts (connections, pending and active requests, overflows)."""
        settings = cluster.pool_settings
        pools = []
        for ep in cluster.endpoints:
            for h2 in (False, True):
                p = self.pools.get((ep.key, cluster.origination or ep.tls, h2, settings))
                if p is not None:
                    pools.append({"endpoint": ep.key, "http2": h2, **p.status()})
        out: dict[str, Any] = {
            "max_connections": cluster.max_connections,
            "max_pending_requests": cluster.max_pending,
            "max_requests": cluster.max_requests,
            "max_retries": cluster.max_retries,
            "max_requests_per_connection": cluster.max_requests_per_connection,
            "max_concurrent_streams": cluster.max_concurrent_streams,
            "pools": pools,
        }
        gate = self.retry_gates.get(cluster.name)
        if gate is not None:
            out.update(gate.status())
        return out

    def count_protection(self, subject: Any, kind: str) -> None:
        if self.protection_counter is not None:
            self.protection_counter(subject, kind)

    def count_retry(self, dest: Any, outcome: Any) -> None:
        if self.retry_counter is not None:
            self.retry_counter(dest, outcome)

    # -- policy hooks ----------------------------------------------------------------------------
    def record(self, ex: Any, head: Any, reporter: str) -> None:
        if self.recorder is not None:
            self.recorder(ex, head, reporter)

    def count_local_reply(self, status: int, flag: str) -> None:
        if self.local_reply_counter is not None:
            self.local_reply_counter(status, flag)

    # -- mirroring -------------------------------------------------------------------------------
    def mirror(
        self,
        mirror: tuple[str, float],
        head: Any,
        target: str,
        headers: list[tuple[str, str]],
        body: Any,
    ) -> None:
        """Fire and forget a copy (Envoy's shadow): bounded in flight, bodiless requests only."""
        cname, fraction = mirror
        if body is not None or self.mirrors_in_flight >= self.max_mirrors:
            return
        if fraction < 1.0 and self.random.random() >= fraction:
            return
        cluster = self.table.clusters.get(cname)
        if cluster is None or not cluster.endpoints:
            return
        self.spawn(self._send_mirror(cluster, head, target, headers))

    async def _send_mirror(
        self, cluster: Cluster, head: Any, target: str, headers: list[tuple[str, str]]
    ) -> None:
        from proxy.server.headers import request_head

        self.mirrors_in_flight += 1
        ep = self.pick_endpoint(cluster, set())
        try:
            if ep is None:
                return
            shadow = [(n, v + "-shadow" if n == "host" else v) for n, v in headers]
            data = request_head(head.method, target, shadow, head.connection, ["connection: close"])
            pool = self.pool(ep, cluster)
            async with asyncio.timeout(5.0):
                conn, _ = await pool.acquire(cluster.connect_timeout)
                try:
                    fut = conn.start(data, head.method)
                    await fut
                    while await conn.body.read():
                        pass
                finally:
                    conn.close()
                    pool.release(conn)
        except Exception as exc:  # a mirror never affects the real request
            log.debug("mirror to %s failed: %r", cluster.name, exc)
        finally:
            self.mirrors_in_flight -= 1

    # -- tasks -----------------------------------------------------------------------------------
    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Start a background task, keep a reference, and log its failure."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    def close(self) -> None:
        for p in self.pools.values():
            p.close()
        self.pools.clear()
        self._pool_owners.clear()


def _no_identity() -> ssl.SSLContext | None:
    raise ConnectionError("DestinationRule tls.mode ISTIO_MUTUAL: this sidecar has no certificate")


def monotonic() -> float:
    return time.monotonic()
