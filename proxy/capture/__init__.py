"""Transparent traffic capture: the iptables rules of the init step and the original destination."""
