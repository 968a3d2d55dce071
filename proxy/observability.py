"""Connects the data path to metrics, the access log and trace export.

The request path calls one function, :meth:`Telemetry.record`, when a request ends. Metric
series are bound per (reporter, cluster, endpoint) the first time that combination is seen
under a config version and kept in a dict, so a request costs one tuple lookup plus the
series' own ``record``; the access log is skipped entirely when it is off. When the sidecar
reports to a control plane, a per-route latency histogram adds a lookup and an increment
(``route_counts``; the bucket index comes from the series' own ``record``), and a live tap
costs one ``is not None`` check while none is on.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from prometheus_client import CollectorRegistry

from control_plane.api.hosts import service_name, service_namespace
from proxy import __version__, _accel
from proxy.telemetry.metrics import (
    CONTENT_TYPE,
    ENVOY_BUCKETS_MS,
    MeshletMetrics,
    RequestMetrics,
    render,
)

_ND = len(ENVOY_BUCKETS_MS) + 1
#: Most (service, route) histograms kept for the control plane's route view.
MAX_ROUTE_COUNTS = 2000

# head.version -> the access log's protocol, as Envoy's %PROTOCOL% writes it
_PROTOCOL = {20: "HTTP/2", 11: "HTTP/1.1", 10: "HTTP/1.0"}


def _address(peer: tuple[str, int]) -> str | None:
    """Envoy's %DOWNSTREAM_REMOTE_ADDRESS%: ``ip:port`` (``[ip]:port`` for IPv6); None unknown."""
    ip = peer[0]
    if not ip:
        return None
    return ("[" + ip + "]" if ":" in ip else ip) + ":" + str(peer[1])


