"""Config push: one WebSocket per sidecar, scoped snapshots, per-resource deltas, ACK/NACK.

The protocol (Envoy xDS reduced to one resource bundle; ``docs/operator-api.md`` has the whole
description):

* sidecar -> ``{"type": "register", "node": ..., "service": ..., "namespace": ..., "version": ...,
  "labels": {...}, "address": "host:port", "admin_address": "host:port", "cert_expiry": ...,
  "cached_version": V, "delta": true, "resource_hashes": {name: hash}}`` (the first message; the
  server checks it against the client certificate). ``delta`` says the sidecar takes deltas;
  ``cached_version`` and ``resource_hashes`` say what it already has (a restart from its cache,
  a reconnect);
* server -> ``{"type": "snapshot", "version": V, "nonce": N, "snapshot": {...}}``: the whole
  snapshot, always understood (a sidecar that does not say ``delta`` gets only these);
* server -> ``{"type": "delta", "version": V, "base": B, "nonce": N, "resources": {name: item},
  "removed": [name]}``: what changed since ``B``, the version the server believes the sidecar has
  (the last one sent to it, or after a NACK the last one it ACKed). Item names and the version's
  hash are defined in :mod:`control_plane.api.delta`, so the sidecar checks the result;
* sidecar -> ``{"type": "ack", "version": V, "nonce": N}`` or ``{"type": "nack", "version": V,
  "nonce": N, "error": "...", "resync": bool}``. ``resync`` means the delta did not apply to what
  the sidecar has; the server answers with the whole snapshot. An ACK or NACK for an older nonce
  still tells what the sidecar holds, but only the latest one updates ``proxy-status``;
* sidecar -> ``{"type": "status", "cert_expiry": ...}``; ``{"type": "deregister"}`` before it
  drains.
* sidecar -> ``{"type": "stats", ...}`` (traffic deltas) and ``{"type": "tap_events", ...}``;
  server -> ``{"type": "tap", ...}`` / ``{"type": "untap", "id": ...}``: mesh telemetry, handled
  by ``on_message`` (``control_plane/telemetry.py``).

Push at scale, as istiod does it:

* **debounce**: a store commit, a registry change or a CA step marks the config dirty; the push
  starts once no change came for ``debounce`` seconds (default 100 ms, Istio's
  PILOT_DEBOUNCE_AFTER) or ``debounce_max`` after the first change (10 s, PILOT_DEBOUNCE_MAX);
* **fan-out**: a push round is written by one task, stream after stream: a send on a connection
  whose write buffer is empty completes without suspending, so a round to a thousand sidecars
  costs no per-stream task; the message is encoded once per (base, version) and a stream costs
  a string join with its nonce;
* **throttle**: a stream whose connection is backed up (or busy with a push) goes to a queue
  instead (a stream already queued is not queued twice), and at most ``throttle`` pushes run at
  once (100, PILOT_PUSH_THROTTLE; the fan-out task holds one slot); each send has a timeout, and
  a stream that cannot take its message in time is closed, so the slowest sidecar holds one
  slot for a bounded time and never the others;
* **scope**: each sidecar gets what its ``Sidecar`` resource allows
  (:mod:`control_plane.api.scope`), computed once per (namespace, service, labels) and config
  generation and shared by every sidecar of that shape; a change outside a sidecar's scope
  leaves its version unchanged and sends it nothing;
* **flow control**: a stream with a config message not yet answered gets nothing newer until
  the sidecar ACKs or NACKs it (or ``ack_wait``, 5 s, passes); then it gets the newest config,
  not every version in between. A slow sidecar gets fewer, larger deltas instead of a backlog;
* **deltas**: per stream, the server keeps the version it sent and the one ACKed (each version's
  item hashes are shared by every stream that has it, not copied per stream) and sends only
  what changed; deltas between two versions are encoded once and reused.

Metrics (their own Prometheus registry, served at the control plane's ``/metrics``):
``meshlet_proxy_convergence_seconds`` (first change of a push to the ACK of the version that
carries it, istiod's ``pilot_proxy_convergence_time``), ``meshlet_connected_proxies``,
``meshlet_pushes_total{type,result}``, ``meshlet_push_errors_total{reason}``,
``meshlet_push_bytes_total{type}``, ``meshlet_push_triggers_total``,
``meshlet_push_fanout_seconds`` (one push round written to every stream that could take it).
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import itertools
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from control_plane import snapshot as snapshot_mod
from control_plane.api import delta, scope
from control_plane.registry import Registration, Registry
from control_plane.store import Store
from control_plane.tls_buffers import chunk_websocket_writes

log = logging.getLogger(__name__)

VIEW_CACHE = 128  # versions remembered for sidecars that reconnect with a version only
DELTA_CACHE = 256  # encoded deltas (base, target) to the current versions, kept for reuse


@dataclass
class PushSettings:
    """Istio's defaults; every one is a ``meshlet control-plane`` flag."""

    debounce: float = 0.1
    debounce_max: float = 10.0
    throttle: int = 100
    send_timeout: float = 10.0
    # flow control: a stream with an unACKed config gets nothing newer until it answers or this
    # long has passed; then it gets the newest config, not every version in between
    ack_wait: float = 5.0


