"""Starting real processes for tests: sample apps, sidecars, control planes.

Processes write their output to files in the test's tmp dir (never to pipes that could fill and
block them); readiness is polled from those files and from admin endpoints, never slept for.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


# A server-first TCP app: ``python -c TCP_ECHO_APP PORT [NAME]`` greets with ``hello[ NAME]``,
# then echoes each line back prefixed with ``echo `` (the TCP mesh tests' app behind a sidecar).
TCP_ECHO_APP = r"""
import asyncio, sys
NAME = b" " + sys.argv[2].encode() if len(sys.argv) > 2 else b""
async def handle(r, w):
    w.write(b"hello" + NAME + b"\n")
    await w.drain()
    while line := await r.readline():
        w.write(b"echo " + line)
        await w.drain()
    w.close()
async def main():
    srv = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    await srv.serve_forever()
asyncio.run(main())
"""


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.update(extra)
    return e


def free_port() -> int:
    """A loopback port nobody listens on right now (also a port that refuses connections)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def port_below_ephemeral() -> int:
    """A free port for a listener the config names by number (a Sidecar's egress port): picked
    below the kernel's ephemeral range, as the demo does, so no outgoing connection takes it
    before the sidecar binds it."""
    from control_plane.cli.commands.demo import free_port_below_ephemeral

    return free_port_below_ephemeral()


def listening(port: int) -> bool:
    """Something accepts connections on loopback ``port``."""
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def wait_until(
    cond: Callable[[], object], timeout: float = 15.0, interval: float = 0.02, what: str = ""
) -> object:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what or cond}")
        time.sleep(interval)


def sockets_connected_to(port: int) -> list[str]:
    """This process's open TCP sockets whose peer is ``port`` on loopback (client ends only: a
    server in this process has ``port`` as its local port). Read from ``/proc``, so a test can
    check that a client closed its connection when it said it was done, not some time later:
    a socket still closing when the event loop closes is leaked ("unclosed transport")."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed since listed
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    found = []
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                cols = line.split()
                local, remote, inode = cols[1], cols[2], cols[9]
                if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == port:
                    found.append(f"{local} -> {remote} (state {cols[3]})")
    return found


async def until(
    cond: Callable[[], object], timeout: float = 15.0, interval: float = 0.01, what: str = ""
) -> object:
    """:func:`wait_until` for coroutines: polls ``cond`` (a function returning a value, or an
    awaitable of one) without blocking the event loop, and fails after ``timeout``."""
    import asyncio
    import inspect

    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if inspect.isawaitable(v):
            v = await v
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(interval)


def static_service_entry(
    name: str,
    *endpoint_ports: int,
    hosts: str | None = None,
    number: int = 8080,
    port_name: str = "http",
    protocol: str | None = None,
) -> str:
    """A ServiceEntry document (YAML) for ``name`` (or ``hosts``, a YAML flow list's items)
    with one port and a STATIC endpoint on loopback for each of ``endpoint_ports``: how a test
    puts an app it started behind a name."""
    proto = f", protocol: {protocol}" if protocol else ""
    eps = "".join(f"\n  - {{address: 127.0.0.1, ports: {{{port_name}: {p}}}}}"
                  for p in endpoint_ports)
    return f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: [{hosts or name}]
  ports: [{{number: {number}, name: {port_name}{proto}}}]
  resolution: STATIC
  endpoints:{eps}
"""


@contextlib.contextmanager
def stopped_at_end() -> Iterator[list[Any]]:
    """A list for the processes a fixture starts (anything with ``stop()``): every one is
    stopped at the end, the last started first, also when starting a later one failed."""
    started: list[Any] = []
    try:
        yield started
    finally:
        for p in reversed(started):
            p.stop()


async def outbound_request(
    sidecar: Sidecar, host: str, path: str, method: str = "GET", **kw: Any
) -> tuple[int, Any, bytes]:
    """One request through ``sidecar``'s outbound listener the way an app makes it (``Host``
    names the service; more ``headers`` may be given), on a connection of its own:
    (status, headers, body). The headers are case-insensitive (aiohttp's ``CIMultiDict``)."""
    import aiohttp

    headers = {"Host": host, **kw.pop("headers", {})}
    async with (
        aiohttp.ClientSession() as s,
        s.request(
            method, f"http://127.0.0.1:{sidecar.outbound}{path}", headers=headers, **kw
        ) as r,
    ):
        return r.status, r.headers.copy(), await r.read()


class Proc:
    def __init__(
        self, name: str, cmd: list[str], workdir: Path, environ: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.cmd = cmd
        self.out = workdir / f"{name}.out"
        self.err = workdir / f"{name}.err"
        self._fo = open(self.out, "wb")  # noqa: SIM115 - open for the process lifetime
        self._fe = open(self.err, "wb")  # noqa: SIM115 - open for the process lifetime
        self.p = subprocess.Popen(
            cmd,
            stdout=self._fo,
            stderr=self._fe,
            stdin=subprocess.DEVNULL,
            env=environ or env(),
            cwd=str(ROOT),
        )

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        rx = re.compile(pattern)

        def check() -> re.Match[str] | None:
            if self.p.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.p.returncode}:\n{self.stderr()[-4000:]}"
                )
            return rx.search(self.stderr())

        return wait_until(check, timeout, what=f"{self.name}: {pattern}")  # type: ignore[return-value]

    def signal(self, sig: int) -> None:
        if self.p.poll() is None:
            self.p.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        self._fo.close()
        self._fe.close()
        return self.p.returncode


