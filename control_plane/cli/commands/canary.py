"""``meshlet canary status|promote|abort|pause|resume NAME``: follow and steer a canary rollout.

``status`` shows where the rollout is (phase, weight, the steps), the reason for the last
decision in a sentence, and each analysis: what the canary served and every check's value
against its bound. The other actions are decided and applied by the control plane before it
answers; the answer is the new status.
"""

from __future__ import annotations

import argparse
from urllib.parse import quote

from control_plane.cli import client as cli_client

NAME = "canary"
HELP = "status of a canary rollout, and promote, abort, pause or resume it"
ACTIONS = ("status", "promote", "abort", "pause", "resume")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS,
                        help="status (default view), promote (canary to 100%%), abort (all "
                             "traffic back on stable), pause, resume")
    parser.add_argument("name", metavar="NAME", help="the Canary's name")
    parser.add_argument("-n", "--namespace", metavar="NS", default="default",
                        help="the Canary's namespace (default: default)")
    parser.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    cli_client.add_connection_arguments(parser)
    parser.epilog = cli_client.EXIT_CODES_EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def _steps_text(steps: list[int], step: int, weight: int) -> str:
    """The weights in order, the current one in brackets."""
    if weight in (0, 100):
        step = -1 if weight == 0 else len(steps)
    marks = [f"[{w}]" if i == step else str(w) for i, w in enumerate(steps)]
    first = "[0]" if step == -1 else "0"
    last = "[100] (promotion)" if step == len(steps) else "100 (promotion)"
    return " -> ".join([first, *marks, last])


def _when(t: float, t0: float) -> str:
    return f"+{t - t0:.1f}s"


def render(view: dict) -> str:
    """The human form of ``GET /v1/canaries/{ns}/{name}``."""
    from control_plane.cli import output

    spec, status = view.get("spec") or {}, view.get("status") or {}
    events = status.get("events") or []
    steps = _steps_text(view.get("steps") or [], int(status.get("step", -1)),
                        int(status.get("weight", 0)))
    lines = [
        f"Canary {view['namespace']}/{view['name']}: {spec.get('host')} "
        f"{spec.get('stable')} (stable) -> {spec.get('canary')} (canary)",
        f"phase:          {status.get('phase') or 'not started'}",
        f"canary weight:  {status.get('weight', 0)}%",
        f"steps:          {steps}",
        f"interval:       {view.get('intervalSeconds', 0):g}s, "
        f"failed checks {status.get('failedChecks', 0)} of "
        f"{(spec.get('analysis') or {}).get('threshold', '?')} before rollback",
        f"last decision:  {status.get('lastDecision') or '-'}",
        f"reason:         {status.get('reason') or '-'}",
    ]
    if events:
        t0 = float(events[0]["time"])
        rows = []
        for ev in events:
            canary = ev.get("canary") or {}
            served = f"{canary['requests']} req" if canary else ""
            w, before = ev.get("weight", 0), ev.get("fromWeight", ev.get("weight", 0))
            weight = f"{before}% -> {w}%" if w != before else f"{w}%"
            head = [_when(ev["time"], t0), ev["decision"], weight, served]
            checks = ev.get("checks") or []
            if not checks:
                rows.append(head + ["", "", "", ""])
            waiting = ev["decision"] == "waiting"
            for i, ch in enumerate(checks):
                result = "wait" if waiting else ("ok" if ch["ok"] else "FAIL")
                rows.append((head if i == 0 else ["", "", "", ""])
                            + [ch["check"], ch["value"], ch["bound"], result])
        lines += ["", "history (what the canary served before each decision, each check against "
                  "its bound):",
                  output.table(["WHEN", "DECISION", "WEIGHT", "SERVED", "CHECK", "VALUE",
                                "BOUND", "RESULT"], rows)]
    counters = status.get("counters") or {}
    if counters:
        lines += ["", "decisions: " + ", ".join(f"{k} {v}" for k, v in sorted(counters.items()))]
    return "\n".join(lines)


@cli_client.command
def run(args: argparse.Namespace) -> int:
    from control_plane.cli import output

    c = cli_client.Client(args)
    path = f"/v1/canaries/{quote(args.namespace)}/{quote(args.name)}"
    if args.action == "status":
        view = c.request("GET", path)
    else:
        view = c.request("POST", f"{path}/{args.action}", json_body={})
    if args.output != "table":
        output.out(output.dump(view, args.output))
    else:
        output.out(render(view))
    return 0
