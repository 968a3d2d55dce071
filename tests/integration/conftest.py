"""Integration tests only: ResourceWarning is still ignored here (and only here; the unit tests
run with every warning an error, ResourceWarning included).

What is known to remain, found when pyproject's global ignore was removed (issue 19): with this
hook removed, ``-W error::ResourceWarning`` fails ``test_control_plane.py`` intermittently (once in
two runs here, passing under ``-X tracemalloc``): an "unclosed transport
<_SelectorSocketTransport>" whose socket aiohttp's connector opened to the control plane's port
(the raw transport under a TLS one). The likely path (not yet proven): aiohttp
(3.12+) aborts TLS connections still pooled when a ClientSession closes and waits for them, but a
connection released as not reusable (``BaseConnector._release(should_close=True)``: a WebSocket
that closes, a ``ws_connect`` that fails after the TLS 1.3 handshake because the control plane
refused the client certificate) gets ``proto.close()``, a graceful TLS close that nothing awaits.
The close_notify round trip is still pending when the test's event loop closes (the peer is another
process, slow on a loaded machine; ``DiscoveryClient._session`` waits at most 2 s, and only for the
stream's own socket when stopping), so the transport is collected during a later test. A
``DiscoveryClient`` without a client certificate, refused by a loopback aiohttp HTTPS server in
the same loop and stopped while retrying, was run 100 times here with no leak: the same-loop peer
answers at once, so such a unit test does not reproduce it. The clean stop of a connected stream is
fixed (``proxy/discovery.py``) and covered by ``tests/unit/control_plane/test_discovery.py``.
Remove this hook once every connection the DiscoveryClient opens is closed (aborted, or its close
awaited) before its session returns.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark = pytest.mark.filterwarnings("ignore::ResourceWarning")
    for item in items:
        if _HERE in Path(str(item.fspath)).parents:
            item.add_marker(mark)
