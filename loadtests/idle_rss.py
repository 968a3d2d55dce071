"""Idle RSS of a meshlet sidecar, static and joined, beside Envoy's (issue 18).

Each target is started ``--starts`` times (interleaved: one start of every target per round),
answers one ``GET /`` through its outbound port, and 0.5 s later the RSS of its process tree is
read from ``/proc`` (the method of ``bench_http1.py``'s idle RSS). Medians are printed, with the
part of the RSS that is file-backed pages (binaries and shared libraries, shared between
processes that map the same files).

Targets:

  meshlet         ``meshlet sidecar --config loadtests/meshlet.yaml`` (what bench_http1 starts)
  meshlet-joined  ``meshlet sidecar --control-plane URL --token-file F``: joined to a control plane
                  started here (a fresh join each start: key, CSR, certificate, discovery stream)
  envoy           ``envoy --concurrency 1`` with loadtests/envoy.yaml (if installed)
  meshlet-base, meshlet-joined-base   the same two from another checkout (``--base-tree``), to
                  compare two trees in one run

Run: ``python loadtests/idle_rss.py [--starts 3] [--base-tree /path/to/other/checkout]``.
Imports of a sidecar at rest are guarded by tests/integration/test_idle_imports.py; this script
only measures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_http1 as h  # noqa: E402
import bench_mtls as m  # noqa: E402

PY = sys.executable


def _env(tree: Path) -> dict[str, str]:
    e = m.sidecar_env()
    e["PYTHONPATH"] = str(tree) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return e


class ControlPlane:
    """One control plane for every joined start; each start gets a new token and state dir."""

    def __init__(self, work: Path) -> None:
        self.data = work / "cp-data"
        addr = self.data / "listen.addr"
        self.proc = h.Proc("control-plane", [PY, "-m", "control_plane.cli", "control-plane",
                           "--data-dir", str(self.data), "--listen", "127.0.0.1:0"],
                           work, m.sidecar_env())  # fmt: skip
        h.wait_until(lambda: addr.exists() or not self.proc.alive(), 30, "control plane")
        if not self.proc.alive():
            raise RuntimeError(f"control plane exited:\n{self.proc.stderr()[-3000:]}")
        self.url = "https://" + addr.read_text().strip()


def file_backed_mb(pid: int) -> float:
    """The part of the tree's RSS that is pages of mapped files (the interpreter, shared
    libraries, extension modules, Envoy's binary): shared by every process mapping them."""
    kb = 0
    for p in h.tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                kb += sum(int(line.split()[1]) for line in f if line.startswith("RssFile:"))
        except OSError:
            pass
    return kb / 1024


def _idle_rss(pid: int, port: int, host: str) -> float:
    status = h.probe(port, host)
    if status != 200:
        raise RuntimeError(f"probe GET / answered {status}")
    time.sleep(0.5)  # as bench_http1: let start-up settle before reading the idle RSS
    return h.rss_bytes(pid) / 2**20


def start_joined(name: str, tree: Path, cp: ControlPlane, up: h.Upstream, work: Path,
                 n: int) -> tuple[float, float]:
    token = work / f"{name}-{n}.token"
    token.write_text(m.cli(cp.data, cp.url, "token", "create", "--service", "orders"))
    proc, outbound, _, _ = m.launch_sidecar(
        f"{name}-{n}", "orders", up.ports[0],
        ["--control-plane", cp.url, "--token-file", str(token),
         "--state-dir", str(work / f"state-{name}-{n}")], work, None, _env(tree),
    )  # fmt: skip
    try:
        # the sidecar's own service, once discovery has pushed it
        h.wait_until(lambda: h.probe(outbound, "orders") == 200, 30, f"{name} routed")
        return _idle_rss(proc.pid, outbound, "orders"), file_backed_mb(proc.pid)
    finally:
        proc.stop()


def start_static(name: str, up: h.Upstream, work: Path, n: int) -> tuple[float, float]:
    t = h.Target(name)
    run = work / f"{name}-{n}"  # a directory per start: the ready line is read from its stderr
    run.mkdir()
    h.start_target(t, run, up, None)  # starts, probes, sleeps 0.5 s and reads the idle RSS
    try:
        assert t.pid is not None
        return t.idle_rss / 2**20, file_backed_mb(t.pid)
    finally:
        if t.proc is not None:
            t.proc.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--starts", type=int, default=3, help="starts of each target (default 3)")
    ap.add_argument("--targets", default="", help="comma-separated (default: all available)")
    ap.add_argument("--base-tree", help="another checkout: adds meshlet-base, meshlet-joined-base")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args()
    targets = ["meshlet", "meshlet-joined"]
    if args.base_tree:
        h.BASE_TREE.append(Path(args.base_tree).resolve())
        targets += ["meshlet-base", "meshlet-joined-base"]
    if not h.envoy_missing("leave it out"):
        targets.append("envoy")
    if args.targets:
        targets = [t for t in args.targets.split(",") if t]
    work = Path(tempfile.mkdtemp(prefix="idle-rss-"))
    rss: dict[str, list[float]] = {t: [] for t in targets}
    files: dict[str, list[float]] = {t: [] for t in targets}
    try:
        up = h.Upstream("python", work, None)
        cp = ControlPlane(work) if any("joined" in t for t in targets) else None
        for n in range(args.starts):
            for t in targets:
                if "joined" in t:
                    assert cp is not None
                    tree = h.BASE_TREE[0] if t.endswith("-base") else h.ROOT
                    v, fb = start_joined(t, tree, cp, up, work, n)
                else:
                    v, fb = start_static(t, up, work, n)
                rss[t].append(v)
                files[t].append(fb)
                print(f"[idle-rss] start {n + 1} {t:<20} {v:6.1f} MB ({fb:.1f} MB file-backed)",
                      file=sys.stderr)  # fmt: skip
    finally:
        h.Proc.stop_all()
    med = {t: statistics.median(v) for t, v in rss.items() if v}
    med_file = {t: statistics.median(v) for t, v in files.items() if v}
    print(f"{'target':<20} {'median MB':>9} {'file-backed':>11}  starts")
    for t, each in rss.items():
        extra = f"  ({med[t] / med['envoy']:.2f}x envoy)" if "envoy" in med and t != "envoy" else ""
        print(f"{t:<20} {med[t]:9.1f} {med_file[t]:11.1f}  {', '.join(f'{x:.1f}' for x in each)}"
              f"{extra}")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps({"rss_mb": rss, "median_mb": med,
                                              "file_backed_mb": files,
                                              "git": h.git_state()}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
