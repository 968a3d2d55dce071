"""Join tokens: format with CA pin, scope, expiry, hashed at rest, file mode."""

from __future__ import annotations

import os
import sqlite3

import pytest

from certs.authority import CertificateAuthority
from certs.join_token import InvalidToken, JoinToken
from control_plane.ca.tokens import TokenStore


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def ca(tmp_path):
    return CertificateAuthority.create_self_signed(tmp_path, "cluster.local")


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path, ca, clock):
    s = TokenStore(tmp_path, ca.root_pin, clock=clock)
    yield s
    s.close()


def test_create_and_verify(store, ca):
    token = store.create("orders", "shop", ttl=600)
    parsed = JoinToken.parse(token)
    assert token.startswith("meshlet1.")
    assert parsed.ca_pin == ca.root_pin()
    assert store.verify(token) == ("orders", "shop")
    # Reusable until it expires (several replicas of one service join with it).
    assert store.verify(token) == ("orders", "shop")


def test_expiry(store, clock):
    token = store.create("orders", ttl=60)
    clock.t += 59
    assert store.verify(token) == ("orders", "default")
    clock.t += 1
    with pytest.raises(InvalidToken, match="expired"):
        store.verify(token)
    assert store.prune() == 1
    with pytest.raises(InvalidToken, match="unknown"):
        store.verify(token)


def test_unknown_wrong_secret_and_malformed(store):
    token = JoinToken.parse(store.create("orders"))
    with pytest.raises(InvalidToken, match="unknown"):
        store.verify(str(JoinToken(token.token_id, "A" * 32, token.ca_pin)))
    with pytest.raises(InvalidToken, match="unknown"):
        store.verify(str(JoinToken("0" * 16, token.secret, token.ca_pin)))
    for bad in ["", "meshlet1.x.y.z", str(token) + ".", "meshlet2" + str(token)[8:]]:
        with pytest.raises(InvalidToken, match="malformed"):
            store.verify(bad)


def test_hashed_at_rest_and_mode_0600(store, tmp_path):
    token = JoinToken.parse(store.create("orders"))
    path = tmp_path / "ca" / "tokens.db"
    assert (os.stat(path).st_mode & 0o777) == 0o600
    raw = path.read_bytes()
    assert token.secret.encode() not in raw
    rows = sqlite3.connect(path).execute("SELECT * FROM join_tokens").fetchall()
    assert all(token.secret not in str(v) for row in rows for v in row)
    import hashlib

    assert rows[0][1] == hashlib.sha256(token.secret.encode()).hexdigest()
    assert repr(token).find(token.secret) == -1  # never printed by accident


def test_revoke_and_list(store):
    a = JoinToken.parse(store.create("orders"))
    store.create("payment", "billing")
    assert [(t.service, t.namespace) for t in store.list()] == [
        ("orders", "default"),
        ("payment", "billing"),
    ]
    assert store.revoke(a.token_id)
    with pytest.raises(InvalidToken):
        store.verify(str(a))


def test_persists_across_instances(tmp_path, ca, clock):
    token = TokenStore(tmp_path, ca.root_pin, clock=clock).create("orders")
    assert TokenStore(tmp_path, ca.root_pin, clock=clock).verify(token) == ("orders", "default")


@pytest.mark.parametrize(("service", "ns", "ttl"), [("", "d", 60), ("a/b", "d", 60), ("a", "d", 0)])
def test_bad_arguments(store, service, ns, ttl):
    with pytest.raises(ValueError):
        store.create(service, ns, ttl)


def test_new_tokens_pin_the_new_root_after_rotation(store, ca):
    old = JoinToken.parse(store.create("orders"))
    ca.rotate_root()
    new = JoinToken.parse(store.create("orders"))
    assert old.ca_pin != new.ca_pin == ca.root_pin()
    assert store.verify(str(old)) == ("orders", "default")  # still valid for the server
