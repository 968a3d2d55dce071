"""Trace-context propagation: read W3C / B3 headers, make the proxy's span context, write headers.

Pure and on the request path: no I/O, no OpenTelemetry objects (spans are built later, and only
for requests that are kept, by :mod:`proxy.telemetry.spans`).

Rules implemented (research 4.4, 4.5, and the W3C conformance harness ``test/test.py``):

* W3C ``traceparent``: lowercase hex only; version ``ff`` invalid; version ``00`` is exactly 55
  characters; a higher version is parsed leniently (the 00 fields, then end of value or ``-``);
  all-zero trace-id or parent-id invalid; optional whitespace around the value is ignored.
  Trace flags are a bit field: ``0x01`` sampled, ``0x02`` random-trace-id (kept when the trace id
  is reused, set on traces this proxy starts since its ids are random); other bits are dropped.
* ``tracestate`` is only kept with a valid ``traceparent``. It is validated as a whole (key
  grammar with the ``tenant@system`` form, value characters, no duplicate keys, at most 32
  members); an invalid header is discarded entirely, which never affects ``traceparent``. Empty
  members and optional whitespace are accepted and normalised away; beyond 512 characters whole
  members are dropped, those longer than 128 characters first, then from the right.
* B3 single ``b3`` wins over B3 multi ``x-b3-*``; 64- or 128-bit trace ids (64-bit ones are kept
  at 64 bits when re-injected); sampling ``1``/``0``/``d`` (multi: ``1``/``0``/``true``/``false``,
  ``x-b3-flags: 1`` = debug); a sampling-only header (``b3: 0``) keeps the decision and starts a
  new trace; for multi headers the first of repeated values wins.

Priority: a valid ``traceparent``, else a valid ``b3``, else valid ``x-b3-*`` headers; nothing
valid means ``None``: the proxy restarts the trace.

Ids come from :func:`random.getrandbits` (Mersenne Twister): trace and span ids need uniqueness,
not unpredictability, and this is several times faster than ``os.urandom``. ``x-request-id`` uses
the same generator for the same reason (it is a correlation id, never an authenticator).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

__all__ = [
    "PROPAGATION_HEADERS",
    "ParentBasedRatio",
    "TraceContext",
    "continue_trace",
    "extract",
    "inject",
    "new_context",
    "new_request_id",
]

#: Headers the proxy strips from a request before it injects its own.
PROPAGATION_HEADERS = (
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
)

_getrandbits = random.getrandbits
_random = random.random

_FLAG_SAMPLED = 0x01
_FLAG_RANDOM = 0x02

_ZERO16 = "0" * 16
_ZERO32 = "0" * 32


class TraceContext:
    """The context of one span as propagated on the wire.

    ``span_id`` is the id of the span this context describes (the current span); ``parent_id``
    that of its parent, ``""`` for a root. ``sampled`` is ``None`` only on an extracted B3
    context whose sender deferred the decision; :func:`new_context` always decides.
    ``trace_id == ""`` marks a sampling-only B3 context (``b3: 0``): a decision without a trace.
    """

    __slots__ = (
        "debug",
        "fmt",
        "parent_id",
        "random_id",
        "sampled",
        "span_id",
        "trace_id",
        "tracestate",
    )

    def __init__(
        self,
        trace_id: str,
        span_id: str,
        parent_id: str = "",
        sampled: bool | None = False,
        tracestate: str = "",
        fmt: str = "w3c",
        debug: bool = False,
        random_id: bool = False,
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.sampled = sampled
        self.tracestate = tracestate
        self.fmt = fmt
        self.debug = debug
        #: W3C level 2 random-trace-id flag (0x02); kept while the trace id is reused.
        self.random_id = random_id

    def __repr__(self) -> str:
        return (
            f"TraceContext(trace_id={self.trace_id!r}, span_id={self.span_id!r}, "
            f"parent_id={self.parent_id!r}, sampled={self.sampled!r}, "
            f"tracestate={self.tracestate!r}, fmt={self.fmt!r}, debug={self.debug!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TraceContext):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

    @property
    def traceparent(self) -> str:
        """This context as a version-00 ``traceparent`` value."""
        flags = (_FLAG_SAMPLED if self.sampled else 0) | (_FLAG_RANDOM if self.random_id else 0)
        return f"00-{self.trace_id}-{self.span_id}-0{flags}"


# --- sampling ---------------------------------------------------------------------------------


class ParentBasedRatio:
    """OpenTelemetry's ``parentbased_traceidratio``: follow the parent's decision, else a ratio.

    A parent with a trace id but a deferred decision (B3 without ``Sampled``) is decided from its
    trace id, so every sidecar on that trace reaches the same answer. Roots draw at random.
    ``respect_parent=False`` gives the plain ``traceidratio``/``always_on``/``always_off``
    samplers.
    """

    __slots__ = ("_bound", "ratio", "respect_parent")

    def __init__(self, ratio: float = 1.0, *, respect_parent: bool = True) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"sampling ratio must be within [0, 1], got {ratio!r}")
        self.ratio = ratio
        self.respect_parent = respect_parent
        # TraceIdRatioBased compares the low 64 bits of the trace id with ratio * 2**64.
        self._bound = round(ratio * (1 << 64))

    def decide(self, parent: TraceContext | None) -> bool:
        if parent is not None:
            if parent.debug:
                return True
            if self.respect_parent and parent.sampled is not None:
                return parent.sampled
            if parent.trace_id:
                return int(parent.trace_id[16:], 16) < self._bound
        ratio = self.ratio
        if ratio >= 1.0:
            return True
        if ratio <= 0.0:
            return False
        return _random() < ratio

    def __repr__(self) -> str:
        return f"ParentBasedRatio({self.ratio!r}, respect_parent={self.respect_parent!r})"


# --- extraction -------------------------------------------------------------------------------

# version-trace_id-parent_id-flags; lowercase hex only. `match` (not fullmatch): what follows is
# checked by length and version below.
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")

_OWS = " \t"


def extract(get: Callable[[str], str | None]) -> TraceContext | None:
    """The incoming context from request headers (``get(lowercase-name)``), or ``None``."""
    tp = get("traceparent")
    if tp is not None:
        ctx = _extract_w3c(tp)
        if ctx is not None:
            ts = get("tracestate")
            if ts:
                ctx.tracestate = _clean_tracestate(ts)
            return ctx
    b3 = get("b3")
    if b3 is not None:
        ctx = _extract_b3_single(b3)
        if ctx is not None:
            return ctx
    tid = get("x-b3-traceid")
    if tid is not None or get("x-b3-sampled") is not None or get("x-b3-flags") is not None:
        return _extract_b3_multi(get, tid)
    return None


def _extract_w3c(
    tp: str,
    _match=_TRACEPARENT.match,
    _ows=_OWS,
    _z32=_ZERO32,
    _z16=_ZERO16,
) -> TraceContext | None:
    # (defaults bind module constants as locals: this runs on every traced request)
    if _match(tp) is None or len(tp) != 55:
        tp = tp.strip(_ows)
        if _match(tp) is None:
            return None
    if len(tp) != 55:
        # Version 00 is exactly 55 characters; a future version may append fields after a "-".
        if tp[55] != "-" or tp[:2] == "00":
            return None
    if tp[0] == "f" and tp[1] == "f":
        return None  # version ff is invalid
    trace_id = tp[3:35]
    parent_id = tp[36:52]
    if trace_id == _z32 or parent_id == _z16:
        return None
    f = tp[54]  # the low nibble holds both bits we understand
    return TraceContext(
        trace_id, parent_id, "", f in _SAMPLED_NIBBLES, "", "w3c", False, f in _RANDOM_NIBBLES
    )


_SAMPLED_NIBBLES = frozenset("13579bdf")
_RANDOM_NIBBLES = frozenset("2367abef")


_HEX = frozenset("0123456789abcdef")


def _is_id(s: str, n: int) -> bool:
    """``s`` is ``n`` lowercase hex digits, not all zero."""
    return len(s) == n and _HEX.issuperset(s) and s.strip("0") != ""


def _b3_trace_id(s: str) -> str | None:
    if len(s) == 32:
        return s if _is_id(s, 32) else None
    if len(s) == 16 and _is_id(s, 16):
        return _ZERO16 + s  # 64-bit id, widened; inject narrows it back
    return None


def _extract_b3_single(v: str) -> TraceContext | None:
    v = v.strip(_OWS)
    parts = v.split("-")
    n = len(parts)
    if n == 1:
        # sampling-only: "0", "1" or "d"
        s = parts[0]
        if s == "0":
            return TraceContext("", "", "", False, "", "b3", False)
        if s == "1":
            return TraceContext("", "", "", True, "", "b3", False)
        if s == "d":
            return TraceContext("", "", "", True, "", "b3", True)
        return None
    if n > 4:
        return None
    trace_id = _b3_trace_id(parts[0])
    if trace_id is None or not _is_id(parts[1], 16):
        return None
    sampled: bool | None = None
    debug = False
    if n >= 3:
        s = parts[2]
        if s == "1":
            sampled = True
        elif s == "0":
            sampled = False
        elif s == "d":
            sampled, debug = True, True
        else:
            return None
    parent_id = ""
    if n == 4:
        if not _is_id(parts[3], 16):
            return None
        parent_id = parts[3]
    # Incoming parent_id is the sender's parent; our child's parent is the sender's span.
    return TraceContext(trace_id, parts[1], parent_id, sampled, "", "b3", debug)


def _first(v: str) -> str:
    # "When extracting, the first value wins" (a proxy may have joined repeats with commas).
    if "," in v:
        v = v.split(",", 1)[0]
    return v.strip(_OWS)


def _extract_b3_multi(get: Callable[[str], str | None], tid: str | None) -> TraceContext | None:
    sampled: bool | None = None
    debug = False
    fl = get("x-b3-flags")
    if fl is not None and _first(fl) == "1":
        sampled, debug = True, True
    else:
        s = get("x-b3-sampled")
        if s is not None:
            s = _first(s).lower()
            if s in ("1", "true"):
                sampled = True
            elif s in ("0", "false"):
                sampled = False
            else:
                return None
    if tid is None:
        if sampled is None:
            return None
        return TraceContext("", "", "", sampled, "", "b3multi", debug)
    trace_id = _b3_trace_id(_first(tid))
    sid = get("x-b3-spanid")
    if trace_id is None or sid is None:
        return None
    sid = _first(sid)
    if not _is_id(sid, 16):
        return None
    parent_id = ""
    pid = get("x-b3-parentspanid")
    if pid is not None:
        pid = _first(pid)
        if not _is_id(pid, 16):
            return None
        parent_id = pid
    return TraceContext(trace_id, sid, parent_id, sampled, "", "b3multi", debug)


# --- tracestate -------------------------------------------------------------------------------

# Level-1 key grammar, as the W3C conformance harness checks it.
_TS_KEY = r"(?:[a-z][_0-9a-z\-*/]{0,255}|[0-9a-z][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
_TS_VALUE = r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
_TS_MEMBER = re.compile(f"({_TS_KEY})=({_TS_VALUE})")
_TS_MAX_MEMBERS = 32
_TS_MAX_LEN = 512
_TS_LONG_MEMBER = 128

# Apps often send the same tracestate on every request; remember the last verdicts.
_ts_cache: dict[str, str] = {}
_TS_CACHE_MAX = 256


def _clean_tracestate(raw: str) -> str:
    """The normalised ``tracestate`` to propagate, or ``""`` if the header is invalid."""
    hit = _ts_cache.get(raw)
    if hit is not None:
        return hit
    out = _parse_tracestate(raw)
    if len(_ts_cache) >= _TS_CACHE_MAX:
        _ts_cache.clear()
    _ts_cache[raw] = out
    return out


def _parse_tracestate(raw: str) -> str:
    members: list[str] = []
    keys: set[str] = set()
    for part in raw.split(","):
        part = part.strip(_OWS)
        if not part:
            continue  # empty list members are allowed
        m = _TS_MEMBER.fullmatch(part)
        if m is None:
            return ""
        key = m.group(1)
        if key in keys:
            return ""  # duplicated key: discard (the harness expects the whole header dropped)
        keys.add(key)
        members.append(part)
        if len(members) > _TS_MAX_MEMBERS:
            return ""
    out = ",".join(members)
    if len(out) <= _TS_MAX_LEN:
        return out
    # Truncate by whole members: the long ones first, then from the right.
    members = [m for m in members if len(m) <= _TS_LONG_MEMBER]
    while members and len(",".join(members)) > _TS_MAX_LEN:
        members.pop()
    return ",".join(members)


# --- new spans --------------------------------------------------------------------------------


def _new_id64() -> str:
    s = _getrandbits(64).to_bytes(8).hex()
    return s if s != _ZERO16 else _new_id64()  # all-zero ids are invalid


def _new_id128() -> str:
    s = _getrandbits(128).to_bytes(16).hex()
    return s if s != _ZERO32 else _new_id128()


def new_context(
    parent: TraceContext | None,
    sampler: ParentBasedRatio,
    _bits=_getrandbits,
    _z16=_ZERO16,
    _z32=_ZERO32,
) -> TraceContext:
    """The context of the proxy's own span: a child of ``parent``, or a new root."""
    if parent is None:
        # a new root (most requests): trace and span id from one draw of 192 random bits
        ids = _bits(192).to_bytes(24).hex()
        trace_id = ids[:32]
        span_id = ids[32:]
        if trace_id == _z32:
            trace_id = _new_id128()
        if span_id == _z16:
            span_id = _new_id64()
        return TraceContext(trace_id, span_id, "", sampler.decide(None), "", "w3c", False, True)
    trace_id = parent.trace_id
    if not trace_id:  # B3 sampling-only: keep the decision, start the trace
        return TraceContext(
            _new_id128(),
            _new_id64(),
            "",
            sampler.decide(parent),
            "",
            parent.fmt,
            parent.debug,
            True,
        )
    span_id = _bits(64).to_bytes(8).hex()
    if span_id == _z16:
        span_id = _new_id64()
    sampled = parent.sampled
    if sampled is None or parent.debug or not sampler.respect_parent:
        sampled = sampler.decide(parent)
    return TraceContext(
        trace_id,
        span_id,
        parent.span_id,
        sampled,
        parent.tracestate,
        parent.fmt,
        parent.debug,
        parent.random_id,
    )


