"""Issue 18's rule for the HTTP request path, kept: no function over 80 lines, from the parsers
through routing, the stacks, the attempt machine and telemetry, to ``/explain`` and the
sidecar's start-up. (``tests/unit/server/test_request_path.py`` checks the stacks alone.)"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = (
    "proxy/http1", "proxy/http2", "proxy/server", "proxy/routes", "proxy/transport",
    "proxy/inbound", "proxy/outbound", "proxy/resilience", "proxy/authz", "proxy/telemetry",
)  # fmt: skip
FILES = ("proxy/explain.py", "proxy/sidecar.py")
LIMIT = 80


def _sources() -> list[Path]:
    found = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    found += [ROOT / f for f in FILES]
    # a ``_x_c.py`` is a symlink to its ``_x_py.py`` twin (one source, compiled twice)
    return [p for p in found if not p.is_symlink()]


def test_no_function_on_the_request_path_is_over_80_lines():
    sources = _sources()
    assert len(sources) > 50
    over = []
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > LIMIT:
                    over.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n})")
    assert not over, over
