"""Endpoint pools outlive a config swap (their open connections are kept), but take the new
DestinationRule connection settings: a ``maxRequestsPerConnection`` or ``idleTimeout`` applied
after the pool exists is in force for its next connection."""

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
  endpoints: [{address: 127.0.0.1, ports: {http: 9}}]
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
    assert rt.pool(ep, cluster) is pool  # the same pool: its open connections stay
    for p in (pool, h2pool):
        assert p.max_requests == 3 and p.idle_timeout == 7.0
    rt.close()
