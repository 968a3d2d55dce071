"""Host-name forms of mesh services, shared by the sidecar, the control plane and the CLI.

A service ``inventory`` in namespace ``default`` is reachable as ``inventory`` (from its own
namespace), ``inventory.default``, ``inventory.default.svc`` and
``inventory.default.svc.cluster.local``, each with or without a port, as in Kubernetes DNS and
Istio. Everything internal uses the FQDN; the other forms are only accepted on input.
"""

from __future__ import annotations

CLUSTER_SUFFIX = "svc.cluster.local"


def fqdn(host: str, namespace: str = "default") -> str:
    """Canonical FQDN for ``host`` written in ``namespace`` (Istio short-name resolution).

    ``reviews`` -> ``reviews.NS.svc.cluster.local``; ``reviews.other`` ->
    ``reviews.other.svc.cluster.local``; anything with three or more labels (an external name such
    as ``api.example.com`` or an FQDN) is kept as is, lowercased, without a trailing dot.
    """
    h = host.strip().lower().rstrip(".")
    if h.startswith("*"):
        return h
    labels = h.split(".")
    if len(labels) == 1:
        return f"{h}.{namespace}.{CLUSTER_SUFFIX}"
    if len(labels) == 2:
        return f"{h}.{CLUSTER_SUFFIX}"
    if len(labels) == 3 and labels[2] == "svc":
        return f"{h}.cluster.local"
    return h


def aliases(fq: str, local_namespace: str) -> list[str]:
    """Every name under which the app of a sidecar in ``local_namespace`` may call ``fq``."""
    out = [fq]
    suffix = "." + CLUSTER_SUFFIX
    if fq.endswith(suffix):
        base = fq[: -len(suffix)]  # name.ns
        name, _, ns = base.partition(".")
        out += [base + ".svc", base]
        if ns == local_namespace:
            out.append(name)
    return out


def split_host_port(authority: str) -> tuple[str, int]:
    """``host[:port]`` -> (lowercase host, port or 0). IPv6 literals keep their brackets."""
    a = authority.strip().lower()
    if a.startswith("["):
        end = a.find("]")
        host = a[: end + 1]
        rest = a[end + 1 :]
        port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else 0
        return host, port
    host, sep, port = a.rpartition(":")
    if sep and port.isdigit():
        return host, int(port)
    return a, 0


def service_name(fq: str) -> str:
    """``reviews.default.svc.cluster.local`` -> ``reviews``."""
    return fq.split(".", 1)[0]


def service_namespace(fq: str, default: str = "default") -> str:
    labels = fq.split(".")
    return labels[1] if len(labels) >= 2 and fq.endswith("." + CLUSTER_SUFFIX) else default
