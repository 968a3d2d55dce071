"""InboundRateLimit end to end: a control plane, ``inventory`` behind its sidecar, and two
callers (``orders`` and ``payment``) each behind a sidecar with its own SPIFFE identity. The
policy is applied with ``meshlet apply``, read back with ``meshlet get``, pushed, and enforced by
inventory's sidecar over mTLS: a caller over its identity limit gets 429 ``RL`` while the other,
named in an override, is not throttled; a total limit is shared by both."""

from __future__ import annotations

import json
import re
import time

import aiohttp
import pytest

from tests.support import join_sidecar, start_app, start_control_plane, stopped_at_end, wait_until

PER_IDENTITY = """
apiVersion: meshlet.dev/v1alpha1
kind: InboundRateLimit
metadata: {name: inv, namespace: default}
spec:
  selector: {matchLabels: {app: inventory}}
  identity: {requestsPerSecond: 2}
  overrides:
  - requestsPerSecond: 1000
    clientRefs: [{kind: ServiceAccount, name: orders}]
"""

TOTAL = """
apiVersion: meshlet.dev/v1alpha1
kind: InboundRateLimit
metadata: {name: inv, namespace: default}
spec:
  selector: {matchLabels: {app: inventory}}
  total: {requestsPerSecond: 1}
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("inbound-rl")
    with stopped_at_end() as started:
        cp = start_control_plane(work)
        started.append(cp)
        app, app_port = start_app(work, "inventory")
        started.append(app)

        def sidecar(service: str, port: int):
            sc = join_sidecar(work, cp, service, port)
            started.append(sc)
            return sc

        m = {"cp": cp, "work": work, "inv": sidecar("inventory", app_port),
             "orders": sidecar("orders", 1), "payment": sidecar("payment", 1)}
        yield m


async def _burst(port: int, n: int) -> list[tuple[int, str, str]]:
    """n sequential calls to inventory through one caller's sidecar: (status, flag, ratelimited)."""
    out = []
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            async with s.get(f"http://127.0.0.1:{port}/items",
                             headers={"Host": "inventory"}) as r:
                await r.read()
                out.append((r.status, r.headers.get("x-meshlet-response-flags", ""),
                            r.headers.get("x-envoy-ratelimited", "")))
    return out


def _apply(mesh, text: str) -> None:
    r = mesh["cp"].cli("apply", "-f", "-", input=text)
    assert r.returncode == 0, r.stderr


async def _until_throttled(port: int) -> None:
    """Poll until the pushed policy is in force at inventory's sidecar."""
    for _ in range(100):
        if any(s == 429 for s, _, _ in await _burst(port, 5)):
            return
    raise AssertionError("the InboundRateLimit never took effect")


def _metric(mesh, name: str, **labels: str) -> float:
    status, body = mesh["inv"].admin_get("/metrics")
    assert status == 200
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.slow
async def test_identity_limit_throttles_one_caller_and_not_the_overridden_one(mesh):
    for caller in ("orders", "payment"):  # inventory is routable from both (registry pushed)
        for _ in range(200):
            if (await _burst(mesh[caller].outbound, 1))[0][0] == 200:
                break
        else:
            raise AssertionError(f"inventory never became routable from {caller}")
    # every caller works before the policy
    assert {s for s, _, _ in await _burst(mesh["payment"].outbound, 3)} == {200}
    _apply(mesh, PER_IDENTITY)
    got = mesh["cp"].cli("get", "irl", "inv", "-n", "default", "-o", "json")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["spec"]["identity"] == {"requestsPerSecond": 2}
    table = mesh["cp"].cli("get", "inboundratelimits")
    assert "SELECTOR" in table.stdout and "app=inventory" in table.stdout

    await _until_throttled(mesh["payment"].outbound)
    t0 = time.monotonic()
    payment = await _burst(mesh["payment"].outbound, 10)
    orders = await _burst(mesh["orders"].outbound, 10)
    cycles = int(time.monotonic() - t0) + 2  # 1 s refill cycles the bursts can have spanned
    refused = [r for r in payment if r[0] == 429]
    assert len(payment) - len(refused) <= 2 * cycles
    assert refused and all(r == (429, "RL", "true") for r in refused)
    assert [s for s, _, _ in orders] == [200] * 10  # the override: its own, larger bucket
    assert _metric(mesh, "meshlet_inbound_rate_limited_total",
                   policy="default/inv", limit="identity") >= len(refused)
    assert _metric(mesh, "meshlet_local_replies_total", code="429", flag="RL") >= len(refused)

    # inventory's access log names the refused caller and the flag
    def logged() -> bool:
        text = mesh["inv"].proc.stdout()
        return any(
            '"response_flags":"RL"' in line
            and re.search(r'"downstream_peer_principal":"spiffe://[^"]*/sa/payment"', line)
            for line in text.splitlines()
        )

    wait_until(logged, what="RL in inventory's access log")


@pytest.mark.slow
async def test_total_limit_is_shared_by_every_caller(mesh):
    _apply(mesh, TOTAL)
    await _until_throttled(mesh["orders"].outbound)
    # orders spends the one permit of a second; payment, a different identity, is then refused
    for _ in range(3):  # a refill may fall between the two calls: take another second then
        orders = await _burst(mesh["orders"].outbound, 3)
        if orders[-1][0] != 429:
            continue
        payment = await _burst(mesh["payment"].outbound, 1)
        if payment[0][0] == 429:
            assert payment[0][1:] == ("RL", "true")
            break
    else:
        raise AssertionError("payment was never refused by the shared total")
    assert _metric(mesh, "meshlet_inbound_rate_limited_total",
                   policy="default/inv", limit="total") >= 1
    r = mesh["cp"].cli("delete", "irl", "inv")
    assert r.returncode == 0, r.stderr

    async def free() -> bool:
        return {s for s, _, _ in await _burst(mesh["orders"].outbound, 5)} == {200}

    for _ in range(100):
        if await free():
            return
    raise AssertionError("deleting the InboundRateLimit did not lift it")