@contextlib.contextmanager
def _stopped_if_failed(proc: Proc) -> Iterator[None]:
    """A process that did not come up is stopped (and its output files closed) before the
    error goes to the test: nobody else holds it to stop it."""
    try:
        yield
    except BaseException:
        proc.stop()
        raise


def start_app(
    workdir: Path, name: str, version: str = "v1", outbound: str = "", *extra: str
) -> tuple[Proc, int]:
    """A sample app; ``extra`` are more arguments (``--fail-percent 20``, ``--delay-ms 300``)."""
    port_file = workdir / f"app-{name}-{version}.port"
    cmd = [
        PY,
        "-m",
        "control_plane.demo.apps",
        "--name",
        name,
        "--version",
        version,
        "--port",
        "0",
        "--port-file",
        str(port_file),
    ]
    if outbound:
        cmd += ["--outbound", outbound]
    cmd += list(extra)
    proc = Proc(f"app-{name}-{version}", cmd, workdir)
    with _stopped_if_failed(proc):
        wait_until(lambda: port_file.exists() or proc.p.poll() is not None, what=f"app {name}")
        if proc.p.poll() is not None:
            raise RuntimeError(proc.stderr())
    return proc, int(port_file.read_text())


READY = r"meshlet sidecar ready service=\S+ outbound=(\d+) inbound=(\d+) admin=(\d+)"


class Sidecar:
    def __init__(self, proc: Proc, outbound: int, inbound: int, admin: int) -> None:
        self.proc = proc
        self.outbound = outbound
        self.inbound = inbound
        self.admin = admin

    def admin_get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}{path}", timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def stop(self) -> int | None:
        return self.proc.stop()


def start_sidecar(
    workdir: Path,
    service: str,
    app_port: int,
    config: str | Path | None,
    *extra: str,
    environ: dict[str, str] | None = None,
    name: str | None = None,
) -> Sidecar:
    """A sidecar from a config file (text or path), or joined to a control plane when
    ``config`` is None and ``extra`` carries ``--control-plane URL --token-file F``."""
    src: list[str] = []
    if config is not None:
        cfg = Path(config)
        if not cfg.exists():
            cfg = workdir / f"{name or service}-config.yaml"
            cfg.write_text(str(config))
        src = ["--config", str(cfg)]
    cmd = [
        PY,
        "-m",
        "control_plane.cli",
        "sidecar",
        "--service",
        service,
        "--app-port",
        str(app_port),
        *src,
        "--outbound",
        "0",
        "--inbound",
        "0",
        "--admin",
        "0",
        "--inbound-bind",
        "127.0.0.1",
        *extra,
    ]
    proc = Proc(f"sidecar-{name or service}", cmd, workdir, environ)
    with _stopped_if_failed(proc):
        m = proc.wait_for(READY)
    return Sidecar(proc, int(m.group(1)), int(m.group(2)), int(m.group(3)))


def join_sidecar(
    workdir: Path,
    cp: ControlPlane,
    service: str,
    app_port: int,
    *extra: str,
    name: str | None = None,
    state_dir: Path | None = None,
) -> Sidecar:
    """A sidecar that joins the control plane ``cp`` with a join token made for it, its
    identity kept in ``state_dir`` (``workdir/<name or service>`` by default)."""
    name = name or service
    return start_sidecar(
        workdir, service, app_port, None,
        "--control-plane", cp.url, "--token-file", str(cp.token(service, workdir)),
        "--state-dir", str(state_dir or workdir / name), *extra,
        name=name,
    )  # fmt: skip


