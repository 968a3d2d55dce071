"""``meshlet chaos run``: one Chaos Toolkit experiment against a meshlet mesh, under load.

The experiment runs through chaoslib's own ``run_experiment`` (steady-state hypothesis before,
method, hypothesis after, rollbacks), in this process, so meshlet's probes read windows from a
metrics timeline sampled here every second instead of waiting them out. Load comes from locust,
headless, in a subprocess bounded in time. Afterwards: the journal, a table, a CSV timeline and
a plot (report.py), and the faults still in the control plane, if any.

Settings come from the experiment's ``extensions`` entry named ``meshlet`` (so the file stays a
plain Chaos Toolkit experiment), overridden by command-line flags::

    extensions:
    - name: meshlet
      services: [orders, payment]          # plotted and tabled
      load: {locustfile: configs/chaos/locustfile.py, users: 10, spawn_rate: 10}
      warmup_s: 10                         # load before the hypothesis is first checked
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from control_plane.chaos import actions, mesh, metrics, report

log = logging.getLogger("meshlet.chaos")
ROOT = Path(__file__).resolve().parents[2]
MAX_LOAD_S = 900  # locust stops by itself after this, whatever happens to the runner


@dataclass
class RunOptions:
    experiment: Path
    report_dir: Path
    mesh_state: str | None = None
    locustfile: str | None = None
    users: int | None = None
    spawn_rate: float | None = None
    host: str | None = None
    no_load: bool = False
    warmup_s: float | None = None
    cooldown_s: float = 2.0
    variables: dict[str, str] = field(default_factory=dict)
    strategy: str = "default"


def load_experiment(path: Path) -> dict[str, Any]:
    text = path.read_text()
    data = yaml.safe_load(text)
    if not isinstance(data, dict) or "method" not in data:
        raise ValueError(f"{path}: not a Chaos Toolkit experiment (no `method`)")
    return data


def meshlet_settings(experiment: dict[str, Any]) -> dict[str, Any]:
    for ext in experiment.get("extensions") or ():
        if isinstance(ext, dict) and ext.get("name") == "meshlet":
            return ext
    return {}


class _Marks:
    """A chaoslib event handler that timestamps each phase and activity for the plot."""

    def __new__(cls, marks: list[tuple[float, str]]) -> Any:
        from chaoslib.run import RunEventHandler

        class Handler(RunEventHandler):
            def start_hypothesis_before(self, experiment: Any) -> None:
                marks.append((time.time(), "hypothesis before"))

            def start_method(self, experiment: Any) -> None:
                marks.append((time.time(), "method"))

            def start_activity(self, activity: Any) -> None:
                if activity.get("type") == "action":
                    marks.append((time.time(), activity.get("name", "?")))

            def method_completed(self, experiment: Any, state: Any) -> None:
                marks.append((time.time(), "method done"))

            def start_hypothesis_after(self, experiment: Any) -> None:
                marks.append((time.time(), "hypothesis after"))

            def start_rollbacks(self, experiment: Any) -> None:
                marks.append((time.time(), "rollbacks"))

        return Handler()


def start_load(opts: RunOptions, settings: dict[str, Any], state: dict[str, Any],
               out: Path) -> subprocess.Popen[bytes] | None:
    load = dict(settings.get("load") or {})
    if opts.no_load or (not load and not opts.locustfile):
        return None
    locustfile = opts.locustfile or load.get("locustfile") or "loadtests/locustfile.py"
    lf = Path(locustfile)
    if not lf.is_absolute() and not lf.exists():
        lf = ROOT / locustfile
    host = opts.host or load.get("host")
    if not host:
        front = state.get("frontend_outbound")
        if not front:
            raise mesh.MeshError("no load target: pass --host URL or a mesh.json with a frontend")
        host = f"http://127.0.0.1:{front}"
    users = opts.users or int(load.get("users", 10))
    rate = opts.spawn_rate or float(load.get("spawn_rate", users))
    cmd = [
        sys.executable, "-m", "locust", "-f", str(lf), "--headless", "-u", str(users),
        "-r", str(rate), "-t", f"{MAX_LOAD_S}s", "--host", host, "--only-summary",
        "--csv", str(out / "locust"), "--stop-timeout", "2",
    ]
    log.info("load: %s", " ".join(cmd))
    return subprocess.Popen(
        cmd,
        stdout=open(out / "locust.log", "wb"),  # noqa: SIM115 - the child keeps it
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )


def _die_with_parent() -> None:
    """In the locust child: SIGTERM when the runner dies, even by SIGKILL (Linux
    PR_SET_PDEATHSIG), so a killed experiment leaves no load running."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: locust still stops after MAX_LOAD_S


