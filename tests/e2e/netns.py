"""A small multi-host mesh out of network namespaces: one per pod, joined by veths and a bridge.

Each "pod" is a network namespace with its loopback up and an ``eth0`` (one end of a veth pair;
the other end is enslaved to the bridge ``mlbr0`` in the host namespace). Pods get addresses in
10.200.0.0/24 that exist only inside the namespaces this bed created; the bridge has no address,
so nothing here can reach, or be reached from, anything outside. Processes run in a pod with
``ip netns exec`` (which also bind-mounts ``/etc/netns/<pod>/hosts`` over ``/etc/hosts``), the
sidecar under UID/GID 1337 with ``setpriv``.

:meth:`TestBed.close` (always called, from a ``finally``) stops every process it started, then
deletes the namespaces, the veths, the bridge and the ``/etc/netns/<pod>`` folders. Names are
fixed and prefixed, so a bed left behind by a killed run is removed by the next one.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import PY, ROOT, Proc, env, wait_until

BRIDGE = "mlbr0"
SUBNET = "10.200.0"
PROXY_UID = 1337
NETNS_ETC = Path("/etc/netns")


def sh(*cmd: str, check: bool = True, timeout: float = 20, input: str | None = None,
       ) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, input=input)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.strip()}")
    return r


def proxy_identity() -> tuple[int | None, int]:
    """(uid, gid) to run the sidecar as. UID and GID 1337 when that user can run this Python;
    when the interpreter lives somewhere only root can read (e.g. under /root), the sidecar keeps
    UID 0 and runs with GID 1337 only, which the capture rules exclude just the same (Istio's
    GID rule)."""
    r = subprocess.run(["setpriv", f"--reuid={PROXY_UID}", f"--regid={PROXY_UID}",
                        "--clear-groups", PY, "-c", "import aiohttp, uvloop"],
                       capture_output=True, timeout=30, env=env(), cwd="/")
    return (PROXY_UID if r.returncode == 0 else None), PROXY_UID


def can_run() -> str:
    """Why this machine cannot host the bed ("" when it can)."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "iptables", "iptables-save", "setpriv", "curl"):
        if not shutil.which(tool):
            return f"needs {tool}"
    return ""


@dataclass
class Pod:
    bed: TestBed
    name: str  # the netns name
    ip: str
    veth: str  # host-side end
    procs: list[Proc] = field(default_factory=list)

    @property
    def hosts_file(self) -> Path:
        return NETNS_ETC / self.name / "hosts"

    def exec(self, *cmd: str, check: bool = True, timeout: float = 20,
             ) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.name, *cmd, check=check, timeout=timeout)

    def meshlet(self, *args: str, check: bool = True, timeout: float = 30,
                ) -> subprocess.CompletedProcess[str]:
        """Run ``meshlet ARGS`` in this pod, as root (the init step)."""
        r = subprocess.run(["ip", "netns", "exec", self.name, PY, "-m", "control_plane.cli", *args],
                           capture_output=True, text=True, timeout=timeout, env=self.bed.env(),
                           cwd=str(ROOT))
        if check and r.returncode != 0:
            raise RuntimeError(f"meshlet {' '.join(args)} in {self.name}: {r.stderr.strip()}")
        return r

    def start(self, label: str, *cmd: str, uid: int | None = None, gid: int | None = None,
              ) -> Proc:
        """Start a long-running process in this pod (as ``uid`` and/or ``gid`` if given)."""
        prefix = ["ip", "netns", "exec", self.name]
        if uid is not None or gid is not None:
            prefix += ["setpriv", "--clear-groups"]
            if uid is not None:
                prefix.append(f"--reuid={uid}")
            if gid is not None or uid is not None:
                prefix.append(f"--regid={gid if gid is not None else uid}")
        p = Proc(f"{self.name}-{label}", [*prefix, *cmd], self.bed.logs, self.bed.env())
        self.procs.append(p)
        self.bed.procs.append(p)
        return p

    def curl(self, url: str, *extra: str, timeout: float = 10) -> tuple[int, dict[str, str], str]:
        """An unmodified client: plain curl in this pod, no proxy settings.

        Returns (status, headers, body); status 0 when curl got no answer."""
        r = self.exec("curl", "-sS", "-m", str(timeout), "-D", "-", *extra, url, check=False,
                      timeout=timeout + 5)
        if r.returncode != 0:
            return 0, {}, r.stderr.strip()
        head, _, body = r.stdout.replace("\r\n", "\n").partition("\n\n")
        lines = head.splitlines()
        status = int(lines[0].split()[1]) if lines else 0
        headers = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            headers[k.strip().lower()] = v.strip()
        return status, headers, body


