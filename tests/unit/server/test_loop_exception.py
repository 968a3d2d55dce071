"""The sidecar's loop exception handler hides exactly one known uvloop race (an SSLProtocol
writing to the TCP transport its own shutdown closed) and reports everything else."""

from __future__ import annotations

import asyncio
import logging

from proxy.sidecar import _loop_exception


class SSLProtocol:  # the name uvloop's class has
    pass


async def test_only_the_closed_transport_race_is_quietened(caplog):
    loop = asyncio.get_running_loop()
    race = RuntimeError("unable to perform operation on <TCPTransport>; the handler is closed")
    with caplog.at_level(logging.DEBUG):
        _loop_exception(loop, {"message": "Fatal error on SSL protocol", "exception": race,
                               "protocol": SSLProtocol()})  # fmt: skip
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    caplog.clear()
    _loop_exception(loop, {"message": "Fatal error on SSL protocol",
                           "exception": ValueError("something else"), "protocol": SSLProtocol()})  # fmt: skip
    _loop_exception(loop, {"message": "elsewhere", "exception": race, "protocol": object()})
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 2
