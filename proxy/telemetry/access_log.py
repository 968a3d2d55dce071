"""The access log: one JSON object per request, one line each, written in batches.

Lines are formatted by hand from a fixed field list (the same keys, in the same order, on every
line; ``null`` for a value not given), which is about twice as fast as ``json.dumps`` on a dict;
strings go through the stdlib's C JSON string encoder, so the output is always valid JSON.

Writes are buffered: the first line after a flush arms a short timer on the running event loop
(``flush_interval``), and a buffer past ``max_buffer`` characters is written at once, so the loop
pays for one ``write`` per batch rather than per request. Outside an event loop each line is
written immediately. Successful requests can be sampled (``success_sample_ratio``); failures and
requests with a response flag are always logged.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import time
from json.encoder import encode_basestring_ascii as _json_str  # type: ignore[attr-defined]
from typing import IO, Any

__all__ = ["FIELDS", "AccessLog", "format_line", "iso_time"]

_log = logging.getLogger("meshlet.telemetry.access_log")

#: The keys of every line, in order.
FIELDS: tuple[str, ...] = (
    "start_time",
    "method",
    "authority",
    "path",
    "protocol",
    "response_code",
    "response_flags",
    "grpc_status",
    "duration_ms",
    "upstream_service_time_ms",
    "bytes_received",
    "bytes_sent",
    "upstream_host",
    "upstream_cluster",
    "request_id",
    "trace_id",
    "span_id",
    "downstream_remote_address",
    "downstream_peer_principal",
    "user_agent",
    "x_forwarded_for",
    "route_name",
    "reporter",
)
_FIELD_SET = frozenset(FIELDS)
_PREFIXES = tuple(("{" if i == 0 else ",") + _json_str(k) + ":" for i, k in enumerate(FIELDS))

_sec_cache: list[Any] = [-1, ""]


def iso_time(t: float) -> str:
    """Envoy's default ``START_TIME`` form, UTC with milliseconds: ``2024-05-01T12:00:00.123Z``."""
    sec, ms = divmod(round(t * 1000), 1000)
    if sec != _sec_cache[0]:
        _sec_cache[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _sec_cache[0] = sec
    return f"{_sec_cache[1]}.{ms:03d}Z"


def _float(v: float) -> str:
    if v != v or v in (_INF, -_INF):
        return "null"  # not representable in JSON
    return repr(round(v, 3))


_INF = float("inf")


def _value(v: Any) -> str:
    t = type(v)
    if t is str:
        return _json_str(v)
    if v is None:
        return "null"
    if t is int:
        return str(v)
    if t is float:
        return _float(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):  # IntEnum, HTTPStatus, ...
        return str(int(v))
    if isinstance(v, float):
        return _float(float(v))
    return _json_str(str(v))


def format_line(
    fields: dict[str, Any],
    _pf: tuple[tuple[str, str], ...] = tuple(zip(_PREFIXES, FIELDS, strict=True)),
    _js: Any = _json_str,
    _str: type = str,
) -> str:
    """One JSON line (with ``\\n``): every :data:`FIELDS` key in order, then any extra keys."""
    get = fields.get
    parts: list[str] = []
    app = parts.append
    for p, k in _pf:  # the common types inline; _value() for the rest
        v = get(k)
        t = type(v)
        if t is _str:
            app(p + _js(v))
        elif v is None:
            app(p + "null")
        elif t is int:
            app(p + _str(v))
        else:
            app(p + _value(v))
    if len(fields) > len(_pf) or not _FIELD_SET.issuperset(fields):
        parts.extend(
            "," + _js(_str(k)) + ":" + _value(v) for k, v in fields.items() if k not in _FIELD_SET
        )
    app("}\n")
    return "".join(parts)


class AccessLog:
    """Buffered JSON-lines access log. ``log(**fields)`` on the request path; ``close()`` at exit.

    ``start_time`` may be given as Unix seconds (float) and is written in ISO 8601; absent, the
    time of the call is used.
    """

    def __init__(
        self,
        stream: IO[str] | None = None,
        success_sample_ratio: float = 1.0,
        enabled: bool = True,
        *,
        flush_interval: float = 0.1,
        max_buffer: int = 64 * 1024,
        clock: Any = time.time,
    ) -> None:
        if not 0.0 <= success_sample_ratio <= 1.0:
            raise ValueError("success_sample_ratio must be within [0, 1]")
        self.stream = sys.stdout if stream is None else stream
        self.success_sample_ratio = success_sample_ratio
        self.enabled = enabled
        self.flush_interval = flush_interval
        self.max_buffer = max_buffer
        self._clock = clock
        self._buf: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self.dropped = 0  # lines lost to write errors
        self._warned = False

    def log(self, **fields: Any) -> None:
        """Log one request (keys: :data:`FIELDS`; extra keys are appended)."""
        if not self.enabled:
            return
        ratio = self.success_sample_ratio
        if ratio < 1.0:
            code = fields.get("response_code") or 0
            flags = fields.get("response_flags")
            if 0 < code < 400 and flags in (None, "", "-") and random.random() >= ratio:
                return
        st = fields.get("start_time")
        if st is None or type(st) is not str:
            fields["start_time"] = iso_time(self._clock() if st is None else st)
        line = format_line(fields)
        self._buf.append(line)
        self._size += len(line)
        if self._size >= self.max_buffer:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()  # no loop: nothing would flush later
                return
            self._timer = loop.call_later(self.flush_interval, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Write everything buffered now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buf:
            return
        data = "".join(self._buf)
        n = len(self._buf)
        self._buf.clear()
        self._size = 0
        try:
            self.stream.write(data)
            self.stream.flush()
        except (OSError, ValueError) as e:  # closed or broken stream: never fail a request
            self.dropped += n
            if not self._warned:
                self._warned = True
                _log.warning("access log write failed (%s); dropping lines", e)

    def close(self) -> None:
        """Flush and stop logging."""
        self.flush()
        self.enabled = False
