"""The sidecar end of the config stream: register, receive snapshots, ACK or NACK, cache, reconnect.

One WebSocket over HTTPS to the control plane's ``/v1/stream`` (the protocol is described in
``docs/operator-api.md``). For each snapshot the sidecar's ``apply`` callback validates, compiles
and swaps its tables; if it raises, the snapshot is NACKed with the exception's message and the
last good config stays in effect. Every applied snapshot is written to ``cache_path`` (atomic
rename, mode 0600) so a sidecar restarted while the control plane is down starts from it.
Reconnects use exponential back-off with full jitter (0.5 s base, 30 s cap), each to the next
of the control-plane replicas given (``https://a:15012,https://b:15012``); the registration
carries the version this sidecar last applied, and a snapshot of that version is ACKed without
being applied again, so moving to another replica costs no reconfiguration. ``stop()`` sends a
deregistration first, so the control plane drops this sidecar's endpoints at once rather than
after its grace period. Other messages from the control plane (``tap``, ``untap``) go to
``on_message``; :meth:`send` puts the sidecar's own reports (``stats``, ``tap_events``) on the
stream while it is connected.

Deltas: the registration says ``"delta": true`` and, when the sidecar has a config (from this
stream or the cache), its version and per-item hashes, so the control plane can send only what
changed. A ``delta`` message is applied to the last good snapshot (:mod:`control_plane.api.delta`);
the result must have the announced version (its hash covers every item), else the delta is NACKed
with ``"resync": true`` and the control plane sends the whole snapshot. The whole result is then
validated and applied exactly as a full snapshot is, and ACKed or NACKed.

Imports nothing from the control plane's server side.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import random
import ssl
from collections.abc import Callable
from typing import Any

import aiohttp

from control_plane.api import delta as delta_mod

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
# aiohttp's default (4 MiB) is too small for a large mesh's whole snapshot.
MAX_SNAPSHOT_BYTES = 64 * 1024 * 1024


async def _socket_closed(sock: Any, timeout: float) -> None:
    """Wait, at most ``timeout``, for the stream's socket to be closed. aiohttp closes a TLS
    connection in the background (the close_notify round trip), after the session has ended: an
    event loop closed before that (a sidecar's last act) would leave the socket open."""
    if sock is None:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while sock.fileno() != -1 and loop.time() < deadline:
        await asyncio.sleep(0.01)


def backoff_delay(attempt: int, base: float = BACKOFF_BASE_S, cap: float = BACKOFF_CAP_S,
                  rand: Callable[[], float] = random.random) -> float:
    """Full jitter (AWS architecture blog): uniform in [0, min(cap, base * 2**attempt)]."""
    return rand() * min(cap, base * (2 ** min(attempt, 32)))


def _stream_url(url: str) -> str:
    base = url.strip().rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base[len("https://"):]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://"):]
    return base if base.endswith("/v1/stream") else base + "/v1/stream"


class DiscoveryClient:
    def __init__(
        self,
        url: str,
        ssl_context_factory: Callable[[], ssl.SSLContext | None],
        registration: dict,
        apply: Callable[[dict], Any],
        cache_path: str,
        on_status: Callable[[dict], None] | None = None,
        *,
        backoff_base: float = BACKOFF_BASE_S,
        backoff_cap: float = BACKOFF_CAP_S,
        verify_control_plane_id: bool = True,
    ) -> None:
        # Several control-plane replicas may be given (comma-separated): each reconnect after
        # a failure goes to the next one, so a sidecar whose replica died moves to another.
        self.urls = [_stream_url(u) for u in url.split(",") if u.strip()]
        self._url_index = 0
        self.url = self.urls[0]
        self._ssl_factory = ssl_context_factory
        self.registration = dict(registration)
        self._apply = apply
        self.cache_path = cache_path
        self._on_status = on_status
        self._base, self._cap = backoff_base, backoff_cap
        # Every workload holds a certificate from the same CA: only the control plane's own
        # SPIFFE ID proves the server is the control plane and not a workload posing as it.
        self._verify_id = verify_control_plane_id
        self.version = ""  # the last snapshot applied (from the stream or the cache)
        # the last good snapshot as named items and their hashes: the base of the next delta
        self._bundle = delta_mod.Bundle({})
        self.connected = False
        self.last_error = ""
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task | None = None
        # Messages from the control plane other than snapshots and errors (tap, untap).
        self.on_message: Callable[[dict], Any] | None = None
        self._stopping = False
        self._in_session = False  # connecting, streaming or closing (not between attempts)
        self._attempt = 0

    # -- cache -----------------------------------------------------------------------------
    def load_cache(self) -> dict | None:
        """The last good snapshot written by any earlier run, or None.

        The caller applies it; its version becomes this client's current one, so the same
        snapshot arriving from the control plane is ACKed without being applied twice."""
        try:
            with open(self.cache_path, encoding="utf-8") as f:
                snap = json.load(f)
        except (OSError, ValueError):
            return None
        if not isinstance(snap, dict) or "version" not in snap:
            return None
        self.version = str(snap["version"])
        self._remember(snap)
        return snap

    def _remember(self, snap: dict) -> None:
        self._bundle = delta_mod.Bundle.of(snap)

    def _write_cache(self, snap: dict) -> None:
        if not self.cache_path:
            return  # no cache wanted (a load generator's simulated sidecars)
        tmp = f"{self.cache_path}.{os.getpid()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(snap, f, separators=(",", ":"))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.cache_path)
        except OSError as e:
            log.warning("could not write the config cache %s: %s", self.cache_path, e)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> asyncio.Task:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run())
        return self._task

    async def stop(self, timeout: float = 5.0) -> None:
        """Deregister (the sidecar is draining), then close the stream and stop reconnecting.

        With the stream closed, the session ends by itself and closes its connection (a TLS
        close takes a round trip); cancelling it then would leave that socket open. A session
        still connecting closes as soon as it is connected. Only a task sleeping between
        attempts, or a session taking longer than ``timeout``, is cancelled."""
        self._stopping = True
        ws = self._ws
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await ws.send_json({"type": "deregister"})
                await ws.close()
        task, self._task = self._task, None
        if task is None:
            return
        if self._in_session:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), timeout)
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def update_status(self, **fields: Any) -> None:
        """Report status to the control plane (e.g. ``cert_expiry`` after a renewal)."""
        self.registration.update(fields)
        ws = self._ws
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await ws.send_json({"type": "status", **fields})

    async def send(self, msg: dict) -> bool:
        """Send one message if the stream is up; False (nothing sent) otherwise."""
        ws = self._ws
        if ws is None or ws.closed or not self.connected:
            return False
        try:
            await ws.send_str(json.dumps(msg, separators=(",", ":")))
        except (ConnectionError, RuntimeError) as e:
            log.debug("send on the config stream failed: %s", e)
            return False
        return True

    async def run(self) -> None:
        """Connect, and reconnect after every failure, until :meth:`stop`."""
        while not self._stopping:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # any failure of one connection: back off and retry
                self.last_error = str(e) or type(e).__name__
                log.debug("config stream to %s failed: %s", self.url, self.last_error)
            if self.connected:
                self.connected = False
            self._status("disconnected", error=self.last_error)
            if self._stopping:
                break
            await asyncio.sleep(backoff_delay(self._attempt, self._base, self._cap))
            self._attempt += 1
            if len(self.urls) > 1:
                self._url_index = (self._url_index + 1) % len(self.urls)
                self.url = self.urls[self._url_index]

    async def _session(self) -> None:
        self._in_session = True  # until the session has closed its connection (see stop)
        self._sock: Any = None
        try:
            await self._stream()
        finally:
            # Also after a failed or refused session, not only when stopping: aiohttp closes a
            # connection it will not reuse with a graceful TLS close that nothing awaits, and a
            # stop() during the back-off that follows would otherwise leave that socket open.
            await _socket_closed(self._sock, 2.0)
            self._in_session = False

    async def _stream(self) -> None:
        ssl_ctx = self._ssl_factory()
        async with aiohttp.ClientSession() as session, session.ws_connect(
            self.url, ssl=ssl_ctx if ssl_ctx is not None else False, heartbeat=15.0,
            max_msg_size=MAX_SNAPSHOT_BYTES,
        ) as ws:
            self._ws = ws
            self._sock = ws.get_extra_info("socket")
            try:
                if self._stopping:  # stop() came while connecting
                    await ws.close()
                    return
                if ssl_ctx is not None and self._verify_id:
                    self._check_server_identity(ws)
                hello = {**self.registration, "type": "register",
                         "cached_version": self.version, "delta": True}
                if self.version and self._bundle.hashes:
                    hello["resource_hashes"] = self._bundle.hashes
                await ws.send_json(hello)
                self.connected = True
                self.last_error = ""
                self._status("connected")
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    data = json.loads(msg.data)
                    if data.get("type") == "snapshot":
                        self._attempt = 0  # a working stream resets the back-off
                        await self._on_snapshot(ws, data)
                    elif data.get("type") == "delta":
                        self._attempt = 0
                        await self._on_delta(ws, data)
                    elif data.get("type") == "error":
                        self.last_error = str(data.get("error"))
                        log.warning("control plane refused the stream: %s", self.last_error)
                    elif self.on_message is not None and isinstance(data, dict):
                        try:
                            self.on_message(data)
                        except Exception:
                            log.exception("handling a %r message failed", data.get("type"))
                if ws.close_code is not None and not self.last_error:
                    self.last_error = f"stream closed ({ws.close_code})"
            finally:
                self._ws = None

    def _check_server_identity(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        from certs.tls import peer_spiffe_id

        sid = peer_spiffe_id(ws.get_extra_info("ssl_object"))
        if sid is None or not sid.is_control_plane:
            raise ConnectionError(
                f"{self.url} is not the meshlet control plane: its certificate names "
                f"{sid or 'no SPIFFE ID'}"
            )

    async def _on_delta(self, ws: aiohttp.ClientWebSocketResponse, msg: dict) -> None:
        version, nonce = str(msg.get("version")), msg.get("nonce")
        try:
            bundle = self._bundle.apply(msg)
        except delta_mod.DeltaMismatch as e:
            log.info("config delta %s does not apply here: %s", version, e)
            await ws.send_json({"type": "nack", "version": version, "nonce": nonce,
                                "error": str(e), "resync": True})
            return
        if delta_mod.hash_part(version) == delta_mod.hash_part(self.version):
            # what we hold already (a reconnect): nothing to apply
            await ws.send_json({"type": "ack", "version": version, "nonce": nonce})
            return
        snap = bundle.snapshot(version)
        await self._on_snapshot(ws, {"version": version, "nonce": nonce, "snapshot": snap},
                                bundle)

    async def _on_snapshot(self, ws: aiohttp.ClientWebSocketResponse, msg: dict,
                           bundle: delta_mod.Bundle | None = None) -> None:
        version, nonce, snap = str(msg.get("version")), msg.get("nonce"), msg.get("snapshot")
        if version == self.version:
            await ws.send_json({"type": "ack", "version": version, "nonce": nonce})
            return
        try:
            if not isinstance(snap, dict):
                raise ValueError("snapshot is not an object")
            result = self._apply(snap)
            if inspect.isawaitable(result):
                await result
        except Exception as e:
            error = str(e) or type(e).__name__
            log.warning("config %s rejected: %s", version, error)
            await ws.send_json({"type": "nack", "version": version, "nonce": nonce,
                                "error": error})
            self._status("nacked", version=version, error=error)
            return
        self.version = version
        if bundle is not None:
            self._bundle = bundle
        else:
            self._remember(snap)
        # fsync off the loop: the sidecar's data path shares it.
        if self.cache_path:
            await asyncio.to_thread(self._write_cache, snap)
        await ws.send_json({"type": "ack", "version": version, "nonce": nonce})
        self._status("acked", version=version)

    def _status(self, event: str, **detail: Any) -> None:
        if self._on_status is not None:
            try:
                self._on_status({"event": event, **detail})
            except Exception:
                log.exception("on_status callback failed")
