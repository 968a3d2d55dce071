"""Compatibility shell: the request path now lives in two stacks over a shared layer.

``proxy/inbound`` (admit, then forward to the app), ``proxy/outbound`` (route, protect, then
forward into the mesh) and ``proxy/transport`` (the tries, replies and accounting both share).
:class:`Forwarder` keeps the old entry points for code that builds a sidecar's data path.
"""

from __future__ import annotations

from typing import Any

from proxy.inbound.stack import InboundStack
from proxy.outbound.stack import OutboundStack
from proxy.transport.body import REPLAY_LIMIT, ReplayBody
from proxy.transport.exchange import Exchange

__all__ = ["REPLAY_LIMIT", "Exchange", "Forwarder", "ReplayBody"]


class Forwarder:
    """Both directions of one sidecar: ``outbound`` (app -> mesh) and ``inbound`` (peer -> app),
    each the request handler of its stack."""

    def __init__(self, runtime: Any) -> None:
        self.rt = runtime
        self.outbound_stack = OutboundStack(runtime)
        self.inbound_stack = InboundStack(runtime)
        self.outbound = self.outbound_stack.handle
        self.inbound = self.inbound_stack.handle
