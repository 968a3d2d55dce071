"""``meshlet inject``: golden files (tests/data/inject/*.in.yaml -> *.golden.yaml), idempotence,
opt-out, pass-through of other kinds, errors. ``MESHLET_UPDATE_GOLDEN=1`` rewrites the goldens."""

from __future__ import annotations

import io
import os
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml

from control_plane.cli.main import main

DATA = Path(__file__).resolve().parents[2] / "data" / "inject"
CASES = sorted(p.name[: -len(".in.yaml")] for p in DATA.glob("*.in.yaml"))
UPDATE = os.environ.get("MESHLET_UPDATE_GOLDEN") == "1"


def inject(path: Path, *extra: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["inject", "-f", str(path), "--image", "meshlet:test", *extra])
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    code, out, err = inject(DATA / f"{case}.in.yaml")
    assert code == 0, err
    golden = DATA / f"{case}.golden.yaml"
    if UPDATE:
        golden.write_text(out)
    assert out == golden.read_text(), f"{case}: differs from {golden.name}"


@pytest.mark.parametrize("case", CASES)
def test_injecting_twice_is_injecting_once(case: str) -> None:
    golden = DATA / f"{case}.golden.yaml"
    code, out, err = inject(golden)
    assert code == 0, err
    assert out == golden.read_text()


def pods(docs: list) -> list[dict]:
    """Every pod spec in the documents, with the kind it came from."""
    found = []
    for d in docs:
        if d.get("kind") == "List":
            found += pods(d["items"])
        elif d.get("kind") == "Pod":
            found.append(d["spec"])
        elif d.get("kind") == "CronJob":
            found.append(d["spec"]["jobTemplate"]["spec"]["template"]["spec"])
        elif "template" in (d.get("spec") or {}):
            found.append(d["spec"]["template"]["spec"])
    return found


def test_other_kinds_pass_through_unchanged() -> None:
    before = list(yaml.safe_load_all((DATA / "deployment.in.yaml").read_text()))
    after = list(yaml.safe_load_all((DATA / "deployment.golden.yaml").read_text()))
    assert after[1:] == before[1:]
    before = list(yaml.safe_load_all((DATA / "optout.in.yaml").read_text()))
    after = list(yaml.safe_load_all((DATA / "optout.golden.yaml").read_text()))
    assert after == before


def test_what_is_injected() -> None:
    docs = list(yaml.safe_load_all((DATA / "deployment.golden.yaml").read_text()))
    (spec,) = pods(docs[:1])
    init = spec["initContainers"][0]
    proxy, app = spec["containers"]
    assert init["name"] == "meshlet-init" and init["args"][0] == "iptables"
    assert init["securityContext"]["runAsUser"] == 0
    assert set(init["securityContext"]["capabilities"]["add"]) == {"NET_ADMIN", "NET_RAW"}
    assert proxy["name"] == "meshlet-proxy" and app["name"] == "orders"
    assert proxy["securityContext"]["runAsUser"] == 1337
    assert proxy["securityContext"]["runAsNonRoot"] is True
    assert {p["name"]: p["containerPort"] for p in proxy["ports"]} == {
        "mesh-outbound": 15001, "mesh-inbound": 15006, "mesh-admin": 15000}
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15000}
    assert proxy["lifecycle"]["preStop"]["exec"]["command"][-1] == "http://127.0.0.1:15000/drain"
    args = proxy["args"]
    assert args[0] == "sidecar"
    flags = dict(zip(args[1::2], args[2::2], strict=True))
    assert flags["--service"] == "orders"
    assert flags["--namespace"] == "shop"
    assert flags["--version"] == "v1"
    assert flags["--app-port"] == "8080"
    assert flags["--control-plane"] == "https://meshlet-control-plane.meshlet-system:15012"
    assert flags["--token-file"] == "/var/run/meshlet/token/token"
    assert flags["--advertise-address"] == "$(POD_IP)"
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["meshlet-token"]["secret"]["secretName"] == "meshlet-token-orders"


def test_every_pod_kind_is_injected() -> None:
    docs = list(yaml.safe_load_all((DATA / "kinds.golden.yaml").read_text()))
    specs = pods(docs)
    assert len(specs) == 6  # StatefulSet, DaemonSet, Job, CronJob, Pod, the List's Deployment
    for spec in specs:
        assert spec["containers"][0]["name"] == "meshlet-proxy"
    # a UDP port is not the app port; the k8s recommended labels name the service and version
    ds = docs[1]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert ds[ds.index("--app-port") + 1] == "5001"
    assert ds[ds.index("--service") + 1] == "node-agent"
    assert ds[ds.index("--version") + 1] == "3.1"
    assert docs[-1]["items"][1] == {"apiVersion": "v1", "kind": "Service",
                                    "metadata": {"name": "catalog"},
                                    "spec": {"ports": [{"port": 8080}]}}


def test_annotations_tune_capture_and_keep_the_apps_own_settings() -> None:
    (doc,) = yaml.safe_load_all((DATA / "annotations.golden.yaml").read_text())
    spec = doc["spec"]["template"]["spec"]
    init_args = spec["initContainers"][0]["args"]
    assert init_args[init_args.index("--exclude-inbound-ports") + 1].endswith(",9102")
    assert init_args[init_args.index("--exclude-outbound-cidrs") + 1] == "169.254.169.254/32"
    assert init_args[init_args.index("--exclude-outbound-ports") + 1] == "5432"
    assert [c["name"] for c in spec["initContainers"]] == ["meshlet-init", "migrate"]
    assert spec["securityContext"] == {"runAsUser": 1000, "fsGroup": 2000}
    proxy_args = spec["containers"][0]["args"]
    assert proxy_args[proxy_args.index("--app-port") + 1] == "8443"
    assert {v["name"] for v in spec["volumes"]} == {"cache", "meshlet-token", "meshlet-state"}
    assert [v for v in spec["volumes"] if v["name"] == "meshlet-token"][0]["secret"][
        "secretName"] == "checkout-join"


def test_output_file_stdin_and_control_plane_flag(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out.yaml"
    code, stdout, _ = inject(DATA / "deployment.in.yaml", "-o", str(out), "--control-plane",
                             "https://cp.example:15012")
    assert code == 0 and stdout == ""
    assert "https://cp.example:15012" in out.read_text()
    monkeypatch.setattr("sys.stdin", io.StringIO((DATA / "deployment.in.yaml").read_text()))
    code, stdout, _ = inject(Path("-"))
    assert code == 0
    assert stdout == (DATA / "deployment.golden.yaml").read_text()


def test_errors_name_the_document(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: ConfigMap\n---\nkind: Deployment\nmetadata: {name: x}\nspec:\n"
                   "  template:\n    spec:\n      containers: [{name: x, image: y}]\n")
    code, _, err = inject(bad)
    assert code == 1
    assert "document 2" in err and "sidecar.meshlet.dev/app-port" in err
    bad.write_text("a: [\n")
    assert inject(bad)[0] == 2
    assert inject(tmp_path / "missing.yaml")[0] == 2
