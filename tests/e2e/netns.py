"""A small multi-host mesh out of network namespaces: one per pod, joined by veths and a bridge.

Each "pod" is a network namespace with its loopback up and an ``eth0`` (one end of a veth pair;
the other end is enslaved to the bed's bridge in the host namespace). Pods get addresses in a
10.200-223.x.0/24 subnet that exist only inside the namespaces this bed created; the bridge has no
address, so nothing here can reach, or be reached from, anything outside. Processes run in a pod
with ``ip netns exec`` (which also bind-mounts ``/etc/netns/<netns>/hosts`` over ``/etc/hosts``),
the sidecar under UID/GID 1337 with ``setpriv``.

Every bed is named for its run: the owning process id and a per-process counter are in the name of
each of its namespaces (``pod-cp-ml<pid>-<n>``), its bridge (``mlb<pid>-<n>``) and its veths
(``mlv<pid>-<n><i>``, within Linux's 15 characters), and it takes a subnet that no other bed and
no host interface uses, chosen under a lock. So two test runs on one host (two root CI jobs, a
developer's run beside CI) never share or remove each other's bed. :meth:`TestBed.close` (always
called, from a ``finally``) stops every process it started, then deletes only its own namespaces,
veths, bridge and ``/etc/netns/<netns>`` folders. A bed left behind by a killed run (its owner
process is gone) is removed when the next bed is made.
"""

from __future__ import annotations

import fcntl
import ipaddress
import itertools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import PY, ROOT, Proc, env, wait_until

PROXY_UID = 1337
NETNS_ETC = Path("/etc/netns")
# candidate /24s for a bed's pods: 10.200.0.0/24 ... 10.223.255.0/24
SUBNETS = (f"10.{a}.{b}" for a in range(200, 224) for b in range(256))
# host-wide (namespaces and links are): /run, else the temp dir every run on the host shares
LOCK = (Path("/run") if Path("/run").is_dir() else Path(tempfile.gettempdir())) / "meshlet-netns.lock"
_BEDS = itertools.count()
# a bed's names carry its owner's pid: links mlb<pid>-<n> / mlv<pid>-<n><i>, netns NAME-ml<pid>-<n>
_LINK_OWNER = re.compile(r"^ml[bv]([0-9a-f]+)-\d")
_NETNS_OWNER = re.compile(r"-ml([0-9a-f]+)-\d+$")


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


@contextmanager
def _host_lock() -> Iterator[None]:
    """One bed at a time picks its names and subnet on this host (across processes)."""
    with open(LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _netns_names() -> list[str]:
    return [ln.split()[0] for ln in sh("ip", "netns", "list", check=False).stdout.splitlines()
            if ln.strip()]


def _link_names() -> list[str]:
    out = sh("ip", "-o", "link", "show", check=False).stdout
    return [m[1] for m in re.finditer(r"^\d+: ([^:@\s]+)", out, re.M)]


def _subnets_in_use() -> set[str]:
    """The /24s (as ``a.b.c``) of the host's addresses and of every bed's pods. A host network
    wider than a /16 (a 10.0.0.0/8 VPN, say) is not counted: the bed's addresses exist only in
    its own namespaces, so they cannot clash with it; they only must not look alike."""
    used: set[str] = set()
    outs = [sh("ip", "-o", "-4", "addr", "show", check=False).stdout]
    outs += [sh("ip", "-n", ns, "-o", "-4", "addr", "show", check=False).stdout
             for ns in _netns_names() if _NETNS_OWNER.search(ns)]
    for out in outs:
        for m in re.finditer(r"inet (\d+\.\d+\.\d+\.\d+/\d+)", out):
            net = ipaddress.ip_interface(m[1]).network
            if net.prefixlen < 16:
                continue
            nets = net.subnets(new_prefix=24) if net.prefixlen <= 24 else [
                net.supernet(new_prefix=24)]
            used.update(str(n.network_address).rsplit(".", 1)[0] for n in nets)
    return used


def _remove_orphans() -> None:
    """Beds whose owner process is gone (a killed run): never a live run's bed."""
    for ns in _netns_names():
        m = _NETNS_OWNER.search(ns)
        if m and not _alive(int(m[1], 16)):
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", ns, check=False)
            shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)
    for link in _link_names():
        m = _LINK_OWNER.match(link)
        if m and not _alive(int(m[1], 16)):
            sh("ip", "link", "del", link, check=False)