class TestBed:
    """The bridge and its pods. Use as a context manager, or call :meth:`close` in a finally."""

    __test__ = False  # not a pytest class

    def __init__(self, pods: dict[str, int]) -> None:
        """``pods``: netns name -> last octet of its address in 10.200.0.0/24."""
        self.pods: dict[str, Pod] = {}
        self.procs: list[Proc] = []
        # readable by the sidecar's UID (pytest's tmp dirs are root-only)
        self.root = Path(tempfile.mkdtemp(prefix="meshlet-netns-"))
        os.chmod(self.root, 0o755)
        self.logs = self.root / "logs"
        self.logs.mkdir()
        self.home = self.root / "home"
        self.home.mkdir(mode=0o777)
        os.chmod(self.home, 0o1777)
        self._wanted = pods
        self._made_netns_etc = not NETNS_ETC.exists()
        self.proxy_ids = proxy_identity()
        self._cleanup_leftovers()
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def env(self) -> dict[str, str]:
        return env(HOME=str(self.home), PYTHONDONTWRITEBYTECODE="1")

    def _veth(self, name: str) -> str:
        return ("mlv-" + name.replace("pod-", ""))[:15]

    def _cleanup_leftovers(self) -> None:
        existing = sh("ip", "netns", "list", check=False).stdout.split()
        for name in self._wanted:
            if name in existing:
                sh("ip", "netns", "del", name, check=False)
            sh("ip", "link", "del", self._veth(name), check=False)
            shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
        sh("ip", "link", "del", BRIDGE, check=False)

    def _build(self) -> None:
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "link", "set", BRIDGE, "up")
        for name, octet in self._wanted.items():
            veth = self._veth(name)
            ip = f"{SUBNET}.{octet}"
            sh("ip", "netns", "add", name)
            pod = Pod(self, name, ip, veth)
            self.pods[name] = pod
            sh("ip", "link", "add", veth, "type", "veth", "peer", "name", f"{veth}-p")
            sh("ip", "link", "set", f"{veth}-p", "netns", name)
            sh("ip", "link", "set", veth, "master", BRIDGE)
            sh("ip", "link", "set", veth, "up")
            pod.exec("ip", "link", "set", "lo", "up")
            pod.exec("ip", "link", "set", f"{veth}-p", "name", "eth0")
            pod.exec("ip", "addr", "add", f"{ip}/24", "dev", "eth0")
            pod.exec("ip", "link", "set", "eth0", "up")
            (NETNS_ETC / name).mkdir(parents=True, exist_ok=True)
            pod.hosts_file.write_text(f"127.0.0.1\tlocalhost\n{ip}\t{name}\n")

    def pod(self, name: str) -> Pod:
        return self.pods[name]

    def private_dir(self, name: str, owner: int | None = None) -> Path:
        d = self.root / name
        d.mkdir(exist_ok=True)
        if owner is not None:
            os.chown(d, owner, owner)
            os.chmod(d, 0o700)
        return d

    def close(self) -> None:
        for p in reversed(self.procs):
            try:
                p.stop(timeout=5)
            except Exception:  # keep tearing down
                pass
        self.procs.clear()
        for name in self._wanted:
            # anything still running in the namespace (a child that escaped its parent)
            r = sh("ip", "netns", "pids", name, check=False)
            for pid in r.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", name, check=False)
            sh("ip", "link", "del", self._veth(name), check=False)
            shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
        sh("ip", "link", "del", BRIDGE, check=False)
        if self._made_netns_etc:
            try:
                NETNS_ETC.rmdir()  # only if we created it and nothing else is in it now
            except OSError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> TestBed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_control_plane(pod: Pod, data_dir: Path, port: int = 15012) -> str:
    """The control plane in its own pod, listening on the pod's address; returns its URL."""
    (data_dir / "listen.addr").unlink(missing_ok=True)
    p = pod.start("control-plane", PY, "-m", "control_plane.cli", "control-plane", "--data-dir",
                  str(data_dir), "--listen", f"{pod.ip}:{port}")
    addr = data_dir / "listen.addr"
    wait_until(lambda: addr.exists() or p.p.poll() is not None, timeout=30, what="control plane")
    if p.p.poll() is not None:
        raise RuntimeError(p.stderr())
    return f"https://{pod.ip}:{port}"


