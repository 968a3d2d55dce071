"""Spec schema of the ``Canary`` kind (``meshlet.dev/v1alpha1``) and the plan derived from it.

A Canary moves a service's traffic from a ``stable`` subset to a ``canary`` subset of its
DestinationRule step by step, checking the canary's live golden metrics at every ``interval``
(Flagger's analysis, with Argo Rollouts' lesson that no data must pause, never fail). Every
field is enforced by the controller (``control_plane/canary/``) or refused here.

:func:`plan` turns a validated spec into the numbers the controller uses (seconds, the list of
weights), so the controller never parses user strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from control_plane.api.networking import HOST
from control_plane.api.schema import (
    Ctx,
    dns1123_label,
    dns1123_subdomain,
    duration,
    enum,
    index,
    integer,
    join,
    list_of,
    map_of,
    number,
    obj,
    parse_duration,
    string,
)

WEBHOOK_TYPES = ("confirm-rollout", "confirm-promotion")
DEFAULT_WEBHOOK_TIMEOUT_S = 5.0


_name = string(check=dns1123_label)
_vs_name = string(check=dns1123_subdomain)


def _url(value: Any, path: str, ctx: Ctx) -> None:
    if not isinstance(value, str) or not value:
        ctx.error(path, "must be a non-empty string")
        return
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        ctx.error(path, f"{value!r} must be an http:// or https:// URL with a host")


def _steps(value: Any, path: str, ctx: Ctx) -> None:
    if not isinstance(value, list) or not value:
        ctx.error(path, "must be a non-empty list of weights")
        return
    prev = 0
    for i, w in enumerate(value):
        where = index(path, i)
        if isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= 100:
            ctx.error(where, "must be an integer between 1 and 100")
            return
        if w <= prev:
            ctx.error(where, f"{w} must be more than the step before it ({prev}): weights only "
                      "increase")
            return
        prev = w


SUCCESS_RATE = obj(
    {
        # percent of requests that are not failures (5xx, resets, gRPC errors)
        "min": number(0, 100),
        # percentage points the canary may be below stable over the same interval
        "maxDropFromStable": number(0, 100),
    },
    at_least_one=[("min", "maxDropFromStable")],
    name="Canary.SuccessRate",
)
LATENCY_P99 = obj(
    {
        "max": duration(0.001),
        # the canary's p99 may be at most this many times stable's over the same interval
        "maxRatioToStable": number(1.0),
    },
    at_least_one=[("max", "maxRatioToStable")],
    name="Canary.LatencyP99",
)
WEBHOOK = obj(
    {
        "name": _name,
        "type": enum(*WEBHOOK_TYPES),
        "url": _url,
        "timeout": duration(0.001, 60.0),
        "metadata": map_of(string()),
    },
    required=["name", "type", "url"],
    name="Canary.Webhook",
)


def _analysis_check(value: dict, path: str, ctx: Ctx) -> None:
    """Cross-field rules: one way to give the steps; a maxWeight the steps can reach; relative
    checks need stable traffic, so stable must keep some at every step."""
    steps = value.get("stepWeights")
    step = value.get("stepWeight")
    max_w = value.get("maxWeight")
    if steps is not None and max_w is not None and max_w != steps[-1]:
        ctx.error(join(path, "maxWeight"), f"{max_w} is not the last of stepWeights "
                  f"({steps[-1]}); leave maxWeight out when stepWeights is set")
    if step is not None and max_w is not None and step > max_w:
        ctx.error(join(path, "stepWeight"), f"{step} is more than maxWeight ({max_w})")
    checks = value.get("checks") or {}
    relative = ("maxDropFromStable" in (checks.get("successRate") or {})
                or "maxRatioToStable" in (checks.get("latencyP99") or {}))
    top = steps[-1] if steps is not None else (max_w if max_w is not None else 100)
    if relative and top >= 100:
        where = "stepWeights" if steps is not None else "maxWeight"
        ctx.error(join(path, where), "a check relative to stable needs stable traffic at every "
                  "step: the last step must be below 100 (promotion then sends the rest)")
    names: dict[str, str] = {}
    for i, hook in enumerate(value.get("webhooks") or ()):
        where = join(index(join(path, "webhooks"), i), "name")
        if hook.get("name") in names:
            ctx.error(where, f"{hook['name']!r} is also the name of {names[hook['name']]}")
        names[hook.get("name")] = index(join(path, "webhooks"), i)


ANALYSIS = obj(
    {
        "interval": duration(0.1, 3600.0),
        "stepWeight": integer(1, 100),
        "stepWeights": _steps,
        "maxWeight": integer(1, 100),
        "threshold": integer(1, 100),
        "minRequests": integer(1),
        "checks": obj(
            {"successRate": SUCCESS_RATE, "latencyP99": LATENCY_P99},
            at_least_one=[("successRate", "latencyP99")],
            name="Canary.Checks",
        ),
        "webhooks": list_of(WEBHOOK, nonempty=True),
    },
    required=["interval", "threshold", "minRequests", "checks"],
    exactly_one=[("stepWeight", "stepWeights")],
    checks=[_analysis_check],
    name="Canary.Analysis",
)


def _canary_check(value: dict, path: str, ctx: Ctx) -> None:
    if value.get("stable") == value.get("canary"):
        ctx.error(join(path, "canary"), f"{value['canary']!r} is also the stable subset")


CANARY = obj(
    {
        "host": HOST,
        "stable": _name,
        "canary": _name,
        "virtualService": _vs_name,
        "analysis": ANALYSIS,
    },
    required=["host", "stable", "canary", "analysis"],
    checks=[_canary_check],
    name="Canary",
)


@dataclass(frozen=True)
class Webhook:
    name: str
    type: str
    url: str
    timeout_s: float
    metadata: dict


@dataclass(frozen=True)
class Plan:
    """A validated Canary spec in the controller's units."""

    host: str
    stable: str
    canary: str
    virtual_service: str | None
    interval_s: float
    steps: tuple[int, ...]
    threshold: int
    min_requests: int
    success_min: float | None  # percent
    success_max_drop: float | None  # percentage points below stable
    p99_max_ms: float | None
    p99_max_ratio: float | None
    webhooks: tuple[Webhook, ...]

    def hooks(self, kind: str) -> tuple[Webhook, ...]:
        return tuple(h for h in self.webhooks if h.type == kind)


