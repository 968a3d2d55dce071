"""Live state of one sidecar, kept apart from the immutable config it runs.

The route table is swapped by one assignment; everything that must survive a swap — keep-alive
pools, load-balancer positions, per-endpoint active-request counts, outlier state — is keyed by
endpoint or cluster name here, so a config push changes routing without dropping connections.
Per-destination metric series are bound when a cluster is first used under a table, never
resolved label by label per request.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Callable
from typing import Any

from proxy.routes.table import EMPTY, Cluster, Endpoint, RouteTable
from proxy.server.policy import PolicyStore
from proxy.server.upstream import EndpointPool

log = logging.getLogger("meshlet.proxy")


_bits = random.SystemRandom().getrandbits(64)
_rng = random.Random(_bits)


def new_request_id() -> str:
    """A UUIDv4-shaped id. Not a secret (Envoy's is not either), so a fast PRNG is enough."""
    b = "%032x" % _rng.getrandbits(128)
    return f"{b[:8]}-{b[8:12]}-4{b[13:16]}-a{b[17:20]}-{b[20:]}"


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
        self.config_version = ""
        self.draining = False
        # (endpoint key, mTLS, h2, idleTimeout, maxRequestsPerConnection) -> pool
        self.pools: dict[tuple[str, bool, bool, float, int], Any] = {}
        self._pool_owners: dict[tuple[str, bool, bool, float, int], str] = {}  # who made each
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
        """Install a new table (one assignment; in-flight requests keep the old one)."""
        self.policies.reset_table(table)
        self.table = table
        self.config_version = table.version
        self._refit_pools(table)

    def _refit_pools(self, table: RouteTable) -> None:
        """Fit the endpoint pools to a new table without dropping open connections.

        A pool belongs to one endpoint *and* one set of connection settings (idleTimeout,
        maxRequestsPerConnection), as Envoy keeps a pool per cluster: two subsets or services
        reaching the same endpoint with different DestinationRule settings get a pool each,
        and equal settings share one. A pool whose settings no cluster uses any more takes
        over settings that have no pool yet (its connections stay open and follow the new
        settings from the next request), else it closes. Every pool also takes the endpoint's
        current expected identity."""
        want: dict[tuple[str, bool], set[tuple[float, int]]] = {}
        eps: dict[tuple[str, bool], Endpoint] = {}
        by_cluster: dict[str, tuple[float, int]] = {}
        for c in (*table.clusters.values(), self.inbound_cluster):
            settings = by_cluster[c.name] = (c.idle_timeout, c.max_requests_per_connection)
            for ep in c.endpoints:
                want.setdefault((ep.key, ep.tls), set()).add(settings)
                eps[(ep.key, ep.tls)] = ep
        pools, owners = self.pools, self._pool_owners
        moved: dict[tuple[str, bool, bool, float, int], Any] = {}
        for key, p in list(pools.items()):
            k, tls, h2, idle, max_req = key
            wanted = want.get((k, tls))
            if wanted is not None and (idle, max_req) in wanted:
                continue
            del pools[key]
            owner = owners.pop(key, "")
            free = [
                s
                for s in wanted or ()
                if (k, tls, h2, *s) not in pools and (k, tls, h2, *s) not in moved
            ]
            if not free:
                p.close()
                continue
            # the settings of the cluster that made the pool, if that cluster still has it
            mine = by_cluster.get(owner)
            s = mine if mine in free else min(free)
            p.idle_timeout, p.max_requests = s
            moved[(k, tls, h2, *s)] = p
            owners[(k, tls, h2, *s)] = owner
        pools.update(moved)
        for (k, tls, _h2, _i, _m), p in pools.items():
            p.verify_peer = self._verifier(eps[(k, tls)])

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
        # one pool per endpoint and connection settings (see _refit_pools)
        key = (ep.key, ep.tls, h2, cluster.idle_timeout, cluster.max_requests_per_connection)
        p = self.pools.get(key)
        if p is None:
            verify = self._verifier(ep)
            self._pool_owners[key] = cluster.name
            if h2:
                from proxy.server.h2.client import H2UpstreamPool

                p = self.pools[key] = H2UpstreamPool(
                    ep.address,
                    ep.port,
                    self.client_ssl_h2 if ep.tls else None,
                    cluster.idle_timeout,
                    cluster.max_requests_per_connection,
                    verify,
                )
                return p
            p = self.pools[key] = EndpointPool(
                ep.address,
                ep.port,
                self.client_ssl if ep.tls else None,
                cluster.idle_timeout,
                cluster.max_requests_per_connection,
                verify,
            )
        return p

    def _verifier(self, ep: Endpoint) -> Callable[[Any], bool] | None:
        """The check of an mTLS upstream's identity: the server must be the identity the
        destination service should have (its SPIFFE ID from the registry)."""
        if not (ep.tls and ep.spiffe_id and self.peer_identity is not None):
            return None
        expected = ep.spiffe_id
        ident = self.peer_identity

        def verify(sslobj: Any) -> bool:
            return ident(sslobj) == expected

        return verify

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


def monotonic() -> float:
    return time.monotonic()