def continue_trace(
    get: Callable[[str], str | None],
    sampler: ParentBasedRatio,
    _match=_TRACEPARENT.match,
    _bits=_getrandbits,
    _z32=_ZERO32,
    _z16=_ZERO16,
) -> TraceContext:
    """``new_context(extract(get), sampler)``, fused for the common case.

    A well-formed version-00 ``traceparent`` (no surrounding whitespace) is parsed straight into
    the child context, without building the parent's; everything else takes the general path.
    Same result either way.
    """
    tp = get("traceparent")
    if (
        tp is not None
        and len(tp) == 55
        and tp[0] == "0"
        and tp[1] == "0"
        and _match(tp) is not None
        and sampler.respect_parent
    ):
        trace_id = tp[3:35]
        parent_id = tp[36:52]
        span_id = _bits(64).to_bytes(8).hex()
        if trace_id != _z32 and parent_id != _z16 and span_id != _z16:
            f = tp[54]
            ts = get("tracestate")
            return TraceContext(
                trace_id,
                span_id,
                parent_id,
                f in _SAMPLED_NIBBLES,
                _clean_tracestate(ts) if ts else "",
                "w3c",
                False,
                f in _RANDOM_NIBBLES,
            )
    return new_context(extract(get), sampler)


# --- injection --------------------------------------------------------------------------------


