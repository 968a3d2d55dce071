"""The CA material kept in etcd, shared by every control-plane replica.

One key, ``<prefix>ca/state``: JSON holding the files of ``<data_dir>/ca/`` (signer key and
certificate, chain, trust bundle, pending root key) and the rotation state sidecars follow
(``renewIssuedBefore``). Each replica writes them to its own data dir (0600 files in a 0700
dir, as the SQLite control plane does) and loads :class:`CertificateAuthority` from there;
that copy is a cache, etcd is the truth.

First start: the first replica to arrive creates the CA (or uploads the one already in its data
dir, e.g. plugged in with ``meshlet ca``-imported files) with a create-if-absent txn; the
others adopt the winner's. A rotation step (rotate, activate, retire) is applied to the local
CA and published with a txn that succeeds only if the key is still at the revision the step
started from: two replicas asked for the same step at once perform it once, the other answers
409 and reloads. A watch brings every replica's CA up to date with the others' steps.

The CA key is as safe as etcd: see docs/control-plane-replicas.md (client TLS, etcd auth with a
role limited to the prefix, encryption at rest of etcd's data dir and snapshots).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

from certs import keys
from certs.authority import CertificateAuthority
from control_plane.etcd.client import (
    EtcdClient,
    WatchCompacted,
    cmp_absent,
    cmp_mod,
    op_put,
)
from control_plane.store.base import StoreUnavailable

log = logging.getLogger(__name__)

FILES = ("trust-bundle.pem", "signer-chain.pem", "signer-key.pem", "signer-cert.pem",
         "pending-root-key.pem")
SECRET_FILES = {"signer-key.pem", "pending-root-key.pem"}


class CAConflict(Exception):
    """Another replica changed the CA while this one was changing it."""


class EtcdCAState:
    def __init__(self, client: EtcdClient, data_dir: str | Path, trust_domain: str,
                 prefix: str = "/meshlet/") -> None:
        self.client = client
        self.data_dir = Path(data_dir)
        self.ca_dir = self.data_dir / "ca"
        self.trust_domain = trust_domain
        self.key = prefix.encode() + b"ca/state"
        self.mod = 0
        self.renew_issued_before = 0.0
        self.ca: CertificateAuthority | None = None
        self.on_change: list[Callable[[], None]] = []
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()

    # -- files <-> state -------------------------------------------------------------------
    def _read_files(self) -> dict[str, str]:
        out = {}
        for name in FILES:
            p = self.ca_dir / name
            if p.exists():
                out[name] = p.read_text()
        return out

    def _write_files(self, files: dict[str, str]) -> None:
        keys.make_private_dir(self.ca_dir)
        for name in FILES:
            p = self.ca_dir / name
            if name not in files:
                p.unlink(missing_ok=True)
            elif name in SECRET_FILES:
                keys.write_private_file(p, files[name].encode())
            else:
                keys.write_file_atomic(p, files[name].encode())

    def _encode(self) -> bytes:
        return json.dumps({"files": self._read_files(), "trustDomain": self.trust_domain,
                           "renewIssuedBefore": self.renew_issued_before}).encode()

    def _adopt(self, value: bytes, mod: int) -> None:
        state = json.loads(value)
        self._write_files(state["files"])
        self.trust_domain = str(state.get("trustDomain") or self.trust_domain)
        self.renew_issued_before = float(state.get("renewIssuedBefore") or 0.0)
        self.mod = mod
        if self.ca is None:
            self.ca = CertificateAuthority.load(self.data_dir, self.trust_domain)
        else:
            self.ca.reload()

    # -- lifecycle -------------------------------------------------------------------------
    async def load_or_create(self) -> CertificateAuthority:
        kv = await self.client.get(self.key)
        if kv is None:
            # Ours (created here, or the one already in the data dir), if no replica beats us.
            ca = CertificateAuthority.load_or_create(self.data_dir, self.trust_domain)
            self.trust_domain = ca.trust_domain
            ok, rev, responses = await self.client.txn(
                [cmp_absent(self.key)], [op_put(self.key, self._encode())]
            )
            if ok:
                self.ca, self.mod = ca, rev
                log.info("stored this replica's CA in etcd (trust domain %s)", ca.trust_domain)
                return ca
            kv = await self.client.get(self.key)
            assert kv is not None
        self._adopt(kv.value, kv.mod_revision)
        assert self.ca is not None
        return self.ca

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch_loop())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _watch_loop(self) -> None:
        attempt = 0
        while True:
            try:
                async for _rev, events in self.client.watch(self.key, None, self.mod + 1):
                    attempt = 0
                    for ev in events:
                        if ev.type != "DELETE" and ev.kv.mod_revision > self.mod:
                            async with self._lock:
                                self._changed(ev.kv.value, ev.kv.mod_revision)
            except asyncio.CancelledError:
                raise
            except WatchCompacted:
                with contextlib.suppress(StoreUnavailable):
                    await self.sync()
                continue
            except Exception as e:
                log.debug("CA watch: %s", e)
            await asyncio.sleep(min(2.0, 0.1 * 2 ** min(attempt, 5)))
            attempt += 1

    def _changed(self, value: bytes, mod: int) -> None:
        self._adopt(value, mod)
        assert self.ca is not None
        log.info("CA changed through another replica: roots %s", self.ca.root_fingerprints())
        for cb in list(self.on_change):
            cb()

    async def sync(self) -> None:
        """Catch up with etcd now (before a rotation step, so it starts from the latest)."""
        kv = await self.client.get(self.key)
        if kv is not None and kv.mod_revision != self.mod:
            self._changed(kv.value, kv.mod_revision)

    async def change(self, step: Callable[[], None]) -> None:
        """Run one rotation ``step`` on the local CA and publish it, exactly once across
        replicas: :class:`CAConflict` if another replica's change got in first (the local CA
        is then reloaded from etcd, so nothing of the refused step remains)."""
        async with self._lock:
            await self.sync()
            before, renew = self._read_files(), self.renew_issued_before
            assert self.ca is not None
            step()
            try:
                ok, rev, _ = await self.client.txn([cmp_mod(self.key, self.mod)],
                                                   [op_put(self.key, self._encode())])
            except StoreUnavailable:
                ok, rev = False, 0
            if not ok:
                # Undo the step locally: etcd holds the truth, and it did not take this step.
                self._write_files(before)
                self.renew_issued_before = renew
                self.ca.reload()
                if rev == 0:
                    raise StoreUnavailable("etcd is unavailable: the CA was not changed")
                raise CAConflict("another replica changed the CA at the same moment; "
                                 "check `meshlet ca status` and retry if still needed")
            self.mod = rev
