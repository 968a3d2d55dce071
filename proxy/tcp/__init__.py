"""Opaque TCP through the mesh: protocol selection, L4 routes, HBONE tunnels between sidecars."""
