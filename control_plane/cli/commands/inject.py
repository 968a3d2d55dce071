"""``meshlet inject``: add the meshlet init and sidecar containers to Kubernetes workloads.

Like ``istioctl kube-inject``: reads a multi-document YAML of manifests and writes it back with
every pod template (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob, Pod, and the
items of a ``List``) given

- an init container ``meshlet-init`` running ``meshlet iptables`` as root with NET_ADMIN and
  NET_RAW, so the app's TCP traffic is captured into the sidecar (as Istio's istio-init);
- a sidecar container ``meshlet-proxy`` (first, as Istio's holdApplicationUntilProxyStarts puts
  it, with a ``postStart`` hook running ``meshlet wait`` so the app starts after it is ready) as
  UID 1337, joining the control plane with the join token of a Secret volume, with a readiness
  probe on ``/healthz/ready`` and a ``preStop`` drain.

Other kinds pass through unchanged. Injection is idempotent: an already injected pod is
re-injected from scratch, so injecting twice gives what injecting once does. The annotation
``sidecar.meshlet.dev/inject: "false"`` (on the workload or its pod template) leaves it alone.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from typing import Any

NAME = "inject"
HELP = "add the meshlet init and sidecar containers to Kubernetes workloads (kube-inject)"

DEFAULT_CONTROL_PLANE = "https://meshlet-control-plane.meshlet-system:15012"
DEFAULT_IMAGE = "meshlet:latest"
INJECT_ANNOTATION = "sidecar.meshlet.dev/inject"
STATUS_ANNOTATION = "sidecar.meshlet.dev/status"
APP_PORT_ANNOTATION = "sidecar.meshlet.dev/app-port"
TOKEN_SECRET_ANNOTATION = "sidecar.meshlet.dev/token-secret"
# Istio's traffic.sidecar.istio.io/* annotations, under meshlet's domain
TRAFFIC = "traffic.sidecar.meshlet.dev/"
TRAFFIC_FLAGS = {
    "includeInboundPorts": "--inbound-ports",
    "excludeInboundPorts": "--exclude-inbound-ports",
    "includeOutboundIPRanges": "--include-outbound-cidrs",
    "excludeOutboundIPRanges": "--exclude-outbound-cidrs",
    "excludeOutboundPorts": "--exclude-outbound-ports",
}

INIT_NAME = "meshlet-init"
PROXY_NAME = "meshlet-proxy"
TOKEN_VOLUME = "meshlet-token"
STATE_VOLUME = "meshlet-state"
TOKEN_DIR = "/var/run/meshlet/token"
STATE_DIR = "/var/lib/meshlet"
PROXY_UID = 1337
OUTBOUND, INBOUND, ADMIN = 15001, 15006, 15000
DEFAULT_EXCLUDE_INBOUND = "15000,15001,15006,15021,15090"

# where the pod template is, per kind
TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
    "Pod": (),
}


class InjectError(Exception):
    pass


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--filename", required=True, metavar="PATH",
                   help="the manifests (multi-document YAML), or - for stdin")
    p.add_argument("-o", "--output", metavar="PATH", help="write here instead of stdout")
    p.add_argument("--control-plane", default=os.environ.get("MESHLET_CONTROL_PLANE")
                   or DEFAULT_CONTROL_PLANE, metavar="URL",
                   help=f"the control plane the sidecars join (default {DEFAULT_CONTROL_PLANE})")
    p.add_argument("--image", default=os.environ.get("MESHLET_IMAGE") or DEFAULT_IMAGE,
                   help=f"the meshlet image (env MESHLET_IMAGE; default {DEFAULT_IMAGE})")
    p.add_argument("--token-secret", default="meshlet-token-{service}", metavar="NAME",
                   help="the Secret holding the join token under key `token`; {service} is "
                        "replaced (default meshlet-token-{service})")
    p.add_argument("--image-pull-policy", default="IfNotPresent",
                   choices=["Always", "IfNotPresent", "Never"])


def run(args: argparse.Namespace) -> int:
    import yaml

    try:
        if args.filename == "-":
            text = sys.stdin.read()
        else:
            with open(args.filename, encoding="utf-8") as f:
                text = f.read()
    except OSError as e:
        print(f"meshlet inject: {args.filename}: {e.strerror or e}", file=sys.stderr)
        return 2
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        print(f"meshlet inject: {args.filename}: not YAML: {e}", file=sys.stderr)
        return 2
    opts = Options(control_plane=args.control_plane, image=args.image,
                   token_secret=args.token_secret, pull_policy=args.image_pull_policy)
    try:
        out = [inject_doc(d, opts, f"{args.filename}: document {i}")
               for i, d in enumerate(docs, 1) if d is not None]
    except InjectError as e:
        print(f"meshlet inject: {e}", file=sys.stderr)
        return 1
    rendered = dump(out)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(rendered)
    else:
        sys.stdout.write(rendered)
    return 0


def dump(docs: list[Any]) -> str:
    import yaml

    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False, width=100,
                              explicit_start=True)


class Options:
    def __init__(self, control_plane: str = DEFAULT_CONTROL_PLANE, image: str = DEFAULT_IMAGE,
                 token_secret: str = "meshlet-token-{service}",
                 pull_policy: str = "IfNotPresent") -> None:
        self.control_plane = control_plane
        self.image = image
        self.token_secret = token_secret
        self.pull_policy = pull_policy


def inject_doc(doc: Any, opts: Options, where: str) -> Any:
    """One document, injected if it holds a pod template; anything else is returned as is."""
    if not isinstance(doc, dict):
        return doc
    kind = doc.get("kind")
    if kind == "List" and isinstance(doc.get("items"), list):
        out = copy.deepcopy(doc)
        out["items"] = [inject_doc(item, opts, f"{where}, item {i}")
                        for i, item in enumerate(doc["items"], 1)]
        return out
    if kind not in TEMPLATE_PATHS:
        return doc
    if _annotation(doc, INJECT_ANNOTATION).lower() in ("false", "no", "0", "disabled"):
        return doc
    out = copy.deepcopy(doc)
    template: Any = out
    for key in TEMPLATE_PATHS[kind]:
        template = template.get(key) if isinstance(template, dict) else None
    if not isinstance(template, dict) or not isinstance(template.get("spec"), dict):
        raise InjectError(f"{where}: {kind} {_name(doc)!r} has no pod template spec")
    if _annotation(template, INJECT_ANNOTATION).lower() in ("false", "no", "0", "disabled"):
        return doc
    if template["spec"].get("hostNetwork"):
        return doc  # capture would rewrite the node's own tables: never inject host-network pods
    _inject_pod(out, template, opts, where)
    return out


def _annotation(obj: dict[str, Any], key: str) -> str:
    ann = (obj.get("metadata") or {}).get("annotations") or {}
    return str(ann.get(key, ""))


def _name(doc: dict[str, Any]) -> str:
    return str((doc.get("metadata") or {}).get("name", ""))


def _inject_pod(workload: dict[str, Any], template: dict[str, Any], opts: Options,
                where: str) -> None:
    spec = template["spec"]
    meta = template.setdefault("metadata", {})
    if meta is None:
        meta = template["metadata"] = {}
    labels = meta.get("labels") or {}
    annotations = {**((workload.get("metadata") or {}).get("annotations") or {}),
                   **(meta.get("annotations") or {})}
    # re-inject from scratch: what a previous injection added goes first (idempotence)
    spec["containers"] = [c for c in spec.get("containers") or [] if c.get("name") != PROXY_NAME]
    spec["initContainers"] = [c for c in spec.get("initContainers") or []
                              if c.get("name") != INIT_NAME]
    volumes = [v for v in spec.get("volumes") or []
               if v.get("name") not in (TOKEN_VOLUME, STATE_VOLUME)]
    if not spec["containers"]:
        raise InjectError(f"{where}: {workload.get('kind')} {_name(workload)!r} has no containers")

    service = str(labels.get("app") or labels.get("app.kubernetes.io/name") or _name(workload))
    if not service:
        raise InjectError(f"{where}: cannot tell the service: no `app` label and no name")
    version = str(labels.get("version") or labels.get("app.kubernetes.io/version") or "")
    namespace = str((workload.get("metadata") or {}).get("namespace") or "default")
    app_port = _app_port(spec["containers"], annotations, where)
    secret = str(annotations.get(TOKEN_SECRET_ANNOTATION) or
                 opts.token_secret.replace("{service}", service))

    init_args = ["iptables", "--proxy-uid", str(PROXY_UID), "--outbound-port", str(OUTBOUND),
                 "--inbound-port", str(INBOUND), "--exclude-inbound-ports", DEFAULT_EXCLUDE_INBOUND]
    for key, flag in TRAFFIC_FLAGS.items():
        if TRAFFIC + key in annotations:
            value = str(annotations[TRAFFIC + key])
            if flag == "--exclude-inbound-ports":
                value = ",".join(filter(None, (DEFAULT_EXCLUDE_INBOUND, value)))
                init_args[init_args.index(flag) + 1] = value
                continue
            init_args += [flag, value]
    init = {
        "name": INIT_NAME,
        "image": opts.image,
        "imagePullPolicy": opts.pull_policy,
        "args": init_args,
        "securityContext": {
            "runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False,
            "allowPrivilegeEscalation": False, "privileged": False,
            # iptables takes its lock file under /run
            "readOnlyRootFilesystem": False,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"},
                      "limits": {"cpu": "200m", "memory": "128Mi"}},
    }
    sidecar_args = ["sidecar", "--service", service, "--namespace", namespace]
    if version:
        sidecar_args += ["--version", version]
    sidecar_args += [
        "--app-port", str(app_port),
        "--control-plane", opts.control_plane,
        "--token-file", f"{TOKEN_DIR}/token",
        "--state-dir", STATE_DIR,
        "--advertise-address", "$(POD_IP)",
        "--inbound-bind", "0.0.0.0",
        # the kubelet probes the pod IP; 15000 is excluded from capture
        "--admin-bind", "0.0.0.0",
    ]
    proxy = {
        "name": PROXY_NAME,
        "image": opts.image,
        "imagePullPolicy": opts.pull_policy,
        "args": sidecar_args,
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE",
             "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ],
        "ports": [
            {"name": "mesh-outbound", "containerPort": OUTBOUND, "protocol": "TCP"},
            {"name": "mesh-inbound", "containerPort": INBOUND, "protocol": "TCP"},
            {"name": "mesh-admin", "containerPort": ADMIN, "protocol": "TCP"},
        ],
        "readinessProbe": {
            "httpGet": {"path": "/healthz/ready", "port": ADMIN},
            "initialDelaySeconds": 0, "periodSeconds": 15, "timeoutSeconds": 3,
            "failureThreshold": 4,
        },
        "startupProbe": {
            "httpGet": {"path": "/healthz/ready", "port": ADMIN},
            "periodSeconds": 1, "timeoutSeconds": 3, "failureThreshold": 600,
        },
        "lifecycle": {
            # the app's containers start after this returns: the sidecar is ready first
            "postStart": {"exec": {"command": ["meshlet", "wait", "--timeout", "60", "--quiet"]}},
            # SIGTERM drains too; the hook makes readiness fail before the endpoints update
            "preStop": {"exec": {"command": ["curl", "-fsS", "-m", "2", "-X", "POST",
                                             f"http://127.0.0.1:{ADMIN}/drain"]}},
        },
        "securityContext": {
            "runAsUser": PROXY_UID, "runAsGroup": PROXY_UID, "runAsNonRoot": True,
            "allowPrivilegeEscalation": False, "privileged": False,
            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
        },
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                      "limits": {"cpu": "2", "memory": "1Gi"}},
        "volumeMounts": [
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True},
            {"name": STATE_VOLUME, "mountPath": STATE_DIR},
        ],
    }
    spec["initContainers"] = [init, *spec["initContainers"]]
    spec["containers"] = [proxy, *spec["containers"]]
    token_volume = {"secretName": secret, "defaultMode": 0o440}
    spec["volumes"] = [*volumes, {"name": TOKEN_VOLUME, "secret": token_volume},
                       {"name": STATE_VOLUME, "emptyDir": {"medium": "Memory"}}]
    # the sidecar's group reads the token (fsGroup makes mounted volumes group-owned)
    sc = spec.get("securityContext") or {}
    sc.setdefault("fsGroup", PROXY_UID)
    spec["securityContext"] = sc
    meta["annotations"] = {**(meta.get("annotations") or {}),
                           STATUS_ANNOTATION: f"injected service={service} image={opts.image}"}
    if not spec["initContainers"]:
        del spec["initContainers"]


def _app_port(containers: list[dict[str, Any]], annotations: dict[str, Any], where: str) -> int:
    raw = annotations.get(APP_PORT_ANNOTATION)
    if raw is None:
        for c in containers:
            for p in c.get("ports") or []:
                if str(p.get("protocol", "TCP")).upper() == "TCP" and p.get("containerPort"):
                    raw = p["containerPort"]
                    break
            if raw is not None:
                break
    if raw is None:
        raise InjectError(f"{where}: no containerPort to send inbound traffic to; set the "
                          f"annotation {APP_PORT_ANNOTATION}")
    try:
        port = int(raw)
    except (TypeError, ValueError):
        raise InjectError(f"{where}: {APP_PORT_ANNOTATION} {raw!r} is not a port")
    if not 0 < port < 65536:
        raise InjectError(f"{where}: app port {port} out of range")
    return port
