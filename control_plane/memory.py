"""Keep the control plane's memory proportional to what it holds, not to what it once held.

uvloop's TLS transport gives each connection a 256 KiB read buffer (malloc'ed, not zeroed).
glibc serves allocations that large with mmap (untouched pages cost nothing) only until
the first one is freed; from then on its *dynamic* mmap threshold rises and they come from the
heap, where pages freed by earlier transient allocations (a whole snapshot encoded for a
joining sidecar) are already resident. At 1,000 config streams that is ~90 MB of RSS
(``loadtests/bench_push.py``: ~300 MB against ~215 MB with a fixed threshold). Fixing the
threshold at glibc's default (128 KiB) keeps large buffers in mmap, where untouched pages are
not resident and freed ones go back to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
THRESHOLD = 128 * 1024


def fix_mmap_threshold(threshold: int = THRESHOLD) -> bool:
    """``mallopt(M_MMAP_THRESHOLD, threshold)`` on glibc (which also turns off the dynamic
    adjustment). Leaves an operator's ``MALLOC_MMAP_THRESHOLD_`` alone; a no-op elsewhere."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl has no mallopt)
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(M_MMAP_THRESHOLD, threshold))
    log.debug("malloc mmap threshold fixed at %d bytes: %s", threshold, ok)
    return ok


def start_debug_dumps() -> str | None:
    """Memory forensics for ``loadtests/bench_push.py`` and operators: with
    ``MESHLET_MEMORY_DUMP_DIR=DIR`` the control plane traces Python allocations
    (``tracemalloc``, ``MESHLET_MEMORY_DUMP_FRAMES`` frames, default 8; 0: no tracing, which
    slows a thousand sidecars connecting several times) and, on each SIGUSR2, writes
    ``DIR/snap-<pid>-<n>.pickle`` (a :class:`tracemalloc.Snapshot`, when tracing),
    ``DIR/smaps-<pid>-<n>.txt`` (``/proc/self/smaps_rollup``; RSS beyond what tracemalloc sees is
    OpenSSL, libuv and the allocator's slack) and ``DIR/malloc-<pid>-<n>.xml`` (glibc's
    ``malloc_info``: memory the heap holds free). Off unless set: tracing costs CPU and memory."""
    out = os.environ.get("MESHLET_MEMORY_DUMP_DIR")
    if not out:
        return None
    import signal
    import tracemalloc

    os.makedirs(out, exist_ok=True)
    frames = int(os.environ.get("MESHLET_MEMORY_DUMP_FRAMES") or 8)
    if frames > 0:
        tracemalloc.start(frames)
    count = [0]

    def dump(_sig: int, _frame: object) -> None:
        count[0] += 1
        stem = f"{os.getpid()}-{count[0]}"
        if tracemalloc.is_tracing():
            tracemalloc.take_snapshot().dump(os.path.join(out, f"snap-{stem}.pickle"))
        _malloc_info(os.path.join(out, f"malloc-{stem}.xml"))
        try:
            with open("/proc/self/smaps_rollup", encoding="ascii") as f:
                rollup = f.read()
        except OSError:
            rollup = ""
        with open(os.path.join(out, f"smaps-{stem}.txt"), "w", encoding="ascii") as f:
            f.write(rollup)
        log.warning("memory snapshot %s written to %s", stem, out)

    signal.signal(signal.SIGUSR2, dump)
    return out


def _malloc_info(path: str) -> None:
    """glibc's ``malloc_info(0, FILE*)`` into ``path``; nothing where there is no such call."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        info, fopen, fclose = libc.malloc_info, libc.fopen, libc.fclose  # type: ignore[union-attr]
    except (OSError, AttributeError):
        return
    fopen.restype = ctypes.c_void_p
    fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    fclose.argtypes = [ctypes.c_void_p]
    f = fopen(path.encode(), b"w")
    if f:
        info(0, f)
        fclose(f)