@dataclass
class Pod:
    bed: TestBed
    name: str  # the pod's name in the test (``pod-orders``), its hostname in the hosts file
    ip: str
    veth: str  # host-side end
    netns: str = ""  # the network namespace: the name, made unique to this bed
    procs: list[Proc] = field(default_factory=list)

    @property
    def hosts_file(self) -> Path:
        return NETNS_ETC / self.netns / "hosts"

    def exec(self, *cmd: str, check: bool = True, timeout: float = 20,
             ) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.netns, *cmd, check=check, timeout=timeout)

    def meshlet(self, *args: str, check: bool = True, timeout: float = 30,
                ) -> subprocess.CompletedProcess[str]:
        """Run ``meshlet ARGS`` in this pod, as root (the init step)."""
        r = subprocess.run(["ip", "netns", "exec", self.netns, PY, "-m", "control_plane.cli", *args],
                           capture_output=True, text=True, timeout=timeout, env=self.bed.env(),
                           cwd=str(ROOT))
        if check and r.returncode != 0:
            raise RuntimeError(f"meshlet {' '.join(args)} in {self.name}: {r.stderr.strip()}")
        return r

    def start(self, label: str, *cmd: str, uid: int | None = None, gid: int | None = None,
              ) -> Proc:
        """Start a long-running process in this pod (as ``uid`` and/or ``gid`` if given)."""
        prefix = ["ip", "netns", "exec", self.netns]
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
        """``pods``: pod name -> last octet of its address in the bed's /24."""
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
        self.tag = f"{os.getpid():x}-{next(_BEDS)}"  # this run's, and this bed's
        self.bridge = f"mlb{self.tag}"
        self.netns_suffix = f"-ml{self.tag}"
        self.subnet = ""
        self._made_netns_etc = not NETNS_ETC.exists()
        self.proxy_ids = proxy_identity()
        try:
            with _host_lock():
                _remove_orphans()
                used = _subnets_in_use()
                self.subnet = next((n for n in SUBNETS if n not in used), "")
                if not self.subnet:
                    raise RuntimeError("no free /24 in 10.200.0.0-10.223.255.0 for the bed")
                self._build()
        except BaseException:
            self.close()
            raise

    def env(self) -> dict[str, str]:
        return env(HOME=str(self.home), PYTHONDONTWRITEBYTECODE="1")

    def _veth(self, index: int) -> str:
        veth = f"mlv{self.tag}{index:x}"
        assert len(veth) + 2 <= 15, veth  # "-p" for the peer; Linux's IFNAMSIZ is 16 with NUL
        return veth

    def _build(self) -> None:
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "link", "set", self.bridge, "up")
        for index, (name, octet) in enumerate(self._wanted.items()):
            veth = self._veth(index)
            ip = f"{self.subnet}.{octet}"
            netns = name + self.netns_suffix
            pod = Pod(self, name, ip, veth, netns)
            self.pods[name] = pod
            sh("ip", "netns", "add", netns)
            sh("ip", "link", "add", veth, "type", "veth", "peer", "name", f"{veth}-p")
            sh("ip", "link", "set", f"{veth}-p", "netns", netns)
            sh("ip", "link", "set", veth, "master", self.bridge)
            sh("ip", "link", "set", veth, "up")
            pod.exec("ip", "link", "set", "lo", "up")
            pod.exec("ip", "link", "set", f"{veth}-p", "name", "eth0")
            pod.exec("ip", "addr", "add", f"{ip}/24", "dev", "eth0")
            pod.exec("ip", "link", "set", "eth0", "up")
            (NETNS_ETC / netns).mkdir(parents=True, exist_ok=True)
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
        existing = set(_netns_names())
        for index, name in enumerate(self._wanted):
            netns = name + self.netns_suffix  # only this bed's: never another run's
            if netns in existing:
                # anything still running in the namespace (a child that escaped its parent)
                r = sh("ip", "netns", "pids", netns, check=False)
                for pid in r.stdout.split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass
                sh("ip", "netns", "del", netns, check=False)
            sh("ip", "link", "del", self._veth(index), check=False)
            shutil.rmtree(NETNS_ETC / netns, ignore_errors=True)
        sh("ip", "link", "del", self.bridge, check=False)
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