def step_weights(analysis: dict) -> tuple[int, ...]:
    """The weights the canary goes through: ``stepWeights`` as written, or ``stepWeight``,
    2 x ``stepWeight``... up to ``maxWeight`` (default 100), whose value is always the last step
    even when it is not a multiple (Flagger #189)."""
    if analysis.get("stepWeights"):
        return tuple(int(w) for w in analysis["stepWeights"])
    step = int(analysis["stepWeight"])
    top = int(analysis.get("maxWeight") or 100)
    out = list(range(step, top + 1, step))
    if not out or out[-1] != top:
        out.append(top)
    return tuple(out)


def plan(spec: dict) -> Plan:
    a = spec["analysis"]
    checks = a.get("checks") or {}
    sr = checks.get("successRate") or {}
    lat = checks.get("latencyP99") or {}
    return Plan(
        host=str(spec["host"]),
        stable=str(spec["stable"]),
        canary=str(spec["canary"]),
        virtual_service=spec.get("virtualService"),
        interval_s=parse_duration(a["interval"]),
        steps=step_weights(a),
        threshold=int(a["threshold"]),
        min_requests=int(a["minRequests"]),
        success_min=float(sr["min"]) if "min" in sr else None,
        success_max_drop=float(sr["maxDropFromStable"]) if "maxDropFromStable" in sr else None,
        p99_max_ms=parse_duration(lat["max"]) * 1000.0 if "max" in lat else None,
        p99_max_ratio=float(lat["maxRatioToStable"]) if "maxRatioToStable" in lat else None,
        webhooks=tuple(
            Webhook(str(h["name"]), str(h["type"]), str(h["url"]),
                    parse_duration(h["timeout"]) if h.get("timeout")
                    else DEFAULT_WEBHOOK_TIMEOUT_S,
                    dict(h.get("metadata") or {}))
            for h in a.get("webhooks") or ()
        ),
    )
