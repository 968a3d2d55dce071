"""The container image and the manifests, checked without Docker or Kubernetes.

Every command in docker-compose.yml, the Dockerfile's HEALTHCHECK and the Kubernetes manifests
(including what ``meshlet inject`` adds) is parsed by the real ``meshlet`` argument parser, so a
renamed flag or subcommand fails here; each subcommand's ``--help`` runs as a process. The
structure a pod needs (shared network namespace, capture with NET_ADMIN, the proxy's UID, the
addresses the sidecars advertise, tokens and volumes) is checked too.
"""

from __future__ import annotations

import fnmatch
import functools
import io
import re
import shlex
import subprocess
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml

from control_plane.cli.main import build_parser, main
from tests.support import PY, ROOT, env

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
K8S = ROOT / "configs" / "kubernetes"
IMAGE_ENTRYPOINT = ["meshlet"]


def meshlet_invocations(argv: list[str]) -> list[list[str]]:
    """The ``meshlet`` command lines in a container's argv: itself, or inside ``sh -c``."""
    if argv[:1] == ["meshlet"]:
        return [argv[1:]]
    if argv[:2] == ["sh", "-c"]:
        script = argv[2].replace("$$", "$")
        lex = shlex.shlex(script, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        toks = list(lex)
        found, cur = [], None
        for t in toks:
            if cur is not None and (set(t) <= set(";&|><") or t in ("do", "done", "then")):
                found.append(cur)
                cur = None
            elif cur is not None:
                cur.append(re.sub(r"\$\{?s\}?", "orders", t))
            elif t == "meshlet":
                cur = []
        if cur is not None:
            found.append(cur)
        return found
    return []


def app_invocations(argv: list[str]) -> list[list[str]]:
    """``python -m control_plane.demo.apps ...`` command lines (the sample app)."""
    text = argv[2] if argv[:2] == ["sh", "-c"] else shlex.join(argv)
    m = re.search(r"python -m control_plane\.demo\.apps((?:\s+[^;&|]+)?)", text)
    return [shlex.split(m.group(1))] if m else []


def check_meshlet_args(args: list[str], where: str) -> None:
    parser, _ = build_parser()
    err = io.StringIO()
    try:
        with redirect_stderr(err), redirect_stdout(io.StringIO()):
            parser.parse_args(args)
    except SystemExit as e:
        raise AssertionError(f"{where}: `meshlet {shlex.join(args)}` does not parse: "
                             f"{err.getvalue().strip()}") from e


@functools.cache
def app_help() -> str:
    return subprocess.run([PY, "-m", "control_plane.demo.apps", "--help"], capture_output=True,
                          text=True, timeout=30, env=env(), cwd=str(ROOT)).stdout


def check_app_args(args: list[str], where: str) -> None:
    from control_plane.demo import apps

    help_text = app_help()
    for a in args:
        if a.startswith("--"):
            assert f"{a} " in help_text or f"{a}\n" in help_text, f"{where}: app flag {a}"
    assert apps.main  # the module the image runs


def argv_of(svc: dict) -> list[str]:
    ep = svc.get("entrypoint", IMAGE_ENTRYPOINT)
    ep = ep if isinstance(ep, list) else shlex.split(ep)
    cmd = svc.get("command", [])
    cmd = cmd if isinstance(cmd, list) else shlex.split(cmd)
    return [*ep, *[str(c) for c in cmd]]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_every_compose_command_is_a_real_meshlet_command(compose: dict) -> None:
    seen_subcommands = set()
    for name, svc in compose["services"].items():
        argv = argv_of(svc)
        invocations = meshlet_invocations(argv)
        apps = app_invocations(argv)
        assert invocations or apps, f"{name}: runs neither meshlet nor the sample app: {argv}"
        for args in invocations:
            check_meshlet_args(args, f"service {name}")
            seen_subcommands.add(args[0])
        for args in apps:
            check_app_args(args, f"service {name}")
    assert {"control-plane", "token", "apply", "sidecar", "iptables", "wait"} <= seen_subcommands
    for sub in sorted(seen_subcommands):
        r = subprocess.run([PY, "-m", "control_plane.cli", sub, "--help"], capture_output=True,
                           text=True, timeout=30, env=env(), cwd=str(ROOT))
        assert r.returncode == 0, f"meshlet {sub} --help: {r.stderr}"


def test_compose_pods_share_a_namespace_and_capture(compose: dict) -> None:
    services = compose["services"]
    addresses = {n: s["networks"]["mesh"]["ipv4_address"] for n, s in services.items()
                 if isinstance(s.get("networks"), dict) and
                 "ipv4_address" in (s["networks"].get("mesh") or {})}
    subnet = compose["networks"]["mesh"]["ipam"]["config"][0]["subnet"]
    import ipaddress

    for ip in addresses.values():
        assert ipaddress.ip_address(ip) in ipaddress.ip_network(subnet)
    token_script = services["tokens"]["command"][0]
    minted = set(re.search(r"for s in ([\w ]+);", token_script).group(1).split())
    proxies = [n for n in services if n.endswith("-proxy")]
    assert len(proxies) == 4
    for proxy in proxies:
        pod = proxy[: -len("-proxy")]
        svc, init = services[proxy], services[f"{pod}-init"]
        assert svc["network_mode"] == f"service:{pod}" == init["network_mode"]
        # the init step: root with NET_ADMIN, before the sidecar
        assert init["user"] == "0:0" and "NET_ADMIN" in init["cap_add"]
        assert argv_of(init)[1] == "iptables"
        assert svc["depends_on"][f"{pod}-init"]["condition"] == "service_completed_successfully"
        # the sidecar keeps the image's user (1337); the app must not be 1337
        assert "user" not in svc
        assert not services[pod]["user"].startswith("1337")
        args = argv_of(svc)[1:]
        flags = dict(zip(args[1::2], args[2::2], strict=False))
        assert flags["--advertise-address"] == addresses[pod]
        assert flags["--service"] in minted
        assert flags["--token-file"] == f"/var/run/meshlet/tokens/{flags['--service']}.token"
        assert flags["--control-plane"] == "https://control-plane:15012"
        # the app waits for its sidecar: `meshlet wait && exec app`
        assert argv_of(services[pod])[2].startswith("meshlet wait")
    declared = set(compose["volumes"])
    for name, svc in services.items():
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("./"):
                assert (ROOT / src).exists(), f"{name}: {src}"
            else:
                assert src in declared, f"{name}: volume {src}"
        for dep in svc.get("depends_on", []):
            assert dep in services, f"{name} depends on unknown {dep}"


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile_is_multi_stage_non_root_with_a_healthcheck() -> None:
    ins = dockerfile_instructions()
    froms = [r for op, r in ins if op == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS builder")
    assert any(op == "ENV" and "MESHLET_REQUIRE_EXTENSIONS=1" in r for op, r in ins)
    assert any(op == "RUN" and "pip wheel" in r for op, r in ins)
    assert any(op == "RUN" and "iptables" in r and "iproute2" in r for op, r in ins)
    assert ("USER", "1337:1337") in ins
    assert ("ENTRYPOINT", '["meshlet"]') in ins
    health = next(r for op, r in ins if op == "HEALTHCHECK")
    cmd = yaml.safe_load(health.split("CMD", 1)[1])
    assert cmd[0] == "meshlet"
    check_meshlet_args(cmd[1:], "HEALTHCHECK")
    # what the builder copies exists, and .dockerignore does not hide it
    ignore = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]
    for op, rest in ins:
        if op == "COPY" and not rest.startswith("--from"):
            for src in rest.split()[:-1]:
                assert (ROOT / src).exists(), src
                assert not any(fnmatch.fnmatch(src, pat) for pat in ignore), src


def k8s_docs() -> list[tuple[str, dict]]:
    return [(p.name, d) for p in sorted(K8S.glob("*.yaml"))
            for d in yaml.safe_load_all(p.read_text()) if d]


def test_control_plane_manifest() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for f, d in k8s_docs()
            if f == "control-plane.yaml"}
    assert ("Namespace", "meshlet-system") in docs
    assert ("ServiceAccount", "meshlet-control-plane") in docs
    pvc = docs[("PersistentVolumeClaim", "meshlet-control-plane-data")]
    dep = docs[("Deployment", "meshlet-control-plane")]
    svc = docs[("Service", "meshlet-control-plane")]
    assert svc["metadata"]["namespace"] == "meshlet-system"
    assert [p["port"] for p in svc["spec"]["ports"]] == [15012]
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1337
    (c,) = pod["containers"]
    check_meshlet_args(c["args"], "control-plane Deployment")
    data_dir = c["args"][c["args"].index("--data-dir") + 1]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols[mounts[data_dir]]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert c["readinessProbe"]["httpGet"]["port"] == 15012
    assert dep["spec"]["template"]["metadata"]["annotations"]["sidecar.meshlet.dev/inject"] == \
        "false"


