"""Inbound authorization for the sidecar: path normalization, AuthorizationPolicy evaluation
and PeerAuthentication (mTLS mode) resolution. Sans-I/O; compiled once per config."""
