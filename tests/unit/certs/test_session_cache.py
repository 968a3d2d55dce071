"""Stateful TLS 1.3 resumption (certs/session_cache.py) with real OpenSSL handshakes between
``ssl.SSLObject`` pairs: sessions resume from the server context's own cache, the cache stays
within its cap, a new context resumes nothing from an old one, a session whose connection ended
without close_notify does not resume, and contexts it cannot handle are left alone."""

from __future__ import annotations

import ssl

import pytest

from certs import session_cache, tls


def test_libssl_is_reachable_from_ssl() -> None:
    """Where it is not, contexts silently fall back to stateless tickets: fail loudly here."""
    assert session_cache._lib() is not None


class Pair:
    """A client and a server SSLObject joined by memory BIOs."""

    def __init__(self, client: ssl.SSLContext, server: ssl.SSLContext, session=None) -> None:
        self.ci, self.co, self.si, self.so = (ssl.MemoryBIO() for _ in range(4))
        self.c = client.wrap_bio(self.ci, self.co, server_side=False, session=session)
        self.s = server.wrap_bio(self.si, self.so, server_side=True)

    def handshake(self) -> None:
        done_c = done_s = False
        for _ in range(20):
            if not done_c:
                try:
                    self.c.do_handshake()
                    done_c = True
                except ssl.SSLWantReadError:
                    pass
            self.si.write(self.co.read())
            if not done_s:
                try:
                    self.s.do_handshake()
                    done_s = True
                except ssl.SSLWantReadError:
                    pass
            self.ci.write(self.so.read())
            if done_c and done_s:
                break
        assert done_c and done_s
        # the ticket comes after the handshake, with the first bytes the client reads
        self.s.write(b"ok")
        self.ci.write(self.so.read())
        assert self.c.read(2) == b"ok"

    def close(self, clean: bool = True) -> None:
        if clean:  # the server sends close_notify, as uvloop's transport does on close()
            try:
                self.s.unwrap()
            except ssl.SSLWantReadError:
                pass


@pytest.fixture
def contexts(ca, issue):
    def make() -> tuple[ssl.SSLContext, ssl.SSLContext]:
        server = tls.server_context(
            *issue("inventory"), ca.bundle_pem(), True, session_tickets=True
        )
        client = tls.client_context(*issue("orders"), ca.bundle_pem())
        return client, server

    return make


def connect(client, server, session=None, clean=True) -> Pair:
    p = Pair(client, server, session)
    p.handshake()
    p.close(clean)
    return p


def test_ticketing_server_context_uses_a_bounded_stateful_cache(contexts) -> None:
    _, server = contexts()
    assert session_cache.settings(server) == {
        "stateful": True,
        "cache_size": session_cache.CACHE_SIZE,
        "timeout_s": session_cache.SESSION_TIMEOUT_S,
        "cached": 0,
    }
    assert server.num_tickets == 1  # the probe leaves num_tickets as it found it


def test_sessions_resume_from_the_server_cache(contexts) -> None:
    client, server = contexts()
    first = connect(client, server)
    assert not first.s.session_reused and first.c.session.has_ticket
    assert server.session_stats()["number"] == 1
    again = connect(client, server, first.c.session)
    assert again.s.session_reused and again.c.session_reused
    # the resumed connection still knows its peer (the cached session's certificate)
    assert str(tls.peer_spiffe_id(again.s)).endswith("/sa/orders")
    assert server.session_stats()["hits"] == 1
    # a session resumes again until it times out (no early data, so no single-use tickets)
    assert connect(client, server, first.c.session).s.session_reused


def test_the_cache_stays_within_its_cap(contexts) -> None:
    client, server = contexts()
    assert session_cache.enable(server, cache_size=16)
    sessions = [connect(client, server).c.session for _ in range(40)]
    assert server.session_stats()["number"] <= 16
    # the newest sessions resume, the oldest were dropped: a full handshake, not a failure
    assert connect(client, server, sessions[-1]).s.session_reused
    assert not connect(client, server, sessions[0]).s.session_reused


def test_a_new_context_resumes_nothing_from_an_old_one(contexts, ca, issue) -> None:
    client, server = contexts()
    session = connect(client, server).c.session
    renewed = tls.server_context(*issue("inventory"), ca.bundle_pem(), True, session_tickets=True)
    p = connect(client, renewed, session)
    assert not p.s.session_reused and not p.c.session_reused


def test_a_truncated_connection_does_not_resume(contexts) -> None:
    client, server = contexts()
    p = Pair(client, server)
    p.handshake()
    session = p.c.session
    del p  # the server's SSL object is freed without having sent close_notify
    assert not connect(client, server, session).s.session_reused


def test_contexts_it_cannot_handle_are_left_alone(ca, issue) -> None:
    client = tls.client_context(*issue("orders"), ca.bundle_pem())
    options = client.options
    assert session_cache.enable(client) is False
    assert client.options == options

    class Sub(ssl.SSLContext):
        pass

    sub = Sub(ssl.PROTOCOL_TLS_SERVER)
    assert session_cache.enable(sub) is False
    assert not sub.options & ssl.OP_NO_TICKET
