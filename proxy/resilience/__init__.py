"""Sans-I/O resilience primitives for the sidecar: deadlines, retry policy and budget, circuit
breaker, bulkhead, rate limiter, outlier detection, hedging and fault injection.

Nothing here does I/O, spawns tasks or reads the wall clock on its own: time comes from an
injected `clock` and randomness from an injected `random.Random`, so every decision is testable
with a fake clock. Each module's docstring states the semantics chosen and where they differ
from Istio/Envoy, Linkerd or Resilience4j.
"""
