"""Everything the CLI prints goes through here: tables, YAML/JSON, check lines, errors.

Human forms are kubectl's and ``linkerd check``'s (aligned columns with three spaces, ``√``/``×``
lines with an indented hint); machine forms (``-o json|yaml``) print the API's data unchanged.
Streams are looked up at call time so in-process tests can capture them.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

OK, FAIL, WARN = "√", "×", "‼"


def out(text: str = "") -> None:
    sys.stdout.write(text + ("" if text.endswith("\n") else "\n"))


def error(message: str, details: Iterable[str] = ()) -> None:
    sys.stderr.write(f"error: {message}\n")
    for d in details:
        sys.stderr.write(f"  {d}\n")


def warn(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """kubectl-style columns: left-aligned, three spaces apart, no trailing blanks."""
    cells = [list(headers)] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in cells]
    return "\n".join(lines)


def dump(data: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2, sort_keys=False)
    import yaml

    if isinstance(data, list):
        return yaml.safe_dump_all(data, sort_keys=False, default_flow_style=False).rstrip()
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip()


def age(since: float | None, now: float | None = None) -> str:
    """kubectl's compact age: ``45s``, ``12m``, ``5h``, ``3d``."""
    if not since:
        return "-"
    return duration((now or time.time()) - since)


def duration(seconds: float) -> str:
    s = int(max(0, seconds))
    if s < 120:
        return f"{s}s"
    if s < 2 * 3600:
        return f"{s // 60}m"
    if s < 2 * 86400:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def expiry(when: float | None, now: float | None = None) -> str:
    """``in 23h`` / ``EXPIRED 5m ago`` / ``-``."""
    if not when:
        return "-"
    left = when - (now or time.time())
    return f"in {duration(left)}" if left >= 0 else f"EXPIRED {duration(-left)} ago"


def check_line(status: str, description: str, hint: str = "", detail: str = "") -> str:
    mark = {"ok": OK, "fail": FAIL, "warn": WARN, "skip": "-"}[status]
    line = f"{mark} {description}"
    if detail and status != "ok":
        line += f"\n    {detail}"
    if hint and status in ("fail", "warn"):
        line += f"\n    hint: {hint}"
    return line
