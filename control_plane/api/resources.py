"""The resource model shared by the sidecar, the control plane and the CLI: loading YAML,
validating every document against its kind's schema, and the immutable :class:`Resource`.

Validation happens once, at the edge (``apply``, ``--config``, a pushed snapshot), with this same
code on both sides. ``load_text``/``load_path`` validate *all* documents and raise one
:class:`InvalidConfig` listing every error, each naming the file, the document (1-based) and the
field path. Warnings (valid but suspicious config, such as weights not summing to 100, and
every field meshlet accepts without enforcing it, per ``field_status.py``) never fail a load;
the ``*_with_warnings`` variants return them.

Normalization: ``spec`` is a deep copy of the input with three changes: fields whose value is
null (``timeout:`` with nothing after it) are dropped, as Istio treats them as unset; integer map
keys that YAML
produced for ports (``portLevelMtls: {8080: ...}``) become strings, so a spec survives a JSON
round trip unchanged; and Istio's alternative spelling of a presence match in VirtualService
``headers``/``withoutHeaders``/``queryParams``, ``{regex: "*"}``, becomes ``{}``, so consumers
handle one form. Defaults are *not* filled in (see ``defaults_resilience``).
"""

from __future__ import annotations

import copy
import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from control_plane.api import canary, extensions, networking, security
from control_plane.api.expiry import EXPIRES_AT, parse_expires_at
from control_plane.api.extensions import RESILIENCE_DEFAULTS, defaults_resilience, parse_hedge_delay
from control_plane.api.field_status import unenforced, warning_text
from control_plane.api.schema import (
    LABELS,
    Ctx,
    Validator,
    check_regex,
    dns1123_label,
    dns1123_subdomain,
    parse_duration,
)

__all__ = [
    "KINDS",
    "RESILIENCE_DEFAULTS",
    "ConfigError",
    "InvalidConfig",
    "Resource",
    "check_regex",
    "defaults_resilience",
    "from_dict",
    "load_path",
    "load_path_with_warnings",
    "load_text",
    "load_text_with_warnings",
    "parse_duration",
    "unenforced_fields",
    "parse_hedge_delay",
    "validate_with_warnings",
]

_NETWORKING = {
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
}
_SECURITY = {"security.istio.io/v1", "security.istio.io/v1beta1"}
_MESHLET = {"meshlet.dev/v1alpha1"}

KINDS: dict[str, set[str]] = {
    "VirtualService": _NETWORKING,
    "DestinationRule": _NETWORKING,
    "ServiceEntry": _NETWORKING,
    "WorkloadEntry": _NETWORKING,
    "Sidecar": _NETWORKING,
    "AuthorizationPolicy": _SECURITY,
    "PeerAuthentication": _SECURITY,
    "ResiliencePolicy": _MESHLET,
    "InboundRateLimit": _MESHLET,
    "MeshConfig": _MESHLET,
    "Canary": _MESHLET,
}

SCHEMAS: dict[str, Validator] = {
    "VirtualService": networking.VIRTUAL_SERVICE,
    "DestinationRule": networking.DESTINATION_RULE,
    "ServiceEntry": networking.SERVICE_ENTRY,
    "WorkloadEntry": networking.WORKLOAD_ENTRY,
    "Sidecar": networking.SIDECAR,
    "AuthorizationPolicy": security.AUTHORIZATION_POLICY,
    "PeerAuthentication": security.PEER_AUTHENTICATION,
    "ResiliencePolicy": extensions.RESILIENCE_POLICY,
    "InboundRateLimit": extensions.INBOUND_RATE_LIMIT,
    "MeshConfig": extensions.MESH_CONFIG,
    "Canary": canary.CANARY,
}

_METADATA_IGNORED = {
    "uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp",
    "managedFields", "ownerReferences", "finalizers", "generateName", "selfLink",
}  # fmt: skip


@dataclass(frozen=True)
class ConfigError:
    """One problem in one document. ``level`` is "error" or "warning"."""

    source: str
    document: int
    kind: str
    name: str
    field: str
    reason: str
    namespace: str = "default"
    level: str = "error"

    def __str__(self) -> str:
        where = self.source or "<input>"
        if self.document:
            what = self.kind or "unknown kind"
            if self.name:
                what += f" {self.namespace}/{self.name}"
            where += f": document {self.document} ({what})"
        return f"{where}: {self.field}: {self.reason}" if self.field else f"{where}: {self.reason}"


class InvalidConfig(ValueError):
    """One or more documents are invalid; ``errors`` lists every problem found."""

    def __init__(self, errors: list[ConfigError], warnings: list[ConfigError] | None = None):
        self.errors = list(errors)
        self.warnings = list(warnings or [])
        super().__init__("\n".join(str(e) for e in self.errors))

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


