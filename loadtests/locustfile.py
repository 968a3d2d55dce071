"""Locust scenario against ``meshlet demo``: the traffic of a frontend app, through its sidecar.

``meshlet demo`` (without ``--once``) keeps its mesh running and prints the ``frontend`` sidecar's
outbound address; that is locust's ``--host``. Users call it the way an app does, naming the
mesh service in the Host header:

- ``orders`` (the 80/20 canary split; with the canary header, always v2),
- ``inventory`` directly,
- ``orders`` calling ``inventory`` (two hops, mTLS between the sidecars),
- ``orders`` calling ``payment`` (allowed by the demo's AuthorizationPolicy; the frontend itself
  may not call payment, so that call is not part of the mix).

Each answer is checked for who answered (and, where it matters, which version), so a misroute
counts as a failure, not only a non-2xx. The services and the canary header are options (or
environment variables), so the file also fits a mesh whose names differ::

    pip install locust            # or: pip install '.[test]'
    meshlet demo                  # prints: Load: locust ... --host http://127.0.0.1:PORT
    locust -f loadtests/locustfile.py --headless -u 10 -r 5 -t 30s --host http://127.0.0.1:PORT

The demo's circuit-breaker scenario leaves orders v2's breaker towards payment open for 10 s
after the demo prints its addresses; calls to payment through orders v2 in that window are
refused (503 UO), as they should be. Start locust after it, or run
``python loadtests/run_locust.py``, which starts the demo, waits for that and gates on failures.
"""

from __future__ import annotations

import json

from locust import FastHttpUser, between, events, task


@events.init_command_line_parser.add_listener
def _options(parser) -> None:  # type: ignore[no-untyped-def]
    g = parser.add_argument_group("meshlet mesh")
    g.add_argument("--orders-service", default="orders", env_var="MESHLET_LOCUST_ORDERS",
                   help="the service with the canary split (default orders)")
    g.add_argument("--inventory-service", default="inventory",
                   env_var="MESHLET_LOCUST_INVENTORY", help="default inventory")
    g.add_argument("--payment-service", default="payment", env_var="MESHLET_LOCUST_PAYMENT",
                   help="the service only orders may call (default payment)")
    g.add_argument("--canary-header", default="x-canary: always", env_var="MESHLET_LOCUST_CANARY",
                   help="the header that pins a request to the canary (default 'x-canary: always')")
    g.add_argument("--canary-version", default="v2", env_var="MESHLET_LOCUST_CANARY_VERSION",
                   help="the version the canary header routes to (default v2)")


def _check(resp, service: str, versions: tuple[str, ...] = (), upstream: str = "") -> None:  # type: ignore[no-untyped-def]
    """Mark ``resp`` failed unless it is a 200 JSON answer from ``service`` (in one of
    ``versions``), and, for a call through it, a 200 from ``upstream``."""
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
    elif versions and data.get("version") not in versions:
        resp.failure(f"answered by version {data.get('version')!r}, expected {versions}")
    elif upstream and (data.get("upstream_status") != 200
                       or (data.get("upstream") or {}).get("service") != upstream):
        resp.failure(f"{service} -> {upstream}: {data.get('upstream_status')} "
                     f"{data.get('upstream_flags') or ''}".rstrip())
    else:
        resp.success()


class FrontendApp(FastHttpUser):
    """The demo's frontend: mostly orders (canary split), some canary testers, inventory reads,
    and calls that cross two sidecars."""

    wait_time = between(0.01, 0.1)
    network_timeout = 10.0
    connection_timeout = 5.0

    def on_start(self) -> None:
        o = self.environment.parsed_options
        self.orders = getattr(o, "orders_service", "orders")
        self.inventory = getattr(o, "inventory_service", "inventory")
        self.payment = getattr(o, "payment_service", "payment")
        name, _, value = getattr(o, "canary_header", "x-canary: always").partition(":")
        self.canary = {name.strip(): value.strip()}
        self.canary_version = getattr(o, "canary_version", "v2")

    @task(5)
    def orders_split(self) -> None:
        with self.client.get("/orders", headers={"Host": self.orders}, catch_response=True,
                             name="orders GET /orders (split)") as r:
            _check(r, self.orders)

    @task(2)
    def orders_canary(self) -> None:
        with self.client.get("/orders", headers={"Host": self.orders, **self.canary},
                             catch_response=True, name="orders GET /orders (canary header)") as r:
            _check(r, self.orders, (self.canary_version,))

    @task(3)
    def inventory_items(self) -> None:
        with self.client.get("/items", headers={"Host": self.inventory}, catch_response=True,
                             name="inventory GET /items") as r:
            _check(r, self.inventory)

    @task(2)
    def orders_to_inventory(self) -> None:
        with self.client.get(f"/call/{self.inventory}/items", headers={"Host": self.orders},
                             catch_response=True, name="orders -> inventory GET /items") as r:
            _check(r, self.orders, upstream=self.inventory)

    @task(1)
    def orders_to_payment(self) -> None:
        with self.client.get(f"/call/{self.payment}/pay", headers={"Host": self.orders},
                             catch_response=True, name="orders -> payment GET /pay") as r:
            _check(r, self.orders, upstream=self.payment)
