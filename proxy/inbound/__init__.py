"""The inbound stack (peer -> app): admit (normalise, PeerAuthentication, authorization,
inbound rate limits), the caller's deadline, then the shared forwarding layer
(proxy/transport)."""
