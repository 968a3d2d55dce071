"""The Kubernetes manifest for control-plane replicas on etcd: at least two replicas, every
flag one the real CLI parses and checks, etcd endpoints and credentials from Secrets (never a
password on the command line), a cache-only data dir, and the Service sidecars join at."""

from __future__ import annotations

import argparse

import yaml

from control_plane.cli.commands import control_plane as cp_command
from tests.e2e.test_container_files import K8S, check_meshlet_args


def test_replicas_manifest() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d
            for d in yaml.safe_load_all((K8S / "control-plane-replicas.yaml").read_text()) if d}
    dep = docs[("Deployment", "meshlet-control-plane")]
    assert dep["spec"]["replicas"] >= 2
    assert docs[("Service", "meshlet-control-plane")]["spec"]["ports"][0]["port"] == 15012
    assert docs[("PodDisruptionBudget", "meshlet-control-plane")]["spec"]["minAvailable"] == 1
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    env = {e["name"]: e for e in c["env"]}
    secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in c["env"]
               if "secretKeyRef" in e.get("valueFrom", {})}
    assert secrets == {"meshlet-etcd"}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert "MESHLET_ETCD_PASSWORD" in env and not any("password" in a for a in c["args"]
                                                       if not a.startswith("--etcd-"))
    # $(VAR) as the kubelet expands it, then the real parser and the real flag checks
    values = {"MESHLET_ETCD_ENDPOINTS": "etcd://etcd-0:2379,etcd-1:2379",
              "MESHLET_ETCD_USER": "meshlet", "POD_IP": "10.0.0.7"}
    args = []
    for a in c["args"]:
        for k, v in values.items():
            a = a.replace(f"$({k})", v)
        args.append(a)
    check_meshlet_args(args, "control-plane replicas Deployment")
    parser = argparse.ArgumentParser()
    cp_command.add_arguments(parser)
    ns = parser.parse_args(args[1:])
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in vols[mounts[ns.data_dir]]  # a cache only: etcd holds the truth
    for flag in (ns.etcd_cacert, ns.etcd_cert, ns.etcd_key, ns.admin_token_file):
        mount = next(m for m in mounts if flag.startswith(m + "/"))
        assert "secret" in vols[mounts[mount]]
    assert ns.store.startswith("etcd://") and ns.advertise_address == "10.0.0.7"
