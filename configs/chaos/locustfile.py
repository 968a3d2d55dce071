"""Load for the chaos experiments in configs/chaos/: callers of the demo's ``orders`` service.

Through the demo's frontend sidecar (``meshlet chaos run`` points ``--host`` at it): most calls
read ``orders``; some make orders call ``payment`` or ``inventory`` through orders' sidecar, so
each experiment's service sees traffic. One call in 41 carries ``x-user: chaos-test``: test
traffic a header-matched fault may single out (orders propagates the header on its calls).
Failures are what locust counts; the experiments judge from the sidecars' metrics, not from
these.

    locust -f configs/chaos/locustfile.py --headless -u 5 -r 5 -t 30s --host http://127.0.0.1:PORT
"""

from __future__ import annotations

from locust import FastHttpUser, between, task


class OrdersCaller(FastHttpUser):
    wait_time = between(0.1, 0.3)
    network_timeout = 40.0
    connection_timeout = 5.0

    @task(32)
    def orders(self) -> None:
        self.client.get("/orders", headers={"Host": "orders"}, name="orders GET /orders")

    @task(4)
    def pay(self) -> None:
        self.client.get(
            "/call/payment/pay", headers={"Host": "orders"}, name="orders -> payment"
        )

    @task(4)
    def items(self) -> None:
        self.client.get(
            "/call/inventory/items", headers={"Host": "orders"}, name="orders -> inventory"
        )

    @task(1)
    def test_traffic(self) -> None:
        self.client.get(
            "/call/inventory/items",
            headers={"Host": "orders", "x-user": "chaos-test"},
            name="orders -> inventory (test traffic)",
        )