class StreamError(Exception):
    """A registration the server refuses (bad message, identity mismatch)."""


class PushMetrics:
    """The push side's Prometheus metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.convergence = Histogram(
            "meshlet_proxy_convergence_seconds",
            "Time from the first config change of a push to the sidecar's ACK of the version "
            "carrying it",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.connected = Gauge("meshlet_connected_proxies",
                               "Sidecars with an open config stream", registry=r)
        self.pushes = Counter("meshlet_pushes", "Config messages sent to sidecars",
                              ["type", "result"], registry=r)
        self.errors = Counter("meshlet_push_errors",
                              "Pushes that failed (send, timeout) or were refused (nack, resync)",
                              ["reason"], registry=r)
        self.bytes = Counter("meshlet_push_bytes", "Bytes of config messages sent",
                             ["type"], registry=r)
        self.triggers = Counter("meshlet_push_triggers",
                                "Debounced pushes started (each covers a burst of changes)",
                                registry=r)
        self.queue = Gauge("meshlet_push_queue_size", "Streams waiting for a push slot",
                           registry=r)
        self.fanout = Histogram(
            "meshlet_push_fanout_seconds",
            "Time to write one push round to every stream that could take it at once (streams "
            "with a backed-up connection are queued and not counted)",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class View:
    """One version of a sidecar's config: item names -> hashes, and (while it is current) each
    item's encoded JSON. Shared by every stream that has this version."""

    __slots__ = ("__weakref__", "_full", "enc", "hashes", "key", "names", "revision", "version")

    def __init__(self, version: str, hashes: dict[str, str], names: list[str] | None = None,
                 enc: dict[str, str] | None = None) -> None:
        self.version = version
        self.key = delta.hash_part(version)  # the content's hash: equal keys, equal content
        self.hashes = hashes
        self.names = names  # in snapshot order; None for a base known only by its hashes
        self.enc = enc
        self._full: str | None = None

    @property
    def current(self) -> bool:
        return self.enc is not None

    def retire(self) -> None:
        """No longer current: keep only what a delta base needs (the hashes)."""
        self.enc = None
        self.names = None
        self._full = None

    def full_json(self) -> str:
        """The whole snapshot (control_plane.snapshot's wire format), joined from the items'
        encodings: a sidecar joining a large mesh costs a join, not an encode."""
        if self._full is None:
            assert self.enc is not None and self.names is not None
            enc = self.enc
            res = ",".join(enc[n] for n in self.names if n.startswith("resource/"))
            reg = ",".join(enc[n] for n in self.names if n.startswith("registry/"))
            self._full = (f'{{"version":{json.dumps(self.version)},'
                          f'"revision":{delta.revision_part(self.version)},'
                          f'"resources":[{res}],"registry":[{reg}],'
                          f'"mesh":{enc[delta.MESH]}}}')
        return self._full


