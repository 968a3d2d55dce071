"""meshlet's sidecar proxy: the data plane."""

__version__ = "0.1.0"
