"""Endpoint pools outlive a config swap (their open connections are kept), but take the new
DestinationRule connection settings: a ``maxRequestsPerConnection`` or ``idleTimeout`` applied
after the pool exists is in force for its next connection. Clusters reaching one endpoint with
different settings (two subsets, two services) get a pool each, as Envoy's pool per cluster."""

from __future__ import annotations

from control_plane.api.resources import load_text
from proxy.routes.compile import compile_table
from proxy.server.runtime import Runtime

SE = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: inventory}
spec:
  hosts: [inventory]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http: 9}, labels: {version: v1, track: stable}}]
"""
DR = """---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: inventory}
spec:
  host: inventory
  trafficPolicy: {connectionPool: {http: {maxRequestsPerConnection: 3, idleTimeout: 7s}}}
"""


def _table(rt: Runtime, text: str, version: str):
    return compile_table(load_text(text), [], "default", rt.labels, version)


async def test_a_later_destination_rule_reaches_existing_pools():
    rt = Runtime("orders", "default", "v1", {"app": "orders"}, 8080)
    rt.swap(_table(rt, SE, "1"))
    cluster = next(c for c in rt.table.clusters.values() if c.endpoints)
    ep = cluster.endpoints[0]
    pool = rt.pool(ep, cluster)
    h2pool = rt.pool(ep, cluster, h2=True)
    assert pool.max_requests == 0 and h2pool.max_requests == 0

    rt.swap(_table(rt, SE + DR, "2"))
    cluster = next(c for c in rt.table.clusters.values() if c.endpoints)
    assert rt.pool(ep, cluster) is pool  # the same pool: its open connections stay
    assert rt.pool(ep, cluster, h2=True) is h2pool
    for p in (pool, h2pool):
        assert p.max_requests == 3 and p.idle_timeout == 7.0
    rt.close()


SUBSETS = (
    SE
    + """---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: inventory}
spec:
  host: inventory
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {connectionPool: {http: {maxRequestsPerConnection: 1}}}
  - name: stable
    labels: {track: stable}
    trafficPolicy: {connectionPool: {http: {maxRequestsPerConnection: %d}}}
"""
)


def _subsets(rt: Runtime) -> dict[str, object]:
    return {c.subset: c for c in rt.table.clusters.values() if c.endpoints and c.subset}


async def test_subsets_with_different_settings_get_a_pool_each():
    rt = Runtime("orders", "default", "v1", {"app": "orders"}, 8080)
    rt.swap(_table(rt, SUBSETS % 50, "1"))
    subsets = _subsets(rt)
    v1, stable = subsets["v1"], subsets["stable"]
    ep = v1.endpoints[0]
    assert stable.endpoints[0].key == ep.key  # one endpoint, in both subsets
    p1, p2 = rt.pool(ep, v1), rt.pool(ep, stable)
    assert p1 is not p2
    assert (p1.max_requests, p2.max_requests) == (1, 50)

    # the stable subset now has v1's settings: the two share v1's pool; stable's old pool
    # (its connections open) goes to the settings still without one: the whole service's
    rt.swap(_table(rt, SUBSETS % 1, "2"))
    subsets = _subsets(rt)
    assert rt.pool(ep, subsets["v1"]) is rt.pool(ep, subsets["stable"]) is p1
    whole = next(c for c in rt.table.clusters.values() if c.endpoints and not c.subset)
    assert rt.pool(ep, whole) is p2 and p2.max_requests == 0
    assert len(rt.pools) == 2

    # and apart again: the shared pool stays with one, a new pool serves the other
    rt.swap(_table(rt, SUBSETS % 7, "3"))
    subsets = _subsets(rt)
    assert rt.pool(ep, subsets["v1"]) is p1 and p1.max_requests == 1
    assert rt.pool(ep, subsets["stable"]).max_requests == 7
    rt.close()


async def test_a_pool_whose_settings_changed_keeps_its_connections_and_endpoint_gone_closes():
    rt = Runtime("orders", "default", "v1", {"app": "orders"}, 8080)
    rt.swap(_table(rt, SUBSETS % 50, "1"))
    subsets = _subsets(rt)
    ep = subsets["stable"].endpoints[0]
    p2 = rt.pool(ep, subsets["stable"])
    rt.swap(_table(rt, SUBSETS % 60, "2"))  # settings changed, nothing else uses 60: moved
    assert rt.pool(ep, _subsets(rt)["stable"]) is p2 and p2.max_requests == 60
    rt.swap(_table(rt, "", "3"))  # the endpoint is gone
    assert rt.pools == {}
    rt.close()
