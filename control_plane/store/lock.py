"""One control plane per SQLite data dir: an exclusive ``flock`` on ``control-plane.lock`` in it.

SQLite is the single-writer backend on purpose (replicas belong on etcd). Two control planes on
one data dir would each push their own view to their own sidecars and both report them SYNCED,
so the second one refuses to start, naming the process that holds the dir. ``flock`` is released
by the kernel when the holder dies (even SIGKILL), so a stale file never blocks a restart; the
pid in the file is only for the message.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = "control-plane.lock"


class DataDirBusy(Exception):
    """Another live process holds the data dir."""


class DataDirLock:
    """Held from :meth:`acquire` until :meth:`release` or the process ends."""

    def __init__(self, data_dir: str | os.PathLike[str], *, replica: bool = False) -> None:
        self.data_dir = Path(data_dir)
        self.replica = replica  # etcd replicas lock too: the CA cache and listen.addr are theirs
        self.path = self.data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            hint = ("each replica needs a --data-dir of its own" if self.replica else
                    "SQLite is single-writer: stop that one, or run replicas on etcd "
                    "(--store etcd://HOST:PORT)")
            raise DataDirBusy(
                f"the data dir {self.data_dir} is in use by another control plane (pid "
                f"{holder}); {hint}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
