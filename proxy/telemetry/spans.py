"""Span export: turn a finished request's :class:`TraceContext` into an OpenTelemetry span.

The proxy does not use the SDK's ``Tracer``: its span ids are decided on the request path by
:mod:`proxy.telemetry.tracing` (and already sent upstream in ``traceparent``), and whether to keep
a span is decided only when the request ends (tail decision: sampled, failed, or slow). So
:meth:`SpanExporterBridge.record_span` builds an SDK ``ReadableSpan`` with exactly those ids and
hands it to a ``BatchSpanProcessor`` (a background thread that batches and exports), which sends
it with the OTLP/HTTP protobuf exporter.

Configuration is OpenTelemetry's standard environment (research 4.8): ``OTEL_SDK_DISABLED``,
``OTEL_TRACES_EXPORTER`` (``otlp`` or ``none``), ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (used as
is) or ``OTEL_EXPORTER_OTLP_ENDPOINT`` (``/v1/traces`` appended), ``OTEL_TRACES_SAMPLER`` /
``OTEL_TRACES_SAMPLER_ARG``, ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``, and the
exporter's and batch processor's own variables (headers, timeout, compression, certificates,
``OTEL_BSP_*``), which the SDK reads itself. Without an endpoint nothing is exported and
:meth:`~SpanExporterBridge.record_span` returns at once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from proxy.telemetry.tracing import ParentBasedRatio, TraceContext

__all__ = ["SpanExporterBridge", "is_error", "sampler_from_env", "span_name"]

_log = logging.getLogger("meshlet.telemetry.spans")

#: Requests slower than this are exported even when the trace is not sampled.
DEFAULT_SLOW_THRESHOLD_S = 1.0

_KNOWN_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
)


def span_name(method: str, target: str | None = None) -> str:
    """``{method} {target}`` per the HTTP semantic conventions (``target`` is the route template,
    never the raw path); ``HTTP`` for an unknown method."""
    m = method if method in _KNOWN_METHODS else "HTTP"
    return f"{m} {target}" if target else m


def is_error(kind: str, status_code: int) -> bool:
    """Span status per the HTTP conventions: 5xx fails both kinds, 4xx only client spans; no
    response at all (0) is a failure."""
    return status_code >= 500 or status_code == 0 or (status_code >= 400 and kind == "client")


def sampler_from_env(env: Mapping[str, str], default_ratio: float = 1.0) -> ParentBasedRatio:
    """The head sampler named by ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``.

    Unset means ``default_ratio`` parent-based (pass MeshConfig's tracing sampling here; the
    OpenTelemetry default is ``parentbased_always_on``). Unknown samplers and invalid arguments are
    logged and ignored, as the specification asks.
    """
    name = (env.get("OTEL_TRACES_SAMPLER") or "").strip().lower()
    ratio = default_ratio
    arg = env.get("OTEL_TRACES_SAMPLER_ARG")
    if name.endswith("traceidratio"):
        ratio = 1.0
        if arg:
            try:
                r = float(arg)
                if not 0.0 <= r <= 1.0:
                    raise ValueError
                ratio = r
            except ValueError:
                _log.warning("ignoring invalid OTEL_TRACES_SAMPLER_ARG %r", arg)
    table = {
        "": (default_ratio, True),
        "always_on": (1.0, False),
        "always_off": (0.0, False),
        "traceidratio": (ratio, False),
        "parentbased_always_on": (1.0, True),
        "parentbased_always_off": (0.0, True),
        "parentbased_traceidratio": (ratio, True),
    }
    if name not in table:
        _log.warning("unsupported OTEL_TRACES_SAMPLER %r; using parentbased_always_on", name)
        return ParentBasedRatio(1.0)
    r, parent = table[name]
    return ParentBasedRatio(r, respect_parent=parent)


def _traces_endpoint(env: Mapping[str, str]) -> str | None:
    ep = (env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or "").strip()
    if ep:
        return ep  # used as is (no path appended)
    base = (env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "").strip()
    if base:
        return base.rstrip("/") + "/v1/traces"
    return None


def _resource_attributes(env: Mapping[str, str], service_name: str | None) -> dict[str, str]:
    attrs: dict[str, str] = {}
    for item in (env.get("OTEL_RESOURCE_ATTRIBUTES") or "").split(","):
        k, sep, v = item.partition("=")
        if sep and k.strip():
            attrs[k.strip()] = unquote(v.strip())
    if service_name and "service.name" not in attrs:
        attrs["service.name"] = service_name
    if env.get("OTEL_SERVICE_NAME"):
        attrs["service.name"] = env["OTEL_SERVICE_NAME"]  # overrides the resource attribute
    return attrs


class SpanExporterBridge:
    """Exports the proxy's spans with the OpenTelemetry SDK, with ids chosen by the proxy.

    ``enabled`` is False when nothing is configured; then :meth:`record_span` is free and callers
    should skip building attributes. ``sampler`` is the head sampler for
    :func:`proxy.telemetry.tracing.new_context`.

    ``exporter`` replaces the OTLP exporter (tests, or another SDK exporter); ``env`` replaces
    ``os.environ`` for the variables this class reads.
    """

    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        service_name: str | None = None,
        default_ratio: float = 1.0,
        slow_threshold_s: float = DEFAULT_SLOW_THRESHOLD_S,
        exporter: Any = None,
        schedule_delay_millis: float | None = None,
    ) -> None:
        env = os.environ if env is None else env
        self.sampler = sampler_from_env(env, default_ratio)
        self.slow_threshold_ns = int(slow_threshold_s * 1e9)
        self.endpoint: str | None = None
        self._processor: Any = None
        self.enabled = False

        disabled = (env.get("OTEL_SDK_DISABLED") or "").strip().lower() == "true"
        kind = (env.get("OTEL_TRACES_EXPORTER") or "otlp").strip().lower()
        if exporter is None:
            if disabled or kind == "none":
                return
            if kind != "otlp":
                _log.warning("unsupported OTEL_TRACES_EXPORTER %r; spans are not exported", kind)
                return
            self.endpoint = _traces_endpoint(env)
            if self.endpoint is None:
                return
            protocol = (
                env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf"
            ).strip()
            if protocol != "http/protobuf":
                _log.warning("OTLP protocol %r is not available; using http/protobuf", protocol)
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=self.endpoint)

        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        self._ReadableSpan = ReadableSpan
        self._SpanContext = SpanContext
        self._flags = TraceFlags(TraceFlags.SAMPLED)  # the processor drops unsampled spans
        self._kinds = {"server": SpanKind.SERVER, "client": SpanKind.CLIENT}
        self._status_error = Status(StatusCode.ERROR)
        self._status_unset = Status(StatusCode.UNSET)
        self._scope = InstrumentationScope("meshlet.proxy")
        self.resource = Resource.create(_resource_attributes(env, service_name))
        self._processor = BatchSpanProcessor(exporter, schedule_delay_millis=schedule_delay_millis)
        self.exporter = exporter
        self.enabled = True

    def wants(self, ctx: TraceContext, error: bool, duration_ns: int) -> bool:
        """The tail decision: keep sampled traces, failures and slow requests."""
        return self.enabled and (bool(ctx.sampled) or error or duration_ns > self.slow_threshold_ns)

    def record_span(
        self,
        ctx: TraceContext,
        kind: str,
        name: str,
        start_ns: int,
        end_ns: int,
        attributes: dict[str, Any],
        error: bool,
    ) -> None:
        """Queue one finished span with exactly ``ctx``'s ids (times are Unix epoch ns).

        Called at the end of a request; a span that is not sampled, not failed and not slow is
        dropped here. If ``error`` and ``error.type`` is absent, it is set from
        ``http.response.status_code`` (the semantic conventions' choice), else ``_OTHER``.
        """
        if self._processor is None:
            return
        if not (ctx.sampled or error or end_ns - start_ns > self.slow_threshold_ns):
            return
        SpanContext = self._SpanContext
        context = SpanContext(int(ctx.trace_id, 16), int(ctx.span_id, 16), False, self._flags)
        parent = None
        if ctx.parent_id:
            parent = SpanContext(int(ctx.trace_id, 16), int(ctx.parent_id, 16), True, self._flags)
        if error:
            attributes = dict(attributes)
            if "error.type" not in attributes:
                code = attributes.get("http.response.status_code")
                attributes["error.type"] = str(code) if code else "_OTHER"
        span = self._ReadableSpan(
            name=name,
            context=context,
            parent=parent,
            resource=self.resource,
            attributes=attributes,
            kind=self._kinds[kind],
            status=self._status_error if error else self._status_unset,
            start_time=start_ns,
            end_time=end_ns,
            instrumentation_scope=self._scope,
        )
        self._processor.on_end(span)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Export everything queued (blocking; call it off the event loop)."""
        if self._processor is None:
            return True
        return bool(self._processor.force_flush(timeout_millis))

    def shutdown(self) -> None:
        """Flush and stop the export thread (blocking; call it off the event loop)."""
        if self._processor is not None:
            self._processor.shutdown()
            self._processor = None
            self.enabled = False
