"""Integration tests only: ResourceWarning is still ignored here (and only here; the unit tests
run with every warning an error, ResourceWarning included).

What is known to remain, found when pyproject's global ignore was removed (issue 19): a
``DiscoveryClient`` whose TLS handshake the control plane refuses (no client certificate) and
that is stopped while it retries leaves a socket behind; the leaked transports are collected
during a later test, so the failure lands on whichever test the garbage collector runs in. The
clean stop of a connected stream is fixed (``proxy/discovery.py``) and covered by
``tests/unit/control_plane/test_discovery.py``. Remove this hook once the reconnect path is
fixed too.
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
