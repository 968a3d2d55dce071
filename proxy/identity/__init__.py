"""The sidecar's workload identity: its key, CSR, certificate renewal and SSL contexts."""

from proxy.identity.manager import IdentityError, IdentityManager

__all__ = ["IdentityError", "IdentityManager"]