class _Item:
    """One item of the config, encoded and hashed once."""

    __slots__ = ("enc", "hash", "line", "name")

    def __init__(self, name: str, body: Any) -> None:
        self.name = name
        self.enc = delta.canonical(body)
        self.hash = delta.hash_text(self.enc)
        self.line = delta.line_digest(name, self.hash)


class _State:
    """One generation of the whole config: resources, registry and mesh as named items."""

    def __init__(self, revision: int, resources: list[Any], res_names: list[str],
                 registry: list[dict], reg_names: list[str], items: dict[str, _Item]) -> None:
        self.revision = revision
        self.resources = resources
        self.res_names = res_names
        self.registry = registry
        self.reg_names = reg_names
        self.items = items
        self.views: dict[tuple | None, View] = {}


def shape_of(reg: Registration) -> tuple:
    """A sidecar's shape: every sidecar of one shape gets the same scoped view."""
    return (reg.namespace, reg.service, tuple(sorted(reg.labels.items())))


class Stream:
    """One open config stream and what the server knows of the sidecar's config."""

    def __init__(self, ws: web.WebSocketResponse, reg: Registration,
                 transport: asyncio.Transport | None = None) -> None:
        self.ws = ws
        self.reg = reg
        self.shape = shape_of(reg)  # what its scope depends on: the key of its shared view
        # the connection under the WebSocket: a push is written inline only while its write
        # buffer is empty (see PushHub._fanout)
        self.transport = transport
        self.delta_ok = False
        self.nonce = ""
        self.sent: View | None = None  # the last version sent (not sent again while current)
        self.base: View | None = None  # what the sidecar is believed to hold: deltas start here
        self.acked: View | None = None
        # (nonce, version, first change it carries) of what was sent and not yet answered
        self.inflight: collections.deque[tuple[str, View, float | None]] = collections.deque()
        self.pending_since: float | None = None  # first change not yet sent (convergence)
        self.sent_at = 0.0
        self.deferred = False  # a newer config waits for the answer to the last one
        self.retry: asyncio.TimerHandle | None = None
        self.force_full = False
        self.busy = False
        self.again = False

    @property
    def sent_version(self) -> str:
        return self.sent.version if self.sent is not None else ""