@dataclass(frozen=True)
class Resource:
    api_version: str
    kind: str
    name: str
    namespace: str
    spec: dict
    labels: dict
    source: str = ""
    annotations: dict = field(default_factory=dict)

    def __hash__(self) -> int:
        # The dict fields are not hashable; equal resources have equal keys, so hash those.
        return hash((self.kind, self.namespace, self.name, self.api_version))

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)

    @property
    def ref(self) -> str:
        """``VirtualService default/reviews``, for messages."""
        return f"{self.kind} {self.namespace}/{self.name}"

    def to_dict(self) -> dict:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if self.labels:
            meta["labels"] = dict(self.labels)
        if self.annotations:
            meta["annotations"] = dict(self.annotations)
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "metadata": meta,
            "spec": copy.deepcopy(self.spec),
        }


# -- validation -------------------------------------------------------------------------------


def _validate(
    doc: Any, source: str, index: int
) -> tuple[Resource | None, list[ConfigError], list[ConfigError]]:
    """Validate one parsed document. Returns (resource or None, errors, warnings)."""
    if not isinstance(doc, dict):
        err = ConfigError(
            source, index, "", "", "", f"document must be a mapping, not {type(doc).__name__}"
        )
        return None, [err], []
    kind = _str_or(doc.get("kind"), "")
    meta = doc.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    name = _str_or(meta.get("name"), "")
    namespace = _str_or(meta.get("namespace"), "") or "default"
    ctx = Ctx()

    api_version = doc.get("apiVersion")
    if not isinstance(api_version, str):
        api_version = repr(api_version) if "apiVersion" in doc else ""
    if kind not in KINDS:
        known = ", ".join(KINDS)
        ctx.error(
            "kind",
            f"unknown kind {doc.get('kind')!r}; supported: {known}"
            if "kind" in doc
            else "is required",
        )
    elif "apiVersion" not in doc:
        ctx.error("apiVersion", f"is required; use one of {', '.join(sorted(KINDS[kind]))}")
    elif api_version not in KINDS[kind]:
        versions = ", ".join(sorted(KINDS[kind]))
        ctx.error(
            "apiVersion", f"{api_version!r} is not an API version of {kind}; use one of {versions}"
        )

    for k in doc:
        if k not in ("apiVersion", "kind", "metadata", "spec", "status"):
            ctx.error(str(k), f'unknown top-level field "{k}"')

    if "metadata" not in doc:
        ctx.error("metadata", "is required")
    elif not isinstance(doc["metadata"], dict):
        ctx.error("metadata", "must be a mapping")
    else:
        _validate_metadata(doc["metadata"], ctx)

    spec = doc.get("spec", {})
    if spec is None:
        spec = {}
    if kind in SCHEMAS:
        SCHEMAS[kind](spec, "spec", ctx)
        if not ctx.errors:
            for path, note in unenforced(SCHEMAS[kind], spec):
                ctx.warn(path, warning_text(note))

    def mk(level: str) -> Callable[[tuple[str, str]], ConfigError]:
        return lambda e: ConfigError(source, index, kind, name, e[0], e[1], namespace, level)

    errors = [mk("error")(e) for e in ctx.errors]
    warns = [mk("warning")(w) for w in ctx.warnings]
    if errors:
        return None, errors, warns
    res = Resource(
        api_version=api_version,
        kind=kind,
        name=name,
        namespace=namespace,
        spec=_normalize(kind, copy.deepcopy(spec)),
        labels=dict(meta.get("labels") or {}),
        source=f"{source}#{index}" if source else "",
        annotations=dict(meta.get("annotations") or {}),
    )
    return res, [], warns


def _str_or(value: Any, default: str) -> str:
    return value if isinstance(value, str) else default


def _validate_metadata(meta: dict, ctx: Ctx) -> None:
    name = meta.get("name")
    if name is None or name == "":
        ctx.error("metadata.name", "is required")
    elif not isinstance(name, str):
        ctx.error("metadata.name", "must be a string")
    elif reason := dns1123_subdomain(name):
        ctx.error("metadata.name", reason)
    ns = meta.get("namespace")
    if ns is not None:
        if not isinstance(ns, str):
            ctx.error("metadata.namespace", "must be a string")
        elif reason := dns1123_label(ns):
            ctx.error("metadata.namespace", reason)
    if meta.get("labels") is not None:
        LABELS(meta["labels"], "metadata.labels", ctx)
    ann = meta.get("annotations")
    if ann is not None:
        if not isinstance(ann, dict):
            ctx.error("metadata.annotations", "must be a mapping")
        else:
            for k, v in ann.items():
                if not isinstance(v, str):
                    ctx.error(f"metadata.annotations.{k}", "annotation value must be a string")
                elif k == EXPIRES_AT:
                    try:
                        parse_expires_at(v)
                    except ValueError as exc:
                        ctx.error(f"metadata.annotations.{k}", str(exc))
    for k in meta:
        if k not in ("name", "namespace", "labels", "annotations") and k not in _METADATA_IGNORED:
            ctx.error(f"metadata.{k}", f'unknown field "{k}"')


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _normalize(kind: str, spec: dict) -> dict:
    spec = _drop_nulls(spec)
    if kind == "PeerAuthentication" and isinstance(spec.get("portLevelMtls"), dict):
        spec["portLevelMtls"] = {str(k): v for k, v in spec["portLevelMtls"].items()}
    if kind == "VirtualService":
        for rule in spec.get("http") or []:
            for match in rule.get("match") or []:
                for field in ("headers", "withoutHeaders", "queryParams"):
                    for key, m in (match.get(field) or {}).items():
                        if m == {"regex": "*"}:
                            match[field][key] = {}
    return spec