class Telemetry:
    def __init__(self, sidecar: Any) -> None:
        self.sidecar = sidecar
        rt = sidecar.runtime
        self.rt = rt
        self.registry = CollectorRegistry()
        self.requests = RequestMetrics(self.registry)
        self.meshlet = MeshletMetrics(
            self.registry, version=__version__, fastpath=_accel.fastpath()
        )
        self._series: dict[tuple[str, str, str], Any] = {}
        self._local: dict[tuple[int, str], Any] = {}
        self.access_log: Any = None
        # Set while a live tap runs (proxy.telemetry.report.Tap), else None: one check per request.
        self.tap: Any = None
        # (service, route) -> [latency buckets..., failures]; only while reporting to a control
        # plane (proxy.telemetry.uplink), so a standalone sidecar pays nothing for it.
        self.route_counts: dict[tuple[str, str], list] | None = None
        if sidecar.opts.access_log:
            from proxy.telemetry.access_log import AccessLog

            self.access_log = AccessLog(stream=sys.stdout)
        rt.recorder = self.record
        rt.local_reply_counter = self.count_local_reply
        rt.protection_counter = self.count_protection
        rt.retry_counter = self.count_retry
        rt.overflow_counter = self.count_overflow
        self._overflow: dict[tuple[str, str], Any] = {}
        rt.policies.on_new_destination = self.watch_destination
        from proxy.telemetry.spans import SpanExporterBridge

        self.spans = SpanExporterBridge(service_name=f"{rt.service}.{rt.namespace}")
        rt.sampler = self.spans.sampler
        self._sampling = 1.0  # the ratio the sampler was built with
        self.workload = rt.service + ("-" + rt.version if rt.version else "")
        if rt.config_version:
            self.meshlet.set_config_version(rt.config_version)
            self._follow_sampling()

    def on_config(self, version: str, ok: bool) -> None:
        self.meshlet.config_applies.labels(result="ack" if ok else "nack").inc()
        if ok:
            self.meshlet.set_config_version(version)
            self._follow_sampling()

    def _follow_sampling(self) -> None:
        """MeshConfig ``tracing.sampling`` (a percentage, as Istio's) is the head sampler's
        ratio for requests that arrive without a sampling decision; ``OTEL_TRACES_SAMPLER``
        still overrides it. Unset keeps the default (every trace)."""
        from proxy.telemetry.spans import sampler_from_env

        mesh = [r for r in self.sidecar.resources if getattr(r, "kind", "") == "MeshConfig"]
        pct = (mesh[0].spec.get("tracing") or {}).get("sampling") if mesh else None
        ratio = 1.0 if pct is None else float(pct) / 100.0
        if ratio != self._sampling:
            self._sampling = ratio
            self.spans.sampler = self.rt.sampler = sampler_from_env(os.environ, ratio)

    def count_local_reply(self, status: int, flag: str) -> None:
        c = self._local.get((status, flag))
        if c is None:
            c = self._local[(status, flag)] = self.meshlet.local_replies.labels(
                code=str(status), flag=flag
            )
        c.inc()

    def count_protection(self, subject: Any, kind: str) -> None:
        """Rare events (a rejection, a skipped retry, an ejection): label lookup is fine here."""
        m = self.meshlet
        if kind == "ejection":
            m.outlier_ejections.labels(
                destination_service=getattr(subject, "service", "unknown")
            ).inc()
            return
        if kind == "inbound_rate_limited":  # subject: (policy, limit), from InboundLimits.check
            m.inbound_rate_limited.labels(policy=subject[0], limit=subject[1]).inc()
            return
        svc = subject.service
        if kind == "rate_limited":
            m.rate_limited.labels(destination_service=svc).inc()
        elif kind == "breaker_open":
            m.circuit_breaker_not_permitted.labels(destination_service=svc).inc()
        elif kind == "bulkhead_full":
            m.bulkhead_rejected.labels(destination_service=svc).inc()
        elif kind == "budget_skipped":
            m.retry_budget_skipped.labels(destination_service=svc).inc()
        elif kind == "hedge":
            m.hedges.labels(destination_service=svc).inc()

    def count_overflow(self, service: str, kind: str) -> None:
        c = self._overflow.get((service, kind))
        if c is None:
            c = self._overflow[(service, kind)] = self.meshlet.upstream_overflow.labels(
                destination_service=service, kind=kind
            )
        c.inc()

    def count_retry(self, dest: Any, outcome: Any) -> None:
        svc = dest.service if dest is not None else self.rt.local_service_fqdn
        self.meshlet.retries.labels(destination_service=svc, reason=outcome.name.lower()).inc()

    def watch_destination(self, dest: Any) -> None:
        """Keep meshlet_circuit_breaker_state in step with the breaker's transitions."""
        br = dest.breaker
        if br is None:
            return
        svc = dest.service
        self.meshlet.set_breaker_state(svc, br.state)
        cbs = getattr(br, "on_state_change", None)
        if isinstance(cbs, list):
            cbs.append(lambda *a: self.meshlet.set_breaker_state(svc, br.state))

    def _bind(self, reporter: str, ex: Any, key: tuple[str, str, str]) -> Any:
        rt = self.rt
        ep = ex.endpoint
        labels = ep.labels if ep is not None else {}
        if reporter == "outbound":
            dest_app = service_name(ex.service)
            dest_version = labels.get("version", "unknown")
            s = self.requests.series(
                reporter="source",
                source_workload=self.workload,
                source_workload_namespace=rt.namespace,
                source_principal=rt.spiffe_id,
                source_app=rt.service,
                source_version=rt.version or "unknown",
                source_canonical_service=rt.service,
                source_canonical_revision=rt.version or "latest",
                destination_workload=dest_app
                + ("-" + dest_version if dest_version != "unknown" else ""),
                destination_workload_namespace=service_namespace(ex.service),
                destination_principal=ex.peer or "unknown",
                destination_app=dest_app,
                destination_version=dest_version,
                destination_service=ex.service,
                destination_service_name=dest_app,
                destination_service_namespace=service_namespace(ex.service),
                destination_canonical_service=dest_app,
                destination_canonical_revision=dest_version
                if dest_version != "unknown"
                else "latest",
                request_protocol="http",
                connection_security_policy="unknown",
            )
        else:
            peer = ex.peer
            src_ns = peer.split("/ns/", 1)[1].split("/", 1)[0] if "/ns/" in peer else "unknown"
            src_sa = peer.rsplit("/sa/", 1)[1] if "/sa/" in peer else "unknown"
            s = self.requests.series(
                reporter="destination",
                source_workload=src_sa,
                source_workload_namespace=src_ns,
                source_principal=peer or "unknown",
                source_app=src_sa,
                source_canonical_service=src_sa,
                destination_workload=self.workload,
                destination_workload_namespace=rt.namespace,
                destination_principal=rt.spiffe_id if ex.mtls else "unknown",
                destination_app=rt.service,
                destination_version=rt.version or "unknown",
                destination_service=rt.local_service_fqdn,
                destination_service_name=rt.service,
                destination_service_namespace=rt.namespace,
                destination_canonical_service=rt.service,
                destination_canonical_revision=rt.version or "latest",
                request_protocol="http",
                connection_security_policy="mutual_tls" if ex.mtls else "none",
            )
        self._series[key] = s
        return s

    def record(self, ex: Any, head: Any, reporter: str) -> None:
        key = (reporter, ex.cluster, ex.upstream if reporter == "outbound" else ex.peer)
        s = self._series.get(key)
        if s is None:
            s = self._bind(reporter, ex, key)
        now = time.monotonic()
        dur = (now - ex.start) * 1000.0
        bucket = s.record(ex.status, ex.flags, ex.grpc, dur, ex.req_bytes, ex.resp_bytes)
        routes = self.route_counts
        if routes is not None and reporter == "outbound" and ex.route:
            rc = routes.get((ex.service, ex.route))
            if rc is None:
                rc = self._route_counter(routes, ex.service, ex.route)
            rc[bucket] += 1
            if ex.status >= 500 or ex.status == 0:
                rc[_ND] += 1
        tap = self.tap
        if tap is not None:
            tap.offer(ex, head, reporter, dur)
        tr = ex.trace
        if tr is not None and self.spans.enabled:
            error = ex.status >= 500 or ex.status == 0
            dur_ns = int(dur * 1e6)
            if self.spans.wants(tr, error, dur_ns):
                self._span(ex, head, reporter, tr, dur_ns, error)
        if self.access_log is not None:
            self.access_log.log(
                start_time=time.time() - (now - ex.start),
                method=head.method,
                authority=head.host,
                path=head.target,
                protocol=_PROTOCOL.get(head.version, "HTTP/1.0"),
                response_code=ex.status,
                response_flags=ex.flags,
                grpc_status=ex.grpc,
                duration_ms=round(dur, 3),
                upstream_service_time_ms=round(ex.upstream_ms, 3),
                bytes_received=ex.req_bytes,
                bytes_sent=ex.resp_bytes,
                upstream_host=ex.upstream,
                upstream_cluster=ex.cluster,
                request_id=ex.request_id,
                trace_id=tr.trace_id if tr is not None else "",
                span_id=tr.span_id if tr is not None else "",
                downstream_remote_address=_address(ex.downstream),
                downstream_peer_principal=ex.peer if reporter == "inbound" else "",
                user_agent=head.get("user-agent") or "",
                x_forwarded_for=head.get("x-forwarded-for") or "",
                route_name=ex.route,
                reporter=reporter,
                attempts=ex.attempts,
            )

    @staticmethod
    def _route_counter(routes: dict, service: str, route: str) -> list:
        counts = [0] * (_ND + 1)
        if len(routes) < MAX_ROUTE_COUNTS:
            routes[(service, route)] = counts
        return counts  # over the cap: counted nowhere, the route view misses it

    def _span(self, ex: Any, head: Any, reporter: str, tr: Any, dur_ns: int, error: bool) -> None:
        end = time.time_ns()
        host, _, port = (head.host or "").partition(":")
        attrs = {
            "http.request.method": head.method,
            "url.path": head.path,
            "url.scheme": "http",
            "server.address": host,
            "server.port": int(port) if port.isdigit() else 80,
            "http.response.status_code": ex.status,
            "network.protocol.version": _PROTOCOL.get(head.version, "HTTP/1.0")[5:],
            "meshlet.response_flags": ex.flags,
            "meshlet.upstream.address": ex.upstream,
            "meshlet.attempt": ex.attempts,
            "meshlet.peer.principal": ex.peer,
            "meshlet.reporter": reporter,
        }
        if head.query:
            attrs["url.query"] = head.query
        if ex.request_id:
            attrs["meshlet.request_id"] = ex.request_id
        kind = "client" if reporter == "outbound" else "server"
        self.spans.record_span(
            tr,
            kind,
            f"{head.method} {ex.route or head.path}" if kind == "client" else f"{head.method}",
            end - dur_ns,
            end,
            attrs,
            error,
        )

    def render(self) -> tuple[bytes, str]:
        return render(self.registry), CONTENT_TYPE

    def close(self) -> None:
        if self.access_log is not None:
            self.access_log.flush()
        if self.spans.enabled:
            self.spans.shutdown()