def stop_load(p: subprocess.Popen[bytes] | None) -> int | None:
    if p is None:
        return None
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
    return p.returncode


def run(opts: RunOptions) -> int:
    """Run the experiment; 0 when it completed, both hypotheses held and no method step
    failed; 1 when the mesh deviated; 2 when the run itself could not happen."""
    from chaoslib.experiment import run_experiment
    from chaoslib.types import Strategy

    if opts.mesh_state:
        os.environ[mesh.STATE_ENV] = str(Path(opts.mesh_state).resolve())
    experiment = load_experiment(opts.experiment)
    settings = meshlet_settings(experiment)
    out = opts.report_dir
    out.mkdir(parents=True, exist_ok=True)
    state = mesh.load()
    services = list(settings.get("services") or [])
    timeline = metrics.Timeline(lambda: mesh.admin_addresses(), interval=1.0)
    marks: list[tuple[float, str]] = []
    t0 = time.time()
    timeline.start()
    metrics.CURRENT = timeline
    load = None
    try:
        load = start_load(opts, settings, state, out)
        warmup = opts.warmup_s if opts.warmup_s is not None else float(
            settings.get("warmup_s", 5)
        )
        if load is not None and warmup > 0:
            marks.append((time.time(), "load"))
            _warm_up(timeline, services, warmup, load)
        config_vars: dict[str, Any] = dict(opts.variables)
        journal = run_experiment(
            experiment,
            settings={},
            experiment_vars=(config_vars, {}),  # chaoslib: (configuration, secrets)
            strategy=Strategy.from_string(opts.strategy),
            event_handlers=[_Marks(marks)],
        )
        time.sleep(max(0.0, opts.cooldown_s))
    finally:
        locust_rc = stop_load(load)
        timeline.stop()
        metrics.CURRENT = None
    extra: dict[str, Any] = {}
    try:
        extra["faults left in the control plane"] = actions.list_faults() or "none"
    except Exception as exc:  # the control plane may be down: say so rather than fail
        extra["faults left in the control plane"] = f"unknown ({exc})"
    if load is not None:
        extra["locust exit status"] = locust_rc
    paths = report.write(out, journal, timeline.series(services), marks, t0, extra)
    ss = journal.get("steady_states") or {}
    failed = report.failed_method_steps(journal)
    print(
        f"{experiment.get('title')}: {journal.get('status')}; hypothesis before: "
        f"{report.verdict(ss.get('before'))}, after: {report.verdict(ss.get('after'))}"
        + (f"; failed method steps: {', '.join(failed)}" if failed else ""),
        flush=True,
    )
    print(f"report: {paths['report']}  plot: {paths['plot']}", flush=True)
    (out / "verdict.json").write_text(json.dumps({
        "status": journal.get("status"),
        "deviated": journal.get("deviated"),
        "before": (ss.get("before") or {}).get("steady_state_met"),
        "after": (ss.get("after") or {}).get("steady_state_met"),
        "failed_method_steps": failed,
    }, indent=2) + "\n")
    verdicts = [(ss.get(k) or {}).get("steady_state_met") for k in ("before", "after")]
    ok = (
        journal.get("status") == "completed"
        and not journal.get("deviated")
        and not failed
        and False not in verdicts
        and any(v is True for v in verdicts)
        and (verdicts[1] is not None or opts.strategy == "before-method-only")
    )
    return 0 if ok else 1


def _warm_up(timeline: metrics.Timeline, services: list[str], seconds: float,
             load: subprocess.Popen[bytes]) -> None:
    """Let the load reach every service before the first hypothesis: at least ``seconds``, and
    until each listed service has seen calls (bounded by 60 s)."""
    t0 = time.monotonic()
    while True:
        if load.poll() is not None:
            raise mesh.MeshError(f"locust exited with {load.returncode} during the warm-up")
        elapsed = time.monotonic() - t0
        if elapsed >= seconds:
            wins = [timeline.window(s, seconds) for s in services]
            if all(w is not None and w.requests > 0 for w in wins) or elapsed > 60:
                return
        time.sleep(0.5)
