"""meshlet's identity library, shared by the sidecar and the control plane.

``spiffe`` (IDs), ``keys`` (P-256 keys, PEM, private files), ``csr`` (build/check CSRs),
``authority`` (the CA: SVID profile, trust bundle, root rotation), ``verify`` (SVID chain
validation), ``tls`` (every SSLContext), ``rotation`` (renewal schedule), ``join_token``
(the token format with its CA pin). No asyncio here.
"""