def test_injected_demo_apps_run_real_commands(tmp_path: Path) -> None:
    out = tmp_path / "injected.yaml"
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        assert main(["inject", "-f", str(K8S / "demo-apps.yaml"), "-o", str(out)]) == 0
    deployments = [d for d in yaml.safe_load_all(out.read_text()) if d["kind"] == "Deployment"]
    assert len(deployments) == 4
    for d in deployments:
        spec = d["spec"]["template"]["spec"]
        init, proxy, app = spec["initContainers"][0], spec["containers"][0], spec["containers"][1]
        check_meshlet_args(init["args"], f"{d['metadata']['name']} init")
        check_meshlet_args([a.replace("$(POD_IP)", "10.0.0.1") for a in proxy["args"]],
                           f"{d['metadata']['name']} proxy")
        check_meshlet_args(proxy["lifecycle"]["postStart"]["exec"]["command"][1:], "postStart")
        check_app_args(app["args"], d["metadata"]["name"])


def test_the_checks_catch_a_wrong_flag() -> None:
    with pytest.raises(AssertionError, match="does not parse"):
        check_meshlet_args(["sidecar", "--service", "x", "--app-port", "1", "--bogus"], "t")
    with pytest.raises(AssertionError, match="does not parse"):
        check_meshlet_args(["no-such-command"], "t")
    assert meshlet_invocations(["sh", "-c", "meshlet wait --timeout 3 && exec app; meshlet "
                                "token create --service $$s > f"]) == [
        ["wait", "--timeout", "3"], ["token", "create", "--service", "orders"]]
