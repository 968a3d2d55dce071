"""Locust scenario for the demo-like mesh: the ``orders`` app's calls through its sidecar.

Users call ``orders``' sidecar outbound port the way the app does, naming the mesh service in the
Host header: list inventory items, get one item with ``x-canary: yes`` (routed to inventory v2
by the VirtualService in loadtests/run_locust.py) and pay. Each response is checked for who
answered, so a misroute counts as a failure, not just a non-2xx.

    locust -f loadtests/locustfile.py --headless -u 20 -r 10 -t 20s --host http://127.0.0.1:15001

``python loadtests/run_locust.py`` starts the apps and the sidecar and runs this file.
"""

from __future__ import annotations

import json
import random

from locust import FastHttpUser, between, task


def _check(resp, service: str, version: str | None = None) -> None:
    """Mark ``resp`` failed unless it is a 200 JSON answer from ``service`` (and ``version``)."""
    if resp.status_code != 200:
        flags = resp.headers.get("x-meshlet-response-flags", "") if resp.headers else ""
        resp.failure(f"status {resp.status_code} flags={flags!r}")
        return
    try:
        data = json.loads(resp.text)
    except (ValueError, TypeError):
        resp.failure("body is not JSON")
        return
    if data.get("service") != service:
        resp.failure(f"answered by {data.get('service')!r}, expected {service!r}")
    elif version and data.get("version") != version:
        resp.failure(f"answered by version {data.get('version')!r}, expected {version!r}")
    else:
        resp.success()


class OrdersApp(FastHttpUser):
    """The orders app: most calls read inventory, some are canary reads, some pay."""

    wait_time = between(0.01, 0.1)
    network_timeout = 10.0
    connection_timeout = 5.0

    @task(6)
    def list_items(self) -> None:
        with self.client.get(
            "/items",
            headers={"Host": "inventory"},
            name="inventory GET /items",
            catch_response=True,
        ) as r:
            _check(r, "inventory")

    @task(3)
    def get_item_canary(self) -> None:
        item = random.randint(1, 1000)
        with self.client.get(
            f"/items/{item}",
            headers={"Host": "inventory", "x-canary": "yes"},
            name="inventory GET /items/[id] (canary)",
            catch_response=True,
        ) as r:
            _check(r, "inventory", "v2")

    @task(1)
    def pay(self) -> None:
        order = {"order": random.randint(1, 10**6), "amount": round(random.uniform(1, 500), 2)}
        with self.client.post(
            "/pay",
            data=json.dumps(order),
            headers={"Host": "payment", "Content-Type": "application/json"},
            name="payment POST /pay",
            catch_response=True,
        ) as r:
            _check(r, "payment")
