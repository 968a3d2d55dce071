"""``python -m control_plane.cli`` is the ``meshlet`` command."""

from control_plane.cli.main import entry

entry()