class PushHub:
    """Builds each sidecar's scoped view of the store and registry and pushes it, debounced,
    throttled and as deltas."""

    def __init__(self, store: Store, registry: Registry, trust_domain: str | None = None,
                 settings: PushSettings | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.trust_domain = trust_domain
        self.registry = registry
        self.settings = settings or PushSettings()
        self.clock = clock
        self.metrics = PushMetrics()
        # the per-push counters' children, looked up once (labels() is a locked dict lookup)
        self._ok_counters = {k: (self.metrics.pushes.labels(k, "ok"), self.metrics.bytes.labels(k))
                             for k in ("delta", "full")}
        self.streams: dict[str, Stream] = {}
        self.current: dict | None = None  # {"version", "revision"} of the unscoped config
        self.extra_mesh: Callable[[], dict] | None = None  # control-plane state sidecars follow
        self._state: _State | None = None
        self._stale = True
        self._res_cache: dict[tuple, _Item] = {}  # (key, revision) -> item
        self._reg_cache: dict[tuple, tuple[dict, _Item]] = {}  # registration -> entry, item
        self._base: tuple = ()
        self._store_dirty = True
        self._reg_part: tuple[list[dict], list[str], dict[str, _Item]] | None = None
        self._registry_dirty = True
        self._versions: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._views: collections.OrderedDict[str, View] = collections.OrderedDict()
        # (base key, version key) -> (head, tail, base version, version) of the delta message
        self._deltas: collections.OrderedDict[tuple[str, str], tuple[str, str, str, str]] = (
            collections.OrderedDict())
        self._nonces = itertools.count(1)
        self._first_event: float | None = None
        self._last_event = 0.0
        self._debounce_task: asyncio.Task | None = None
        self._queue: collections.deque[Stream] = collections.deque()
        self._queued: set[int] = set()
        self._active = 0
        self.peak_active = 0  # the most pushes ever in flight at once (bounded by throttle)
        self._tasks: set[asyncio.Task] = set()
        # stats and tap messages go to control_plane.telemetry (registration, message)
        self.on_message: Callable[[Registration, dict], None] | None = None
        # why this replica refuses config streams now ("" while it serves them): it lost
        # etcd and handed its sidecars over (control_plane/etcd/handover.py)
        self.refusing = ""
        store.add_listener(lambda _rev: self.mark_dirty())
        registry.add_listener(self._registry_changed)

    # -- the config, as items ----------------------------------------------------------------
    def _build_state(self) -> _State:
        """The config as named items. The store's part is read again only after a commit or a
        CA change; a registry change (a sidecar joining) only rebuilds the registry's part,
        each entry encoded and hashed once, so a thousand sidecars joining stay cheap."""
        if self._state is None or self._store_dirty:
            self._store_dirty = False
            revision, stored = self.store.snapshot()
            extra = self.extra_mesh() if self.extra_mesh is not None else None
            mesh = snapshot_mod.mesh_settings(stored, self.trust_domain, extra)
            cache: dict[tuple, _Item] = {}
            resources, res_names = [], []
            base: dict[str, _Item] = {}
            for sr in stored:
                ck = (sr.resource.key, sr.revision)
                item = self._res_cache.get(ck)
                if item is None:
                    body = sr.resource.to_dict()
                    item = _Item(delta.resource_name(body), body)
                cache[ck] = item
                resources.append(sr.resource)
                res_names.append(item.name)
                base[item.name] = item
            self._res_cache = cache  # drops what the store no longer has
            base[delta.MESH] = _Item(delta.MESH, mesh)
            td = str(mesh["trustDomain"])
            if self._base and self._base[4] != td:
                self._reg_cache = {}
                self._reg_part = None
            self._base = (revision, resources, res_names, base, td)
        revision, resources, res_names, base, td = self._base
        items = dict(base)
        if self._reg_part is None or self._registry_dirty:
            self._registry_dirty = False
            self._reg_part = self._build_registry(td)
        entries, reg_names, reg_items = self._reg_part
        items.update(reg_items)
        return _State(revision, resources, res_names, entries, reg_names, items)

    def _build_registry(self, td: str) -> tuple[list[dict], list[str], dict[str, _Item]]:
        """The registry's part of the config: rebuilt after a registry change only (an apply
        does not walk a thousand registrations)."""
        items: dict[str, _Item] = {}
        registry, reg_names = [], []
        reg_cache: dict[tuple, tuple[dict, _Item]] = {}
        for r in self.registry.all():
            if not r.address:
                continue  # a sidecar with no inbound listener is not an endpoint
            ck = (r.namespace, r.service, r.address, r.version, tuple(sorted(r.labels.items())),
                  r.hbone_port)
            hit = self._reg_cache.get(ck)
            if hit is None:
                [entry] = snapshot_mod.registry_entries([r], td)
                hit = (entry, _Item(delta.registry_name(entry), entry))
            reg_cache[ck] = hit
            entry, item = hit
            registry.append((r.namespace, r.service, r.address, entry, item))
        self._reg_cache = reg_cache
        registry.sort(key=lambda t: t[:3])  # the snapshot's order
        entries = []
        for *_, entry, item in registry:
            if item.name in items:
                continue  # two registrations of one address (a restart in the grace period)
            entries.append(entry)
            reg_names.append(item.name)
            items[item.name] = item
        return entries, reg_names, items

    def _fresh_state(self) -> _State:
        if self._state is None or self._stale:
            self._stale = False
            if self._state is not None:
                # Older versions stay only as delta bases, which need their hashes alone: drop
                # their items and encodings (a thousand sidecars joining make many versions),
                # and the encoded deltas to them, since pushes only ever go to a current one.
                for v in self._state.views.values():
                    v.retire()
                self._deltas.clear()
            self._state = self._build_state()
            everything = self._view(self._state, None)
            self.current = {"version": everything.version, "revision": self._state.revision}
        return self._state

    def _canonical_version(self, revision: int, content: str) -> str:
        """The same content keeps the version it was first pushed under."""
        v = self._versions.get(content)
        if v is None:
            v = self._versions[content] = f"{revision}-{content}"
            if len(self._versions) > 4 * VIEW_CACHE:
                self._versions.popitem(last=False)
        else:
            self._versions.move_to_end(content)
        return v

    def _view(self, st: _State, reg: Registration | None, key: tuple | None = None) -> View:
        if key is None and reg is not None:
            key = shape_of(reg)
        view = st.views.get(key)
        if view is not None:
            return view
        if reg is None:
            names = list(st.res_names) + list(st.reg_names)
        else:
            sc = scope.compute(st.resources, st.registry, reg.namespace, reg.labels,
                               service=reg.service)
            names = ([st.res_names[i] for i in sc.resources]
                     + [st.reg_names[j] for j in sc.registry])
        names.append(delta.MESH)
        items = [st.items[n] for n in names]
        content = delta.content_of(sum(i.line for i in items))
        known = self._views.get(content)
        if known is not None and known.current:
            view = known  # identical content: share it (and its encodings)
            self._views.move_to_end(content)
        else:
            view = View(self._canonical_version(st.revision, content),
                        {i.name: i.hash for i in items}, names, {i.name: i.enc for i in items})
            self._views[content] = view
            if len(self._views) > VIEW_CACHE:
                self._views.popitem(last=False)
        st.views[key] = view
        return view

    def expected_version(self, reg: Registration) -> str:
        """The version a sidecar should hold now (its scope of the current config)."""
        return self._view(self._fresh_state(), reg).version

    def rebuild(self) -> dict:
        """Rebuild now (start-up, tests); returns ``current``."""
        self._stale = self._store_dirty = self._registry_dirty = True
        self._fresh_state()
        assert self.current is not None
        return self.current

    # -- debounce and queue ------------------------------------------------------------------
    def mark_dirty(self) -> None:
        """The store or the CA changed (a commit, a CA step): rebuild the store's part."""
        self._store_dirty = True
        self._changed()

    def _registry_changed(self) -> None:
        self._registry_dirty = True
        self._changed()

    def _changed(self) -> None:
        now = self.clock()
        self._stale = True
        if self._first_event is None:
            self._first_event = now
        self._last_event = now
        if self._debounce_task is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (sync tests): the next rebuild() picks the change up
        self._debounce_task = loop.create_task(self._debounce())
        self._debounce_task.add_done_callback(self._task_done)

    async def _debounce(self) -> None:
        s = self.settings
        while True:
            first = self._first_event if self._first_event is not None else self.clock()
            due = min(self._last_event + s.debounce, first + s.debounce_max)
            wait = due - self.clock()
            if wait <= 0:
                break
            await asyncio.sleep(wait)
        start = self._first_event if self._first_event is not None else self.clock()
        self._first_event = None
        self._debounce_task = None
        self.trigger(start)

    def trigger(self, since: float | None = None) -> None:
        """Push the current config to every stream now; ``since`` is when the first change it
        carries happened (for the convergence metric)."""
        self.metrics.triggers.inc()
        self._fresh_state()
        since = self.clock() if since is None else since
        streams = list(self.streams.values())
        for stream in streams:
            if stream.pending_since is None or since < stream.pending_since:
                stream.pending_since = since
        if not streams:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        # One writer for the whole fan-out, holding one push slot; see _fanout.
        self._active += 1
        self.peak_active = max(self.peak_active, self._active)
        task = loop.create_task(self._fanout(streams))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    async def _fanout(self, streams: list[Stream]) -> None:
        """Write one push to each stream in turn, in this task: a send whose connection has an
        empty write buffer completes without suspending (the bytes go to the kernel), so the
        fan-out to a thousand sidecars costs one task and no per-stream scheduling. A stream
        whose buffer holds bytes (a slow reader), or one busy with a push, goes to the queue
        instead: its own task, throttled, bounded by the send timeout, so it never holds up
        the others."""
        started = self.clock()
        try:
            for stream in streams:
                if self.streams.get(stream.reg.node_id) is not stream:
                    continue
                tr = stream.transport
                if stream.busy or tr is None or tr.is_closing() or tr.get_write_buffer_size():
                    self._enqueue(stream)
                    continue
                await self._push(stream)
            self.metrics.fanout.observe(self.clock() - started)
        finally:
            self._active -= 1
            self._pump()

    def _enqueue(self, stream: Stream) -> None:
        if id(stream) in self._queued:
            return
        self._queued.add(id(stream))
        self._queue.append(stream)
        self._pump()

    def _pump(self) -> None:
        while self._queue and self._active < self.settings.throttle:
            stream = self._queue.popleft()
            self._queued.discard(id(stream))
            self._active += 1
            self.peak_active = max(self.peak_active, self._active)
            task = asyncio.get_running_loop().create_task(self._run_push(stream))
            self._tasks.add(task)
            task.add_done_callback(self._task_done)
        self.metrics.queue.set(len(self._queue))

    async def _run_push(self, stream: Stream) -> None:
        try:
            await self._push(stream)
        finally:
            self._active -= 1
            self._pump()

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("push task failed", exc_info=task.exception())

    async def push_all(self) -> None:
        """Push to every stream now and wait until each push is written (tests, shutdown)."""
        self.trigger()
        while self._queue or self._active:
            await asyncio.sleep(0.005)

    # -- sending -----------------------------------------------------------------------------
    async def _push(self, stream: Stream) -> None:
        """Send ``stream`` the current config; one push per stream at a time, and a change
        that arrives meanwhile is sent right after."""
        if stream.busy:
            stream.again = True
            return
        stream.busy = True
        try:
            while True:
                stream.again = False
                if self.streams.get(stream.reg.node_id) is not stream:
                    return
                if stream.inflight and not stream.force_full:
                    waited = self.clock() - stream.sent_at
                    if waited < self.settings.ack_wait:
                        self._defer(stream, self.settings.ack_wait - waited)
                        return
                view = self._view(self._fresh_state(), stream.reg, stream.shape)
                await self._send(stream, view)
                if not stream.again:
                    return
        finally:
            stream.busy = False

    def _defer(self, stream: Stream, delay: float) -> None:
        """Flow control: push again when the sidecar answers, or after ``delay``."""
        stream.deferred = True
        if stream.retry is None:
            stream.retry = asyncio.get_running_loop().call_later(delay, self._undefer, stream)

    def _undefer(self, stream: Stream) -> None:
        if stream.retry is not None:
            stream.retry.cancel()
            stream.retry = None
        if stream.deferred:
            stream.deferred = False
            if self.streams.get(stream.reg.node_id) is stream:
                self._enqueue(stream)

    def _message(self, stream: Stream, view: View, nonce: str) -> tuple[str, str]:
        """The message as text: everything but the nonce is encoded once per (base, version)
        and shared by every stream that gets it; a stream costs a join. ``nonce`` is digits
        (no JSON escaping)."""
        base = stream.base
        if stream.delta_ok and base is not None and not stream.force_full:
            key = (base.key, view.key)
            parts = self._deltas.get(key)
            if parts is None or parts[2] != base.version or parts[3] != view.version:
                changed, removed = delta.diff(base.hashes, view.hashes)
                assert view.enc is not None
                enc = view.enc
                res = ",".join(f"{json.dumps(n)}:{enc[n]}" for n in changed)
                head = (f'{{"type":"delta","version":{json.dumps(view.version)},'
                        f'"base":{json.dumps(base.version)},"nonce":"')
                tail = f'","resources":{{{res}}},"removed":{json.dumps(removed)}}}'
                parts = self._deltas[key] = (head, tail, base.version, view.version)
                if len(self._deltas) > DELTA_CACHE:
                    self._deltas.popitem(last=False)
            return "delta", parts[0] + nonce + parts[1]
        head = f'{{"type":"snapshot","version":{json.dumps(view.version)},"nonce":"'
        return "full", f'{head}{nonce}","snapshot":{view.full_json()}}}'

    async def _send(self, stream: Stream, view: View) -> None:
        if stream.sent is not None and stream.sent.key == view.key and not stream.force_full:
            stream.pending_since = None  # nothing for this sidecar in that change
            return
        if stream.ws.closed:
            return
        nonce = str(next(self._nonces))
        kind, text = self._message(stream, view, nonce)
        stream.force_full = False
        stream.sent = stream.base = view
        stream.nonce = nonce
        stream.inflight.append((nonce, view, stream.pending_since))
        stream.pending_since = None
        stream.sent_at = self.clock()
        while len(stream.inflight) > 16:  # a sidecar that never answers
            stream.inflight.popleft()
        self.registry.sent(stream.reg.node_id, view.version)
        try:
            async with asyncio.timeout(self.settings.send_timeout):  # no task per send
                await stream.ws.send_str(text)
        except TimeoutError:
            self.metrics.pushes.labels(kind, "error").inc()
            self.metrics.errors.labels("timeout").inc()
            log.warning("sidecar %s took more than %.1fs to take its config; closing its stream",
                        stream.reg.node_id, self.settings.send_timeout)
            await stream.ws.close(message=b"config push timed out")
        except (ConnectionError, RuntimeError) as e:
            self.metrics.pushes.labels(kind, "error").inc()
            self.metrics.errors.labels("send").inc()
            log.debug("send to %s failed: %s", stream.reg.node_id, e)
        else:
            ok, sent_bytes = self._ok_counters[kind]
            ok.inc()
            sent_bytes.inc(len(text))

    def _answered(self, stream: Stream, nonce: str) -> tuple[View, float | None] | None:
        """The version sent with ``nonce`` and the first change it carried; forgets it and
        every older one."""
        while stream.inflight:
            n, view, since = stream.inflight.popleft()
            if n == nonce:
                return view, since
        return None

    def _on_ack(self, stream: Stream, data: Mapping[str, Any]) -> None:
        nonce = str(data.get("nonce"))
        answered = self._answered(stream, nonce)
        if answered is None:
            log.debug("ack of unknown nonce %s from %s ignored", nonce, stream.reg.node_id)
            return
        view, since = answered
        stream.acked = view
        if since is not None:
            self.metrics.convergence.observe(max(0.0, self.clock() - since))
        if nonce == stream.nonce:
            # older nonces: the sidecar holds that version, but a newer one is on its way
            self.registry.acked(stream.reg.node_id, view.version)
        if not stream.inflight:
            self._undefer(stream)

    def _on_nack(self, stream: Stream, data: Mapping[str, Any]) -> None:
        nonce = str(data.get("nonce"))
        self._answered(stream, nonce)
        stream.base = stream.acked  # the sidecar kept its last good config
        if not stream.inflight:
            self._undefer(stream)
        if data.get("resync"):
            self.metrics.errors.labels("resync").inc()
            log.info("sidecar %s asks for the whole config: %s", stream.reg.node_id,
                     data.get("error"))
            stream.force_full = True
            stream.sent = None
            self._enqueue(stream)
            return
        self.metrics.errors.labels("nack").inc()
        if nonce != stream.nonce:
            log.debug("stale nack from %s ignored", stream.reg.node_id)
            return
        self.registry.nacked(stream.reg.node_id, str(data.get("version", "")),
                             str(data.get("error", "")))
        log.warning("sidecar %s rejected %s: %s", stream.reg.node_id, data.get("version"),
                    data.get("error"))

    def _client_base(self, first: Mapping[str, Any]) -> View | None:
        """What a (re)connecting sidecar says it has, if a delta can start from it."""
        hashes = first.get("resource_hashes")
        if isinstance(hashes, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in hashes.items()
        ):
            content = delta.content_hash(hashes)
            return View(str(first.get("cached_version") or f"0-{content}"), dict(hashes))
        cached = str(first.get("cached_version") or "")
        known = self._views.get(delta.hash_part(cached)) if cached else None
        return known

    # -- one stream ------------------------------------------------------------------------
    async def serve(
        self,
        ws: web.WebSocketResponse,
        authorize: Callable[[dict], str | None],
        peer_host: str,
        cert_expiry: float | None = None,
        transport: asyncio.Transport | None = None,
    ) -> None:
        """Run one sidecar's stream until it closes. ``authorize(registration)`` returns an
        error string to refuse it. ``cert_expiry`` is the not-after of the client certificate
        the stream was opened with: it is what the sidecar really holds, so it wins over what
        the registration claims (``status`` messages update it after a renewal)."""
        chunk_websocket_writes(ws)  # a whole snapshot must not leave a 100 KB TLS buffer behind
        first = await ws.receive_json(timeout=10)
        if not isinstance(first, dict) or first.get("type") != "register":
            raise StreamError("the first message must be a registration")
        reg = registration_from_message(first, peer_host)
        if cert_expiry is not None:
            reg.cert_expiry = cert_expiry
        refusal = authorize(first) or self.refusing
        if refusal:
            raise StreamError(refusal)
        old = self.streams.get(reg.node_id)
        if old is not None:
            await old.ws.close(message=b"replaced by a newer stream")
        stream = Stream(ws, reg, transport)
        stream.delta_ok = first.get("delta") is True
        if stream.delta_ok:
            stream.base = self._client_base(first)
        # A reconnecting sidecar's registration carries a hash per item it holds (1,000
        # registrations: ~100 KB as Python objects): not kept for the life of the stream.
        del first
        self.streams[reg.node_id] = stream
        self.metrics.connected.set(len(self.streams))
        self.registry.register(reg)
        log.info("sidecar %s (%s.%s) connected", reg.node_id, reg.service, reg.namespace)
        deregistered = False
        try:
            # The first config goes out now, not after the debounce.
            await self._push(stream)
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
                if kind == "ack":
                    self._on_ack(stream, data)
                elif kind == "nack":
                    self._on_nack(stream, data)
                elif kind == "status":
                    self.registry.update(reg.node_id, **data)
                elif kind in ("stats", "tap_events") and self.on_message is not None:
                    self.on_message(stream.reg, data)
                elif kind == "deregister":
                    deregistered = True
                    self.registry.deregister(reg.node_id)
                    break
        finally:
            if stream.retry is not None:
                stream.retry.cancel()
            if self.streams.get(reg.node_id) is stream:
                del self.streams[reg.node_id]
                self.metrics.connected.set(len(self.streams))
                if not deregistered:
                    self.registry.disconnected(reg.node_id, reg)
            log.info("sidecar %s disconnected", reg.node_id)

    async def hand_over(self) -> None:
        """Cut off from etcd: refuse new streams and close every open one, so each sidecar
        reconnects to the next replica of its list (it keeps serving its config meanwhile)."""
        self.refusing = "this control-plane replica cannot reach etcd; use another replica"
        streams = list(self.streams.values())
        await asyncio.gather(*(s.ws.close(code=1013, message=b"replica cut off from etcd")
                               for s in streams), return_exceptions=True)

    def resume(self) -> None:
        """etcd reachable again: take config streams again."""
        self.refusing = ""

    async def close(self) -> None:
        for stream in list(self.streams.values()):
            await stream.ws.close()
        if self._debounce_task is not None:
            self._debounce_task.cancel()
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