@contextlib.contextmanager
def sidecar_for_apps(
    workdir: Path, config: str, *apps: str
) -> Iterator[tuple[Sidecar, list[tuple[Proc, int]]]]:
    """Sample apps named ``apps`` and a standalone ``orders`` sidecar beside the first, its
    config ``config`` with the apps' ports as ``{a}``, ``{b}``... and ``{dead}`` (a port
    nobody listens on): (the sidecar, [(app, port)...]), all stopped at the end."""
    with stopped_at_end() as started:
        running = []
        for name in apps:
            proc, port = start_app(workdir, name)
            started.append(proc)
            running.append((proc, port))
        ports = dict(zip("abcdefgh", (port for _, port in running), strict=False))
        sc = start_sidecar(workdir, "orders", running[0][1],
                           config.format(**ports, dead=free_port()))
        started.append(sc)
        yield sc, running


class ControlPlane:
    def __init__(self, proc: Proc, data_dir: Path, url: str) -> None:
        self.proc = proc
        self.data_dir = data_dir
        self.url = url

    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PY, "-m", "control_plane.cli", *args],
            capture_output=True,
            text=True,
            input=input,
            env=env(MESHLET_DATA_DIR=str(self.data_dir), MESHLET_CONTROL_PLANE=self.url),
            cwd=str(ROOT),
            timeout=60,
        )

    def token(self, service: str, workdir: Path, namespace: str = "default") -> Path:
        r = self.cli("token", "create", "--service", service, "--namespace", namespace)
        assert r.returncode == 0, r.stderr
        path = workdir / f"{service}.{namespace}.token"
        path.write_text(r.stdout.strip())
        return path

    def stop(self) -> int | None:
        return self.proc.stop()


def start_control_plane(workdir: Path, data_dir: Path | None = None,
                        listen: str = "127.0.0.1:0") -> ControlPlane:
    data = data_dir or workdir / "cp-data"
    addr = data / "listen.addr"
    if addr.exists():
        addr.unlink()
    proc = Proc(
        "control-plane",
        [
            PY,
            "-m",
            "control_plane.cli",
            "control-plane",
            "--data-dir",
            str(data),
            "--listen",
            listen,
        ],
        workdir,
    )
    with _stopped_if_failed(proc):
        wait_until(lambda: addr.exists() or proc.p.poll() is not None, what="control plane")
        if proc.p.poll() is not None:
            raise RuntimeError(proc.stderr())
    return ControlPlane(proc, data, "https://" + addr.read_text().strip())


def etcd_healthy(url: str) -> bool:
    """Whether the etcd member at ``url`` (plain HTTP) says it is healthy."""
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return json.loads(r.read()).get("health") == "true"
    except (OSError, ValueError):
        return False


class EtcdCluster:
    """An etcd cluster on loopback for control-plane replicas, 3 members unless told (etcd
    cannot bind port 0: free ports are picked). ``endpoints`` is the ``--store`` value;
    members can be killed and started again on their data dirs."""

    def __init__(self, workdir: Path, members: int = 3) -> None:
        self.workdir = workdir
        self.members = members
        self.client = [free_port() for _ in range(members)]
        self.peer = [free_port() for _ in range(members)]
        self.procs: list[Proc | None] = [None] * members
        self.initial = ",".join(f"m{i}=http://127.0.0.1:{p}" for i, p in enumerate(self.peer))

    @property
    def endpoints(self) -> str:
        return "etcd://" + ",".join(f"127.0.0.1:{p}" for p in self.client)

    def endpoint(self, i: int) -> str:
        """The ``--store`` value that points at member ``i`` alone."""
        return f"etcd://127.0.0.1:{self.client[i]}"

    def start(self, i: int) -> None:
        self.procs[i] = Proc(f"etcd-m{i}-{time.monotonic_ns()}", [
            "etcd", "--name", f"m{i}", "--data-dir", str(self.workdir / f"etcd-m{i}"),
            "--listen-client-urls", f"http://127.0.0.1:{self.client[i]}",
            "--advertise-client-urls", f"http://127.0.0.1:{self.client[i]}",
            "--listen-peer-urls", f"http://127.0.0.1:{self.peer[i]}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer[i]}",
            "--initial-cluster", self.initial, "--initial-cluster-state", "new",
            "--initial-cluster-token", "meshlet-test", "--log-level", "warn",
        ], self.workdir)

    def healthy(self, i: int) -> bool:
        return etcd_healthy(f"http://127.0.0.1:{self.client[i]}")

    def start_all(self) -> None:
        for i in range(self.members):
            self.start(i)
        for i in range(self.members):
            wait_until(lambda i=i: self.healthy(i), timeout=30, interval=0.1,
                       what=f"etcd member {i} healthy")

    def kill(self, i: int) -> None:
        p = self.procs[i]
        assert p is not None
        p.signal(signal.SIGKILL)
        p.p.wait(10)
        p.stop()

    def stop(self) -> None:
        for p in self.procs:
            if p is not None:
                p.stop()
