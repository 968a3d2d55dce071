"""Fixtures for the identity library tests: a throwaway CA and leaf factory."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from certs import keys
from certs.authority import CertificateAuthority
from certs.csr import build_csr
from certs.spiffe import SpiffeId

TD = "cluster.local"


@pytest.fixture
def ca(tmp_path) -> CertificateAuthority:
    return CertificateAuthority.create_self_signed(tmp_path / "cp", TD)


Leaf = tuple[bytes, bytes]  # (chain PEM, key PEM)


@pytest.fixture
def issue(ca) -> Callable[..., Leaf]:
    def _issue(sa: str = "orders", ns: str = "default", ttl: int = 600, authority=None) -> Leaf:
        key = keys.generate_private_key()
        sid = SpiffeId.for_workload(TD, ns, sa)
        chain = (authority or ca).sign(build_csr(key, sid), sid, ttl)
        return chain, keys.private_key_to_pem(key)

    return _issue
