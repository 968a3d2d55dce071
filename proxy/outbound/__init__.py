"""The outbound stack (app -> mesh): route, split, fault, header ops, rewrite, mirror, local
protections, then the shared forwarding layer (proxy/transport)."""
