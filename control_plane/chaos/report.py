"""The report of one ``meshlet chaos run``: the journal, a Markdown table, a CSV timeline and a
PNG of request rate, errors and p99 over time with every action marked."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from control_plane.chaos.metrics import Window


def verdict(state: dict[str, Any] | None) -> str:
    if not state:
        return "not run"
    return "met" if state.get("steady_state_met") else "NOT met"


def failed_method_steps(journal: dict[str, Any]) -> list[str]:
    """Method (not rollback) activities that failed: an action that could not act, or a probe
    whose check did not hold during the fault."""
    names = {a.get("name") for a in journal.get("experiment", {}).get("method", [])}
    return [
        r["activity"]["name"]
        for r in journal.get("run", [])
        if r.get("status") != "succeeded" and r["activity"].get("name") in names
    ]


def write(
    out: Path,
    journal: dict[str, Any],
    series: dict[str, list[tuple[float, Window]]],
    marks: list[tuple[float, str]],
    t0: float,
    extra: dict[str, Any],
) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "journal": out / "journal.json",
        "report": out / "report.md",
        "timeline": out / "timeline.csv",
        "plot": out / "plot.png",
    }
    paths["journal"].write_text(json.dumps(journal, indent=2, default=str) + "\n")
    with paths["timeline"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_s", "service", "rps", "errors_per_s", "success_rate", "p99_ms"])
        for svc, points in series.items():
            for t, win in points:
                w.writerow(
                    [
                        f"{t - t0:.2f}",
                        svc,
                        f"{win.rate:.2f}",
                        f"{win.errors / win.seconds if win.seconds else 0:.2f}",
                        "" if win.success_rate is None else f"{win.success_rate:.4f}",
                        "" if win.p99_ms is None else f"{win.p99_ms:.1f}",
                    ]
                )
    paths["report"].write_text(markdown(journal, series, marks, t0, extra))
    plot(paths["plot"], journal.get("experiment", {}).get("title", ""), series, marks, t0)
    return paths


def markdown(
    journal: dict[str, Any],
    series: dict[str, list[tuple[float, Window]]],
    marks: list[tuple[float, str]],
    t0: float,
    extra: dict[str, Any],
) -> str:
    exp = journal.get("experiment", {})
    ss = journal.get("steady_states") or {}
    lines = [
        f"# {exp.get('title', 'experiment')}",
        "",
        exp.get("description", ""),
        "",
        f"status: **{journal.get('status')}**, deviated: **{journal.get('deviated')}**, "
        f"duration {float(journal.get('duration') or 0):.1f} s",
        "",
        "| hypothesis | before | after |",
        "|---|---|---|",
        f"| {exp.get('steady-state-hypothesis', {}).get('title', '-')} "
        f"| {verdict(ss.get('before'))} | {verdict(ss.get('after'))} |",
        "",
        "| phase | activity | type | status | output |",
        "|---|---|---|---|---|",
    ]
    method = {a.get("name") for a in exp.get("method", [])}
    rollbacks = {a.get("name") for a in exp.get("rollbacks", [])}
    for phase, key in (("before", "before"), ("after", "after")):
        for p in (ss.get(key) or {}).get("probes", []):
            lines.append(_row(f"hypothesis {phase}", p))
    for r in journal.get("run", []):
        name = r["activity"].get("name")
        phase = "method" if name in method else "rollback" if name in rollbacks else "-"
        lines.append(_row(phase, r))
    for r in journal.get("rollbacks", []):
        lines.append(_row("rollback", r))
    lines += ["", "## What callers saw, per service", "",
              "| service | phase | requests | success rate | p99 ms |", "|---|---|---|---|---|"]
    bounds = [(t, label) for t, label in marks]
    for svc, points in series.items():
        for label, lo, hi in _phases(bounds, t0, points):
            req = sum(w.requests for t, w in points if lo <= t < hi)
            err = sum(w.errors for t, w in points if lo <= t < hi)
            p99s = [w.p99_ms for t, w in points if lo <= t < hi and w.p99_ms is not None]
            sr = "-" if not req else f"{1 - err / req:.4f}"
            lines.append(
                f"| {svc} | {label} | {req:.0f} | {sr} | {max(p99s):.0f} |"
                if p99s
                else f"| {svc} | {label} | {req:.0f} | {sr} | - |"
            )
    lines += ["", "## Marks", ""]
    lines += [f"- {t - t0:6.1f} s  {label}" for t, label in marks]
    if extra:
        lines += ["", "## Afterwards", ""]
        lines += [f"- {k}: {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def _phases(
    marks: list[tuple[float, str]], t0: float, points: list[tuple[float, Window]]
) -> list[tuple[str, float, float]]:
    """Warm-up, method (first to last method mark), after: the three parts of a run."""
    if not points:
        return []
    end = points[-1][0] + 1
    starts = [t for t, label in marks if label.startswith("method")]
    ends = [t for t, label in marks if label.startswith("rollbacks") or label == "method done"]
    m0 = starts[0] if starts else t0
    m1 = ends[0] if ends else end
    return [("before", t0, m0), ("method", m0, m1), ("after", m1, end)]


def _row(phase: str, r: dict[str, Any]) -> str:
    out = r.get("output")
    text = json.dumps(out, default=str) if out is not None else (r.get("exception") or [""])[-1]
    text = str(text).replace("|", "/").replace("\n", " ")[:80]
    ok = r.get("status")
    if "tolerance_met" in r:
        ok = f"{ok}, tolerance {'met' if r['tolerance_met'] else 'NOT met'}"
    act = r["activity"]
    return f"| {phase} | {act.get('name')} | {act.get('type')} | {ok} | {text} |"


def plot(
    path: Path,
    title: str,
    series: dict[str, list[tuple[float, Window]]],
    marks: list[tuple[float, str]],
    t0: float,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(11, 8), sharex=True)
    for svc, points in series.items():
        xs = [t - t0 for t, _ in points]
        axes[0].plot(xs, [w.rate for _, w in points], label=svc)
        axes[1].plot(xs, [w.errors / w.seconds if w.seconds else 0 for _, w in points], label=svc)
        axes[2].plot(
            xs, [w.p99_ms if w.p99_ms is not None else float("nan") for _, w in points], label=svc
        )
    axes[0].set_ylabel("requests/s")
    axes[1].set_ylabel("errors/s (5xx)")
    axes[2].set_ylabel("p99 ms")
    axes[2].set_xlabel("seconds since start")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        for t, _ in marks:
            ax.axvline(t - t0, color="grey", linestyle="--", linewidth=0.8)
    top = axes[0].get_ylim()[1]
    for i, (t, label) in enumerate(marks):
        axes[0].text(
            t - t0, top * (0.95 - 0.12 * (i % 4)), " " + label, fontsize=7, rotation=0,
            va="top", color="dimgrey",
        )
    axes[1].legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
