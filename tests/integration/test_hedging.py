"""ResiliencePolicy hedging with ``maxHedges`` above 1 through a real sidecar: each ``delay``
without an answer sends one more copy to another endpoint, up to ``maxHedges`` copies; the
first response wins and the other copies are abandoned (their connections closed)."""

from __future__ import annotations

import re
import time

import aiohttp
import pytest

from tests.counting_app import CountingApp, until
from tests.support import start_sidecar, static_service_entry

pytestmark = pytest.mark.slow


def _config(ports: list[int], max_hedges: int) -> str:
    return static_service_entry("hedged", *ports) + f"""---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: hedged}}
spec:
  hosts: [hedged]
  http:
  - route: [{{destination: {{host: hedged}}}}]
    timeout: 10s
    retries: {{attempts: 0}}
---
apiVersion: meshlet.dev/v1alpha1
kind: ResiliencePolicy
metadata: {{name: hedged}}
spec:
  host: hedged
  hedging: {{delay: 150ms, maxHedges: {max_hedges}}}
"""


async def _hedged_call(tmp_path, max_hedges: int):
    app = await CountingApp().start(listeners=4)
    sc = start_sidecar(tmp_path, "orders", app.port, _config(app.ports, max_hedges))
    try:
        t0 = time.monotonic()
        async with (
            aiohttp.ClientSession() as s,
            s.get(
                f"http://127.0.0.1:{sc.outbound}/stagger?ms=4000,4000,100,100",
                headers={"Host": "hedged"},
            ) as r,
        ):
            result = r.status, await r.read(), time.monotonic() - t0
        copies = app.arrivals
        await until(lambda: app.abandoned == copies - 1, what=f"{copies - 1} losers abandoned")
        text = sc.admin_get("/metrics")[1].decode()
        m = re.search(r'meshlet_hedges_total\{destination_service="hedged[^"]*"\} (\S+)', text)
        return result, app, float(m.group(1)) if m else 0.0
    finally:
        sc.stop()
        await app.close()


async def test_two_hedges_go_out_and_the_first_answer_wins(tmp_path):
    """maxHedges 2: the request, a copy after 150 ms, another after 300 ms. The first two hang
    (4 s); the third answers 100 ms after it arrives and wins; the two others are abandoned.
    Never a fourth copy, though a fourth endpoint is there."""
    (status, body, elapsed), app, hedges = await _hedged_call(tmp_path, 2)
    assert (status, body) == (200, b"copy 3")
    assert elapsed < 2.0
    assert app.arrivals == 3 and app.max_inflight == 3
    assert hedges == 2


async def test_one_hedge_when_max_hedges_is_1(tmp_path):
    """The same call with maxHedges 1: two copies only, so the answer waits for the 4 s ones."""
    (status, body, elapsed), app, hedges = await _hedged_call(tmp_path, 1)
    assert status == 200 and body in (b"copy 1", b"copy 2")
    assert app.arrivals == 2 and app.max_inflight == 2 and hedges == 1
    assert elapsed >= 3.5
