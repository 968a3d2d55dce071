"""The closing block of ``meshlet demo`` (how to use the running mesh) against golden files
(``UPDATE_GOLDEN=1`` rewrites them): the running form with every address, and the ``--once``
form, which shows none, since they are gone at exit."""

from __future__ import annotations

import os
from pathlib import Path

from control_plane.cli.commands.demo import _Mesh, _usage

GOLDEN = Path(__file__).resolve().parents[1] / "control_plane" / "golden"
MESH = _Mesh(Path("/tmp/meshlet-demo-x"), Path("/tmp/meshlet-demo-x/control-plane"),
             "https://127.0.0.1:40001", 40002,
             {"orders-v1": 40003, "orders-v2": 40004, "inventory-v1": 40005,
              "payment-v1": 40006, "frontend-v1": 40007})


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text + "\n")
    assert text + "\n" == path.read_text()


def test_running_demo_usage():
    golden("demo_usage.txt", "\n".join(_usage(MESH, once=False, work_kept=False)))


def test_once_usage_shows_no_address():
    text = "\n".join(_usage(MESH, once=True, work_kept=False))
    golden("demo_usage_once.txt", text)
    assert "127.0.0.1" not in text and "/tmp" not in text
    assert _usage(MESH, once=True, work_kept=True)[-1] == "   logs: /tmp/meshlet-demo-x"


def test_mesh_json_for_scripts(tmp_path):
    import json

    MESH.write(tmp_path / "mesh.json")
    doc = json.loads((tmp_path / "mesh.json").read_text())
    assert doc["frontend"] == "http://127.0.0.1:40002"
    assert doc["metrics"]["frontend-v1"] == "http://127.0.0.1:40007/metrics"
    assert [p.name for p in tmp_path.iterdir()] == ["mesh.json"]
