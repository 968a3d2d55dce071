"""Config push: one WebSocket per sidecar, versioned snapshots, ACK/NACK with nonces.

The protocol (Envoy xDS state-of-the-world, reduced to one resource bundle):

* sidecar -> ``{"type": "register", "node": ..., "service": ..., "namespace": ..., "version": ...,
  "labels": {...}, "address": "host:port", "admin_address": "host:port", "cert_expiry": ...}``
  (the first message; the server checks it against the client certificate);
* server -> ``{"type": "snapshot", "version": V, "nonce": N, "snapshot": {...}}`` whenever the
  snapshot's version differs from the last one sent on that stream;
* sidecar -> ``{"type": "ack", "version": V, "nonce": N}`` or
  ``{"type": "nack", "version": V, "nonce": N, "error": "..."}``; an ACK or NACK whose nonce is not
  the latest one sent on that stream is stale and ignored (go-control-plane);
* sidecar -> ``{"type": "status", "cert_expiry": ...}`` at any time; ``{"type": "deregister"}``
  before it drains.

Changes are coalesced: a store commit or a registry change marks the snapshot dirty and one
rebuild runs on the next loop iteration; streams whose last sent version equals the new one get
nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import logging
from collections.abc import Callable

from aiohttp import web

from control_plane import snapshot as snapshot_mod
from control_plane.registry import Registration, Registry
from control_plane.store import Store

log = logging.getLogger(__name__)


class StreamError(Exception):
    """A registration the server refuses (bad message, identity mismatch)."""


class Stream:
    """One open config stream."""

    def __init__(self, ws: web.WebSocketResponse, reg: Registration) -> None:
        self.ws = ws
        self.reg = reg
        self.sent_version = ""
        self.nonce = ""


class PushHub:
    """Builds snapshots from the store and registry and sends them to every open stream."""

    def __init__(self, store: Store, registry: Registry, trust_domain: str | None = None) -> None:
        self.store = store
        self.trust_domain = trust_domain
        self.registry = registry
        self.streams: dict[str, Stream] = {}
        self.current: dict | None = None
        self._encoded = ""
        self._nonces = itertools.count(1)
        self._dirty = False
        self._tasks: set[asyncio.Task] = set()
        self.extra_mesh: Callable[[], dict] | None = None  # control-plane state sidecars follow
        store.add_listener(lambda _rev: self.mark_dirty())
        registry.add_listener(self.mark_dirty)

    # -- snapshot --------------------------------------------------------------------------
    def rebuild(self) -> dict:
        revision, resources = self.store.snapshot()
        extra = self.extra_mesh() if self.extra_mesh is not None else None
        snap = snapshot_mod.build(
            revision, resources, self.registry.all(), self.trust_domain, extra
        )
        if self.current is None or snap["version"] != self.current["version"]:
            self.current = snap
            # Encoded once, not once per sidecar.
            self._encoded = json.dumps(snap, separators=(",", ":"))
        return self.current

    def mark_dirty(self) -> None:
        if self._dirty:
            return
        self._dirty = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (sync tests): the next push_all() rebuilds
        loop.call_soon(self._spawn_push)

    def _spawn_push(self) -> None:
        task = asyncio.get_running_loop().create_task(self.push_all())
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("push task failed", exc_info=task.exception())

    async def push_all(self) -> None:
        self._dirty = False
        snap = self.rebuild()
        # Sends run concurrently: one slow sidecar does not hold back the others.
        await asyncio.gather(*(self._send(s, snap) for s in list(self.streams.values())))

    async def _send(self, stream: Stream, snap: dict) -> None:
        if stream.sent_version == snap["version"] or stream.ws.closed:
            return
        nonce = str(next(self._nonces))
        stream.sent_version, stream.nonce = snap["version"], nonce
        self.registry.sent(stream.reg.node_id, snap["version"])
        try:
            head = json.dumps({"type": "snapshot", "version": snap["version"], "nonce": nonce})
            await stream.ws.send_str(f'{head[:-1]},"snapshot":{self._encoded}}}')
        except (ConnectionError, RuntimeError) as e:
            log.debug("send to %s failed: %s", stream.reg.node_id, e)

    # -- one stream ------------------------------------------------------------------------
    async def serve(
        self,
        ws: web.WebSocketResponse,
        authorize: Callable[[dict], str | None],
        peer_host: str,
        cert_expiry: float | None = None,
    ) -> None:
        """Run one sidecar's stream until it closes. ``authorize(registration)`` returns an
        error string to refuse it. ``cert_expiry`` is the not-after of the client certificate
        the stream was opened with: it is what the sidecar really holds, so it wins over what
        the registration claims (``status`` messages update it after a renewal)."""
        first = await ws.receive_json(timeout=10)
        if not isinstance(first, dict) or first.get("type") != "register":
            raise StreamError("the first message must be a registration")
        reg = registration_from_message(first, peer_host)
        if cert_expiry is not None:
            reg.cert_expiry = cert_expiry
        refusal = authorize(first)
        if refusal:
            raise StreamError(refusal)
        old = self.streams.get(reg.node_id)
        if old is not None:
            await old.ws.close(message=b"replaced by a newer stream")
        stream = Stream(ws, reg)
        self.streams[reg.node_id] = stream
        self.registry.register(reg)
        log.info("sidecar %s (%s.%s) connected", reg.node_id, reg.service, reg.namespace)
        deregistered = False
        try:
            # The registration marked the snapshot dirty; send now rather than wait for it.
            await self._send(stream, self.rebuild())
            async for msg in ws:
                if msg.type != 1:  # WSMsgType.TEXT
                    continue
                try:
                    data = msg.json()
                except ValueError:
                    continue
                if not isinstance(data, dict):
                    continue
                kind = data.get("type")
                if kind in ("ack", "nack"):
                    if str(data.get("nonce")) != stream.nonce:
                        log.debug("stale nonce from %s ignored", reg.node_id)
                        continue
                    if kind == "ack":
                        self.registry.acked(reg.node_id, str(data.get("version", "")))
                    else:
                        self.registry.nacked(
                            reg.node_id, str(data.get("version", "")), str(data.get("error", ""))
                        )
                        log.warning(
                            "sidecar %s rejected %s: %s",
                            reg.node_id, data.get("version"), data.get("error"),
                        )
                elif kind == "status":
                    self.registry.update(reg.node_id, **data)
                elif kind == "deregister":
                    deregistered = True
                    self.registry.deregister(reg.node_id)
                    break
        finally:
            if self.streams.get(reg.node_id) is stream:
                del self.streams[reg.node_id]
                if not deregistered:
                    self.registry.disconnected(reg.node_id, reg)
            log.info("sidecar %s disconnected", reg.node_id)

    async def close(self) -> None:
        for stream in list(self.streams.values()):
            await stream.ws.close()
        for t in list(self._tasks):
            t.cancel()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _admin_address(address: str, peer_host: str) -> str:
    """The admin address the control plane may call for ``proxy-config``: only on the host the
    sidecar connected from, so a registration cannot point the control plane at any other
    host (no SSRF through ``/v1/proxies/{id}/...``)."""
    if not address:
        return ""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return ""
    host = host.strip("[]")
    if host in ("0.0.0.0", "::"):
        host = peer_host
    same = host == peer_host or (_is_loopback(host) and _is_loopback(peer_host))
    if not same:
        log.warning("ignoring admin address %s: not on the sidecar's host %s", address, peer_host)
        return ""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def registration_from_message(msg: dict, peer_host: str) -> Registration:
    service = msg.get("service")
    if not isinstance(service, str) or not service:
        raise StreamError("registration: 'service' is required")
    namespace = str(msg.get("namespace") or "default")
    node = str(msg.get("node") or f"{service}.{namespace}@{msg.get('address', '')}")
    labels = msg.get("labels") or {}
    if not isinstance(labels, dict):
        raise StreamError("registration: 'labels' must be a mapping")
    address = str(msg.get("address") or "")
    if address.startswith(("0.0.0.0:", "[::]:")):
        # A wildcard listener is reached at the address the sidecar connected from.
        address = f"{peer_host}:{address.rsplit(':', 1)[1]}"
    expiry = msg.get("cert_expiry")
    version = str(msg.get("version") or labels.get("version") or "")
    if version and "version" not in labels:
        labels = {**labels, "version": version}
    return Registration(
        node_id=node,
        service=service,
        namespace=namespace,
        version=version,
        labels={str(k): str(v) for k, v in labels.items()},
        address=address,
        admin_address=_admin_address(str(msg.get("admin_address") or ""), peer_host),
        hbone_port=int(msg.get("hbone_port") or 0) if str(msg.get("hbone_port") or "0").isdigit()
        else 0,
        cert_expiry=float(expiry) if isinstance(expiry, int | float) else None,
    )