def inject(ctx: TraceContext) -> list[tuple[str, str]]:
    """Headers to set on the outgoing request, in the format the trace came in with."""
    fmt = ctx.fmt
    if fmt == "w3c":
        flags = (_FLAG_SAMPLED if ctx.sampled else 0) | (_FLAG_RANDOM if ctx.random_id else 0)
        out = [("traceparent", f"00-{ctx.trace_id}-{ctx.span_id}-0{flags}")]
        if ctx.tracestate:
            out.append(("tracestate", ctx.tracestate))
        return out
    tid = ctx.trace_id
    if tid.startswith(_ZERO16):
        tid = tid[16:]  # a 64-bit B3 trace id goes back out at 64 bits
    if fmt == "b3":
        s = "d" if ctx.debug else ("1" if ctx.sampled else "0")
        v = f"{tid}-{ctx.span_id}-{s}"
        if ctx.parent_id:
            v = f"{v}-{ctx.parent_id}"
        return [("b3", v)]
    out = [("x-b3-traceid", tid), ("x-b3-spanid", ctx.span_id)]
    if ctx.parent_id:
        out.append(("x-b3-parentspanid", ctx.parent_id))
    if ctx.debug:
        out.append(("x-b3-flags", "1"))  # debug implies sampled; Sampled is not sent with it
    else:
        out.append(("x-b3-sampled", "1" if ctx.sampled else "0"))
    return out


# uuid variant bits "10": the nibble after the third dash is 8, 9, a or b.
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def new_request_id(_bits=_getrandbits, _variant=_VARIANT) -> str:
    """A UUID version 4 string for ``x-request-id``."""
    h = _bits(128).to_bytes(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_variant[h[16]]}{h[17:20]}-{h[20:]}"
