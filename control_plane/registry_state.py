"""The registry across a control-plane restart: the last known registrations, in the data dir.

Without it a restarted control plane starts with an empty registry and pushes the first
sidecar that reconnects a snapshot without the endpoints of every sidecar that has not yet:
calls to those services fail (NR/UH) until they are all back. Found by
configs/chaos/control-plane-down.yaml. Loaded entries start disconnected, in their grace
period, exactly as after a dropped stream: a sidecar that reconnects keeps its place, one that
does not is removed when the grace period ends.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

from control_plane.registry import Registration, Registry

log = logging.getLogger("meshlet.control_plane")
FILE = "registry.json"
_FIELDS = {f.name for f in dataclasses.fields(Registration)} - {"disconnected_at", "connected"}


def save(registry: Registry, data_dir: Path) -> None:
    entries = [{k: v for k, v in r.to_dict().items() if k in _FIELDS} for r in registry.all()]
    path = data_dir / FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries))
    os.replace(tmp, path)


def load(registry: Registry, data_dir: Path) -> int:
    """Registrations from the last run, each in its grace period; returns how many."""
    try:
        entries = json.loads((data_dir / FILE).read_text())
    except (OSError, ValueError):
        return 0
    n = 0
    for e in entries if isinstance(entries, list) else ():
        try:
            reg = Registration(**{k: v for k, v in e.items() if k in _FIELDS})
        except TypeError:
            continue
        registry.register(reg)
        registry.disconnected(reg.node_id, reg)
        n += 1
    if n:
        log.info("%d sidecar(s) from the last run kept for their grace period", n)
    return n