def create_token(cp_pod: Pod, url: str, data_dir: Path, service: str, dest: Path) -> Path:
    r = cp_pod.meshlet("token", "create", "--service", service, "--data-dir", str(data_dir),
                       "--control-plane", url)
    dest.write_text(r.stdout.strip() + "\n")
    os.chown(dest, PROXY_UID, PROXY_UID)
    os.chmod(dest, 0o600)
    return dest


def start_app(pod: Pod, service: str, version: str = "v1", port: int = 8080) -> Proc:
    """The sample app on 127.0.0.1:PORT in the pod (any UID but the proxy's)."""
    app = pod.start(f"app-{service}", PY, "-m", "control_plane.demo.apps", "--name", service,
                    "--version", version, "--port", str(port))
    app.wait_for("listening on", timeout=20)
    return app


def start_sidecar(bed: TestBed, pod: Pod, service: str, version: str, url: str, token: Path,
                  app_port: int = 8080) -> Proc:
    """The sidecar as the proxy user (see :func:`proxy_identity`), joined to the control plane."""
    uid, gid = bed.proxy_ids
    state = bed.private_dir(f"state-{pod.name}", owner=PROXY_UID)
    sidecar = pod.start(
        "sidecar", PY, "-m", "control_plane.cli", "sidecar", "--service", service,
        "--version", version, "--app-port", str(app_port), "--control-plane", url,
        "--token-file", str(token), "--state-dir", str(state), "--advertise-address", pod.ip,
        "--inbound-bind", "0.0.0.0", "--drain-timeout", "2", uid=uid, gid=gid)
    sidecar.wait_for(r"meshlet sidecar ready", timeout=40)
    return sidecar


def start_mesh_pod(bed: TestBed, pod: Pod, service: str, version: str, url: str,
                   token: Path, app_port: int = 8080) -> tuple[Proc, Proc]:
    """What a pod runs: the app, the init step's capture rules, then the sidecar."""
    app = start_app(pod, service, version, app_port)
    pod.meshlet("iptables")  # the init step, as root
    return app, start_sidecar(bed, pod, service, version, url, token, app_port)


def wait_ready(pod: Pod, timeout: float = 30) -> None:
    """``meshlet wait`` in the pod, as an app's entrypoint would run it."""
    r = pod.meshlet("wait", "--timeout", str(timeout), check=False, timeout=timeout + 10)
    if r.returncode != 0:
        raise RuntimeError(f"{pod.name}: {r.stderr.strip()}")


def poll(cond, timeout: float, interval: float = 0.2, what: str = ""):  # type: ignore[no-untyped-def]
    """Bounded polling that returns the last value instead of raising (for recovery timings)."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)
