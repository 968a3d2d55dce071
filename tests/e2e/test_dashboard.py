"""The dashboard in a real headless Chromium against the demo mesh: sign in, see the demo's
edges with live rates and the mTLS lock, the canary split in the route table, and a request the
test sends in the live tap. A screenshot is saved in the test's tmp dir (dashboard.png)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import aiohttp
import pytest

from tests.support import ROOT, env, wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
LINE = re.compile(r"Dashboard: (https://\S+)/ui/ \(sign in with the token in (\S+)\)\n"
                  r"(?:.*\n)*?.*curl -s http://127\.0\.0\.1:\d+/metrics")
FRONT = re.compile(r"curl -s -H 'Host: orders' http://127\.0\.0\.1:(\d+)/orders")


def start_demo(work: Path) -> tuple[subprocess.Popen, Path]:
    out = work / "demo.out"
    with open(out, "wb") as log:  # the child has its own descriptor; ours closes here
        proc = subprocess.Popen(
            [sys.executable, "-m", "control_plane.cli", "demo", "--requests", "40",
             "--workdir", str(work / "demo")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=str(ROOT), env=env(MESHLET_STATS_INTERVAL="1"), start_new_session=True)
    return proc, out


async def drive(front: int, n: int, path: str = "/orders") -> list[int]:
    out = []
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            async with s.get(f"http://127.0.0.1:{front}{path}", headers={"Host": "orders"}) as r:
                await r.read()
                out.append(r.status)
    return out


def browser(profile: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
                 "--window-size=1500,2200", "--disable-dev-shm-usage"):
        opts.add_argument(flag)
    # the control plane's certificate is issued by the mesh's own CA, which this fresh
    # profile does not trust
    opts.accept_insecure_certs = True
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_dashboard_shows_the_demo_mesh_live(tmp_path):
    # fails rather than skips without them, so CI cannot silently stop checking the dashboard
    assert os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER), \
        "chromium and chromium-driver are needed (tests/run.sh installs them)"
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    proc, out = start_demo(tmp_path)
    driver = None
    profile = tempfile.mkdtemp(prefix="meshlet-chromium-")
    try:
        m = wait_until(lambda: proc.poll() is None and LINE.search(out.read_text(errors="replace")),
                       240, 0.2, "the demo to print the dashboard address")
        assert proc.poll() is None, out.read_text()
        url, token_file = m.group(1), m.group(2)
        front = int(FRONT.search(out.read_text(errors="replace")).group(1))
        assert asyncio.run(drive(front, 60)) == [200] * 60
        # orders v1 -> payment whatever the split draws (80/20: 20 calls all landing on v2 has a
        # chance of 1e-14; the demo's own scenarios make only one such call). Through v2 the demo
        # left orders' breaker to payment open, so those answer 502: the graph is what is checked
        asyncio.run(drive(front, 20, "/call/payment/pay"))

        driver = browser(profile)
        driver.set_page_load_timeout(60)
        driver.get(url + "/ui/")
        driver.find_element(By.ID, "token").send_keys(Path(token_file).read_text().strip())
        driver.find_element(By.ID, "login").click()
        wait_until(lambda: driver.find_elements(By.ID, "graph"), 20, 0.2, "the dashboard page")

        def graph_edges() -> list[dict]:
            return driver.execute_script(
                "const cy = window.meshlet && window.meshlet.cy;"
                "return cy ? cy.edges().map(e => e.data()) : [];")

        def demo_edges() -> list[dict] | None:
            # traffic keeps flowing while we look, so a slow start cannot age it out of 1 min
            asyncio.run(drive(front, 2))
            asyncio.run(drive(front, 1, "/call/payment/pay"))
            es = {e["id"]: e for e in graph_edges()}
            # the demo's canary scenario ended with all of orders' traffic on v2
            want = ("frontend:v1->orders:v2", "orders:v2->payment:v1")
            if all(w in es and es[w]["rps"] > 0 for w in want):
                return [es[w] for w in want]
            return None

        try:
            edges = wait_until(demo_edges, 60, 0.5, "the demo's edges with rates in the graph")
        except TimeoutError:
            raise AssertionError(f"graph edges {graph_edges()}; last stats "
                                 f"{driver.execute_script('return window.meshlet.lastEdges')}; "
                                 "status "
                                 f"{driver.find_element(By.ID, 'updated').text}; page log "
                                 f"{driver.get_log('browser')}") from None
        for e in edges:
            assert e["mtls"] is True and e["label"].endswith("🔒"), e
            assert re.match(r"\d+\.\d\d rps · \d+\.\d\d% · p99 \d", e["label"]), e

        def split_row() -> str | None:
            for row in driver.find_elements(By.CSS_SELECTOR, "#routes tbody tr"):
                cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
                if cells[:2] == ["orders", "canary-split"]:
                    return cells[2]
            return None

        # the demo's canary scenario promoted v2 and rolled the faulty v3 back: the split it left
        assert wait_until(split_row, 20, 0.5, "the canary route") == \
            "orders/v2 100% · orders/v3 0%"
        proxies = driver.find_elements(By.CSS_SELECTOR, "#proxies tbody tr")
        assert len(proxies) == 6 and all("SYNCED" in r.text and " in " in r.text
                                         for r in proxies), [r.text for r in proxies]

        # live tap: a request this test sends shows up (orders has three sidecars: v1, v2, v3)
        marker = f"/echo/e2e-{uuid.uuid4().hex[:8]}"
        Select(driver.find_element(By.ID, "tap-service")).select_by_value("orders.default")
        driver.find_element(By.ID, "tap-path").send_keys("/echo/e2e-")
        driver.find_element(By.ID, "tap-start").click()
        wait_until(lambda: "on 3 sidecar(s)" in driver.find_element(By.ID, "tap-status").text,
                   30, 0.2, "the tap to start")

        def tapped() -> str | None:
            asyncio.run(drive(front, 1, marker))
            for row in driver.find_elements(By.CSS_SELECTOR, "#tap tbody tr"):
                if marker in row.text:
                    return row.text
            return None

        row = wait_until(tapped, 45, 0.3, "the test's request in the tap")
        assert "GET" in row and "200" in row and "spiffe://cluster.local/ns/default/sa/frontend" \
            in row
        driver.execute_script("window.scrollTo(0, 0)")
        shot = tmp_path / "dashboard.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 20_000
        print(f"screenshot: {shot}")
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
