"""Request rate, errors and latency per destination service, from the sidecars' own metrics.

Every sidecar's ``/metrics`` is scraped (Istio's ``istio_requests_total`` and
``istio_request_duration_milliseconds`` as reported by the caller's sidecar, ``reporter="source"``,
so a service is seen the way its callers see it); two scrapes some seconds apart give the rate,
the success rate and the p99 of that window (Prometheus' ``histogram_quantile``). A sidecar that
restarted between two scrapes has counters that went down: its new counts are the delta
(Prometheus' counter-reset rule). Optionally the same three figures come from a Prometheus
server instead (``prometheus_url``).

Istio's metrics carry no route label, so the figures of one route (``route_window``) come from
the control plane's golden metrics instead: two reads of its raw 10 s slots
(``/v1/stats/local``), ``seconds`` apart, diffed slot by slot. The windowed views
(``/v1/stats/routes?window=1m``) are sliding sums (what a slot too old to count drops, the
difference of two reads loses), and a slot is 10 s wide, so neither they nor whole slots give
the traffic of an arbitrary window; the slot-wise difference is exactly what the sidecars
reported between the two reads.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

REQUESTS = "istio_requests"  # the parser strips _total from the family name
DURATION = "istio_request_duration_milliseconds"


@dataclass
class Counts:
    """Cumulative (or, after ``minus``, windowed) figures for one destination service."""

    requests: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count

    def minus(self, old: Counts | None) -> Counts:
        if old is None or self.requests < old.requests:
            return Counts(self.requests, self.errors, dict(self.buckets))  # a counter reset
        return Counts(
            self.requests - old.requests,
            max(0.0, self.errors - old.errors),
            {le: max(0.0, c - old.buckets.get(le, 0.0)) for le, c in self.buckets.items()},
        )

    def add(self, other: Counts) -> None:
        self.requests += other.requests
        self.errors += other.errors
        for le, c in other.buckets.items():
            self.buckets[le] = self.buckets.get(le, 0.0) + c


def is_error(code: str) -> bool:
    """A 5xx, or no status at all (the request never got an answer)."""
    return code in ("", "0") or code.startswith("5")


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
_REQ = REQUESTS + "_total{"
_BUCKET = DURATION + "_bucket{"


def parse(text: str) -> dict[str, Counts]:
    """One sidecar's metrics text -> destination service -> cumulative counts (caller's view).
    Only the two series needed are read, line by line (a sidecar's full exposition is large
    and a general parser costs more than the scrape)."""
    out: dict[str, Counts] = {}
    for line in text.splitlines():
        if line.startswith(_REQ):
            bucket = False
        elif line.startswith(_BUCKET):
            bucket = True
        else:
            continue
        if 'reporter="source"' not in line:
            continue
        labels_end = line.rindex("}")
        labels = dict(_LABEL.findall(line, 0, labels_end))
        try:
            value = float(line[labels_end + 1 :].split()[0])
        except (IndexError, ValueError):
            continue
        c = out.setdefault(labels.get("destination_service", "?"), Counts())
        if bucket:
            le = float(labels.get("le", "+Inf"))
            c.buckets[le] = c.buckets.get(le, 0.0) + value
        else:
            c.requests += value
            if is_error(labels.get("response_code", "")):
                c.errors += value
    return out


def scrape(admin: str, timeout: float = 2.0) -> dict[str, Counts] | None:
    """One sidecar, or None when it does not answer (killed, paused, restarting)."""
    try:
        with urllib.request.urlopen(f"http://{admin}/metrics", timeout=timeout) as r:
            return parse(r.read().decode("utf-8", "replace"))
    except (OSError, ValueError):
        return None


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative buckets; None without observations."""
    if not buckets:
        return None
    les = sorted(buckets)
    total = buckets[les[-1]]
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le in les:
        c = buckets[le]
        if c >= rank:
            if math.isinf(le):
                return prev_le  # beyond the last finite bucket: its upper bound, as Prometheus
            if c == prev_c:
                return le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
    return prev_le


def matches(service: str, destination: str) -> bool:
    """``orders`` names ``orders.default.svc.cluster.local``; a full name names itself."""
    return destination == service or destination.startswith(service + ".")


@dataclass
class Window:
    """What callers saw of one service over ``seconds``."""

    seconds: float
    requests: float
    errors: float
    p99_ms: float | None

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def success_rate(self) -> float | None:
        return None if self.requests == 0 else 1.0 - self.errors / self.requests


Sample = tuple[float, dict[str, dict[str, Counts]]]  # (time, sidecar -> service -> counts)


_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="meshlet-scrape")


def take_sample(admins: dict[str, str]) -> Sample:
    """Every sidecar at (nearly) the same moment: scraped in parallel."""
    t = time.time()
    names = list(admins)
    results = list(_POOL.map(scrape, [admins[n] for n in names]))
    return t, {n: r for n, r in zip(names, results, strict=True) if r is not None}


def between(old: Sample, new: Sample, service: str) -> Window:
    """The window from ``old`` to ``new`` for ``service``, summed over every caller. A sidecar
    missing from ``old`` (it was down) counts from zero; missing from ``new``: not counted."""
    total = Counts()
    for sidecar, services in new[1].items():
        before = old[1].get(sidecar, {})
        for dest, counts in services.items():
            if matches(service, dest):
                total.add(counts.minus(before.get(dest)))
    return Window(
        new[0] - old[0],
        total.requests,
        total.errors,
        quantile(0.99, total.buckets) if total.requests else None,
    )