def validate_with_warnings(
    doc: dict, source: str = "", index: int = 1
) -> tuple[Resource, list[ConfigError]]:
    """Like :func:`from_dict`, also returning the document's warnings."""
    res, errors, warns = _validate(doc, source, index)
    if errors or res is None:
        raise InvalidConfig(errors, warns)
    return res, warns


def unenforced_fields(res: Resource) -> list[tuple[str, str]]:
    """``(field path, warning)`` for each field of a valid resource that meshlet accepts and
    does not enforce (``field_status.py``): what the sidecar logs when it loads a config."""
    schema = SCHEMAS.get(res.kind)
    if schema is None:
        return []
    return [(path, warning_text(note)) for path, note in unenforced(schema, res.spec)]


def from_dict(doc: dict, source: str = "", index: int = 1) -> Resource:
    """Validate one document (apiVersion, kind, metadata, spec); raises InvalidConfig."""
    return validate_with_warnings(doc, source, index)[0]


# -- loading ----------------------------------------------------------------------------------


@functools.cache
def _strict_loader() -> Any:
    """A SafeLoader class that rejects duplicate keys, as kubectl and Istio's decoder do.

    Built (and yaml imported) on the first document parsed: a sidecar joined to a control plane
    gets its config as JSON and never needs yaml (~1 MB of idle RSS)."""
    import yaml

    class _StrictLoader(yaml.SafeLoader):
        pass

    def construct_mapping(loader: Any, node: Any, deep: bool = False) -> dict:
        loader.flatten_mapping(node)
        out: dict = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, f"unhashable key {key!r}", key_node.start_mark
                )
            if key in out:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            out[key] = loader.construct_object(value_node, deep=deep)
        return out

    _StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return _StrictLoader


def _parse(text: str, source: str) -> tuple[list[tuple[int, Any]], list[ConfigError]]:
    import yaml

    docs: list[tuple[int, Any]] = []
    loader: Any = None
    current = 1  # a syntax error is reported against the document being read
    try:
        loader = _strict_loader()(text)
        while loader.check_data():
            doc = loader.get_data()
            if doc is not None:
                docs.append((current, doc))
            current += 1
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        err = ConfigError(source, current, "", "", "", f"invalid YAML{line}: {problem}")
        return docs, [err]
    finally:
        if loader is not None:
            loader.dispose()
    return docs, []


def load_text_with_warnings(
    text: str, source: str = "<stdin>"
) -> tuple[list[Resource], list[ConfigError]]:
    docs, errors = _parse(text, source)
    out: list[Resource] = []
    warns: list[ConfigError] = []
    for i, doc in docs:
        res, errs, w = _validate(doc, source, i)
        errors += errs
        warns += w
        if res is not None:
            out.append(res)
    if errors:
        raise InvalidConfig(errors, warns)
    return out, warns


def load_text(text: str, source: str = "<stdin>") -> list[Resource]:
    """Every resource in a YAML stream (empty documents skipped). Raises InvalidConfig listing
    every error of every document."""
    return load_text_with_warnings(text, source)[0]


def _files(path: str) -> list[str]:
    if os.path.isdir(path):
        found: list[str] = []
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # no .git, .cache
            found.extend(
                os.path.join(root, f)
                for f in files
                if f.endswith((".yaml", ".yml")) and not f.startswith(".")
            )
        return sorted(found)
    return [path]


def load_path_with_warnings(path: str) -> tuple[list[Resource], list[ConfigError]]:
    if path == "-":
        return load_text_with_warnings(sys.stdin.read(), "<stdin>")
    if not os.path.exists(path):
        raise InvalidConfig([ConfigError(path, 0, "", "", "", "no such file or directory")])
    out: list[Resource] = []
    errors: list[ConfigError] = []
    warns: list[ConfigError] = []
    for f in _files(path):
        try:
            with open(f, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(ConfigError(f, 0, "", "", "", f"cannot read: {exc}"))
            continue
        try:
            res, w = load_text_with_warnings(text, f)
        except InvalidConfig as exc:
            errors += exc.errors
            warns += exc.warnings
            continue
        out += res
        warns += w
    if errors:
        raise InvalidConfig(errors, warns)
    return out, warns


def load_path(path: str) -> list[Resource]:
    """Resources from a file, a directory (``*.yaml``/``*.yml``, recursive, sorted) or ``-``
    (stdin). All files are validated; one InvalidConfig lists every error."""
    return load_path_with_warnings(path)[0]
