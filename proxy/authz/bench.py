"""Microbenchmark of the inbound authorization cost: µs per ``Authorizer.check()`` (and per
``normalize_path``) for a realistic policy set, 3 policies with 5 rules in all.

Run: ``python -m proxy.authz.bench``. Not a test; numbers depend on the machine.
"""

from __future__ import annotations

import timeit
from functools import partial

from control_plane.api.resources import from_dict
from proxy.authz.engine import RequestAttrs, compile_policies, merged_header_getter
from proxy.authz.normalize import normalize_path


def _policy(name: str, spec: dict, ns: str = "default") -> object:
    return from_dict({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                      "metadata": {"name": name, "namespace": ns}, "spec": spec})  # fmt: skip


POLICIES = [
    # mesh-wide: nobody reaches /admin unless from the ops namespace (1 rule)
    _policy("deny-admin", {"action": "DENY", "rules": [
        {"from": [{"source": {"notNamespaces": ["ops"]}}],
         "to": [{"operation": {"paths": ["/admin*", "/debug/{**}"]}}]},
    ]}, ns="istio-system"),
    # the workload: orders may read and reserve, payment may read (2 rules)
    _policy("inventory", {"selector": {"matchLabels": {"app": "inventory"}}, "rules": [
        {"from": [{"source": {"principals": ["cluster.local/ns/default/sa/orders"]}}],
         "to": [{"operation": {"methods": ["GET", "POST"], "paths": ["/items*", "/reserve"]}}]},
        {"from": [{"source": {"principals": ["cluster.local/ns/default/sa/payment"]}}],
         "to": [{"operation": {"methods": ["GET"], "paths": ["/items/{*}"]}}]},
    ]}),
    # namespace: health checks from the node network, canary header from the monitoring ns (2)
    _policy("probes", {"rules": [
        {"from": [{"source": {"ipBlocks": ["10.0.0.0/8", "192.168.0.0/16"]}}],
         "to": [{"operation": {"ports": ["8080"], "paths": ["/healthz", "/ready"]}}]},
        {"from": [{"source": {"namespaces": ["monitoring"]}}],
         "when": [{"key": "request.headers[x-canary]", "values": ["true"]}]},
    ]}),
]  # fmt: skip


def main() -> None:
    authz = compile_policies(POLICIES, "default", {"app": "inventory", "version": "v1"})
    headers = merged_header_getter([("host", "inventory"), ("x-canary", "true")])
    cases = {
        "allowed, 1st ALLOW rule": RequestAttrs(
            source_principal="cluster.local/ns/default/sa/orders", source_ip="10.1.2.3",
            method="GET", host="inventory", port=8080, path="/items/42", headers=headers,
            mtls=True),
        "allowed, last rule (header)": RequestAttrs(
            source_principal="cluster.local/ns/monitoring/sa/prom", source_ip="172.16.0.9",
            method="GET", host="inventory", port=8080, path="/metrics", headers=headers,
            mtls=True),
        "denied by DENY": RequestAttrs(
            source_principal="cluster.local/ns/default/sa/orders", source_ip="10.1.2.3",
            method="GET", host="inventory", port=8080, path="/admin/users", headers=headers,
            mtls=True),
        "denied, nothing matched": RequestAttrs(
            source_principal=None, source_ip="172.16.0.9", method="DELETE", host="inventory",
            port=8080, path="/items/42", headers=headers, mtls=False),
    }  # fmt: skip
    n = 200_000

    def noop(r: object) -> bool:
        return True

    ref = min(timeit.repeat(partial(noop, None), number=n, repeat=5)) / n * 1e6
    print(f"reference: calling an empty Python function costs {ref:.3f} µs here")
    for label, req in cases.items():
        d = authz.check(req)
        best = min(timeit.repeat(partial(authz.check, req), number=n, repeat=5))
        print(f"check  {label:30s} {best / n * 1e6:6.2f} µs  -> allowed={d.allowed} {d.reason}")
    for path in ("/items/42", "//a/./b/../%63?x=1"):
        best = min(timeit.repeat(partial(normalize_path, path), number=n, repeat=5))
        print(f"normalize_path {path!r:24s} {best / n * 1e6:6.2f} µs -> {normalize_path(path)!r}")


if __name__ == "__main__":
    main()