class Timeline:
    """Samples every ``interval`` seconds in a thread, for the report and for probes that run
    in the same process (so a probe reads a window instead of waiting one out)."""

    def __init__(self, admins: Callable[[], dict[str, str]], interval: float = 1.0) -> None:
        self.admins = admins
        self.interval = interval
        self.samples: list[Sample] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="meshlet-timeline", daemon=True)
        self._known: dict[str, str] = {}

    def start(self) -> None:
        self._known = self.admins()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            s = take_sample(self._known)
            with self.lock:
                self.samples.append(s)
            self._stop.wait(self.interval)

    def window(self, service: str, seconds: float) -> Window | None:
        with self.lock:
            if len(self.samples) < 2:
                return None
            new = self.samples[-1]
            old = next(
                (s for s in reversed(self.samples) if new[0] - s[0] >= seconds), self.samples[0]
            )
        return between(old, new, service)

    def series(self, services: Iterable[str]) -> dict[str, list[tuple[float, Window]]]:
        """Per service, one window per consecutive pair of samples."""
        with self.lock:
            samples = list(self.samples)
        return {
            svc: [(b[0], between(a, b, svc)) for a, b in zip(samples, samples[1:], strict=False)]
            for svc in services
        }


# the runner's timeline, when probes run inside `meshlet chaos run`
CURRENT: Timeline | None = None


def window(
    service: str,
    seconds: float,
    admins: Callable[[], dict[str, str]],
    prometheus_url: str | None = None,
) -> Window:
    """The last ``seconds`` of ``service``: from Prometheus if asked, else from the runner's
    timeline, else from two scrapes ``seconds`` apart."""
    if prometheus_url:
        return prometheus_window(prometheus_url, service, seconds)
    if CURRENT is not None:
        w = CURRENT.window(service, seconds)
        if w is not None:
            return w
    known = admins()
    first = take_sample(known)
    time.sleep(seconds)
    return between(first, take_sample(known), service)


#: Longest route window: the control plane's ring holds 600 s of 10 s slots, and a slot that
#: leaves the ring between the two reads would lose what it gained in between.
MAX_ROUTE_WINDOW_S = 540.0

RouteSlots = dict[tuple[str, str], dict[int, list]]  # (service, route) -> slot -> aggregate


def route_slots(exported: dict[str, Any]) -> RouteSlots:
    """The route rings of a ``/v1/stats/local`` answer, by (service, route) and slot index."""
    out: RouteSlots = {}
    for entry in exported.get("routes") or ():
        key = tuple(str(k) for k in entry.get("key") or ())
        if len(key) != 2:
            continue
        slots = out.setdefault((key[0], key[1]), {})
        for slot, agg in entry.get("slots") or ():
            slots[int(slot)] = list(agg)
    return out


def route_between(
    old: tuple[float, dict[str, Any]], new: tuple[float, dict[str, Any]], service: str, route: str
) -> Window:
    """Calls on ``route`` of ``service`` reported to the control plane between two reads of
    ``/v1/stats/local`` (``(time, answer)``): per slot, what it holds now less what it held
    then (a slot new since then counts whole). Percentiles from the merged buckets, as the
    control plane's own views compute them."""
    from control_plane.stats import AGG_LEN, B0, FAIL, REQ, add_into, histogram_quantile, new_agg

    before, after = route_slots(old[1]), route_slots(new[1])
    total = new_agg()
    for key, slots in after.items():
        if not matches(service, key[0]) or key[1] != route:
            continue
        then = before.get(key, {})
        for slot, agg in slots.items():
            if len(agg) != AGG_LEN:
                raise ValueError(f"a route aggregate of {len(agg)} values, not {AGG_LEN}")
            prev = then.get(slot)
            add_into(total, agg if prev is None else [max(0, a - b) for a, b in
                                                      zip(agg, prev, strict=True)])
    return Window(
        new[0] - old[0],
        total[REQ],
        total[FAIL],
        histogram_quantile(0.99, total[B0:]) if total[REQ] else None,
    )


def route_window(
    service: str, route: str, seconds: float, read: Callable[[], dict[str, Any]]
) -> Window:
    """The next ``seconds`` of ``route``: ``read`` (the control plane's ``/v1/stats/local``)
    now and ``seconds`` later. Sidecars report every few seconds (``MESHLET_STATS_INTERVAL``),
    so the window is the traffic reported in it, late by up to one report interval."""
    if not 0 < seconds <= MAX_ROUTE_WINDOW_S:
        raise ValueError(f"a route window is 0-{MAX_ROUTE_WINDOW_S:.0f} s, not {seconds}")
    first = (time.time(), read())
    time.sleep(seconds)
    return route_between(first, (time.time(), read()), service, route)


def prometheus_window(url: str, service: str, seconds: float) -> Window:
    rng = f"{max(1, int(seconds))}s"
    sel = f'reporter="source",destination_service=~"{service}(\\\\..*)?"'

    def q(expr: str) -> float | None:
        full = url.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(full, timeout=10) as r:
            data: Any = json.loads(r.read())
        res = data.get("data", {}).get("result", [])
        if not res:
            return None
        v = float(res[0]["value"][1])
        return None if math.isnan(v) else v

    req = q(f"sum(increase(istio_requests_total{{{sel}}}[{rng}]))") or 0.0
    err = q(
        f'sum(increase(istio_requests_total{{{sel},response_code=~"5..|0"}}[{rng}]))'
    ) or 0.0
    p99 = q(
        "histogram_quantile(0.99, sum by (le) "
        f"(rate(istio_request_duration_milliseconds_bucket{{{sel}}}[{rng}])))"
    )
    return Window(seconds, req, err, p99)
