"""Telemetry: Istio-named metrics on pre-bound series, trace propagation and spans, access log.

Submodules: :mod:`.metrics`, :mod:`.tracing` (request path, pure), :mod:`.spans` (OpenTelemetry
SDK export), :mod:`.access_log`. Nothing is imported here so that importing one stays cheap.
"""
