"""A small declarative schema language for resource specs, and the value checks it is built from.

A validator is a function ``(value, path, ctx) -> None`` that records problems in ``ctx`` as
``(field path, reason)`` pairs, errors and warnings apart. Validators are composed once at import
time (``obj``, ``list_of``, ``map_of`` ...) into one tree per kind; validating a document is a walk
of that tree, so every error in a document is found in one pass and named by its field path
(``spec.http[0].route[1].weight``). Objects are strict, as Istio's validating webhook is: a field
the schema does not know is an error that names it.
"""

from __future__ import annotations

import ipaddress
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any


class Ctx:
    """Problems found while validating one document."""

    __slots__ = ("errors", "warnings")

    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []
        self.warnings: list[tuple[str, str]] = []

    def error(self, path: str, reason: str) -> None:
        self.errors.append((path, reason))

    def warn(self, path: str, reason: str) -> None:
        self.warnings.append((path, reason))


Validator = Callable[[Any, str, Ctx], None]


class Shape:
    """What a validator accepts, for walking a schema without running it: an ``object`` (a named
    message with its fields and the fields it refuses), a ``list`` or ``map`` of ``item``, or a
    ``leaf``. The field-status table (``field_status.py``) and its docs generator read this."""

    __slots__ = ("form", "name", "fields", "unsupported", "item")

    def __init__(
        self,
        form: str,
        *,
        name: str = "",
        fields: Mapping[str, Validator] | None = None,
        unsupported: Mapping[str, str] | None = None,
        item: Validator | None = None,
    ) -> None:
        self.form = form
        self.name = name
        self.fields = dict(fields or {})
        self.unsupported = dict(unsupported or {})
        self.item = item


_LEAF = Shape("leaf")


def shape_of(v: Validator) -> Shape:
    return getattr(v, "shape", _LEAF)


def shaped(like: Validator) -> Callable[[Validator], Validator]:
    """Give a hand-written validator the shape of ``like`` (the list or object it checks
    before its cross-entry checks), so schema walks see through it."""

    def deco(fn: Validator) -> Validator:
        fn.shape = shape_of(like)  # type: ignore[attr-defined]
        return fn

    return deco


_SIMPLE_KEY = re.compile(r"^[A-Za-z0-9_\-/]+$")


def join(path: str, key: str) -> str:
    """``spec`` + ``hosts`` -> ``spec.hosts``; keys with dots or odd characters are quoted."""
    if _SIMPLE_KEY.match(key):
        return f"{path}.{key}" if path else key
    return f'{path}["{key}"]'


def index(path: str, i: int) -> str:
    return f"{path}[{i}]"


# -- durations --------------------------------------------------------------------------------

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(value: str) -> float:
    """An Istio duration string -> seconds.

    Accepts what Istio manifests use: Go ``time.ParseDuration`` syntax (``"1s"``, ``"0.5s"``,
    ``"100ms"``, ``"500us"``, ``"1m"``, ``"1h30m"``) and so protobuf's JSON form (``"1.5s"``), plus
    ``"0"``. Negative durations and bare numbers are rejected with ``ValueError``.
    """
    if not isinstance(value, str) or isinstance(value, bool):
        raise ValueError(f'duration must be a string such as "1s", not {value!r}')
    s = value.strip()
    if s == "0":
        return 0.0
    if not s:
        raise ValueError("empty duration")
    total = 0.0
    pos = 0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        raise ValueError(
            f'invalid duration {value!r}: expected a number with a unit such as "1s", "100ms", "1m"'
        )
    return total


def format_seconds(seconds: float) -> str:
    """Seconds -> the shortest Istio duration string that says it (``60.0`` -> ``"1m"``)."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    if seconds >= 1 and seconds == int(seconds):
        return f"{int(seconds)}s"
    if seconds * 1000 == int(seconds * 1000):
        return f"{int(seconds * 1000)}ms"
    return f"{seconds:g}s"


# -- regular expressions ----------------------------------------------------------------------

# Python constructs RE2 (Istio's regex engine) rejects. A pattern using them would be accepted
# here and refused by every other Istio tool, so refuse it too. Found by walking Python's own
# parse tree, so escapes and character classes cannot fool the check.
_NOT_RE2_OPS = {
    "ASSERT": "look-ahead/look-behind",
    "ASSERT_NOT": "look-ahead/look-behind",
    "GROUPREF": "back-reference",
    "GROUPREF_EXISTS": "conditional group",
    "ATOMIC_GROUP": "atomic group",
    "POSSESSIVE_REPEAT": "possessive quantifier",
}
_NOT_RE2_FLAGS = re.VERBOSE | re.ASCII | re.LOCALE


def _re2_violation(parsed: Any) -> str | None:
    for op, av in parsed:
        name = str(op)
        if name in _NOT_RE2_OPS:
            return _NOT_RE2_OPS[name]
        if name == "AT" and str(av) == "AT_END_STRING":
            return "\\Z (end of text; write $)"
        children: list[Any] = []
        if name == "SUBPATTERN":
            if (av[1] | av[2]) & _NOT_RE2_FLAGS:
                return "the inline flag x, a or L"
            children = [av[3]]
        elif name == "BRANCH":
            children = list(av[1])
        elif name in ("MAX_REPEAT", "MIN_REPEAT"):
            children = [av[2]]
        for child in children:
            found = _re2_violation(child)
            if found:
                return found
    return None


def check_regex(pattern: str) -> str | None:
    """None if ``pattern`` is RE2 that Python's ``re`` compiles the same way, else the reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            re.compile(pattern)
            parsed = _sre_parse(pattern)
    except (re.error, FutureWarning, DeprecationWarning, RecursionError) as exc:
        return f"invalid regex {pattern!r}: {exc}"
    what = _re2_violation(parsed)
    if what is None and parsed.state.flags & _NOT_RE2_FLAGS:
        what = "the inline flag x, a or L"
    if what:
        return f"invalid regex {pattern!r}: {what} is not supported (RE2 syntax)"
    return None


def _sre_parse(pattern: str) -> Any:
    try:
        from re import _parser  # type: ignore[attr-defined]  # Python >= 3.11
    except ImportError:  # pragma: no cover
        import sre_parse as _parser  # type: ignore[no-redef]
    return _parser.parse(pattern)


# -- leaf validators --------------------------------------------------------------------------


def any_value() -> Validator:
    def v(value: Any, path: str, ctx: Ctx) -> None:
        return None

    return v


def string(
    *,
    nonempty: bool = False,
    pattern: str | None = None,
    what: str = "",
    check: Callable[[str], str | None] | None = None,
) -> Validator:
    rx = re.compile(pattern) if pattern else None

    def v(value: Any, path: str, ctx: Ctx) -> None:
        if not isinstance(value, str):
            ctx.error(path, f"must be a string{quote_hint(value)}")
            return
        if nonempty and not value:
            ctx.error(path, "must not be empty")
            return
        if rx is not None and value and not rx.match(value):
            ctx.error(path, f"{value!r} is not a valid {what or 'value'}")
            return
        if check is not None:
            reason = check(value)
            if reason:
                ctx.error(path, reason)

    return v


def quote_hint(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f' (quote it: "{value}")'
    if isinstance(value, bool):
        return " (YAML reads an unquoted yes/no/on/off/true/false as a boolean; quote it)"
    return ""


def _range_text(kind: str, lo: float | None, hi: float | None, lo_open: bool = False) -> str:
    if lo is not None and hi is not None:
        if lo_open:
            return f"must be {kind} > {lo:g} and <= {hi:g}"
        return f"must be {kind} between {lo:g} and {hi:g}"
    if lo is not None:
        return f"must be {kind} {'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"must be {kind} <= {hi:g}"
    return f"must be {kind}"


def integer(lo: int | None = None, hi: int | None = None) -> Validator:
    text = _range_text("an integer", lo, hi)

    def v(value: Any, path: str, ctx: Ctx) -> None:
        bad_type = isinstance(value, bool) or not isinstance(value, int)
        if bad_type or (lo is not None and value < lo) or (hi is not None and value > hi):
            ctx.error(path, text)

    return v


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> Validator:
    text = _range_text("a number", lo, hi, lo_open)

    def v(value: Any, path: str, ctx: Ctx) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            ctx.error(path, text)
            return
        too_low = lo is not None and (value <= lo if lo_open else value < lo)
        if too_low or (hi is not None and value > hi):
            ctx.error(path, text)

    return v


def boolean() -> Validator:
    def v(value: Any, path: str, ctx: Ctx) -> None:
        if not isinstance(value, bool):
            ctx.error(path, "must be true or false")

    return v


def enum(*allowed: str, case_insensitive: bool = False) -> Validator:
    names = ", ".join(allowed)
    upper = {a.upper() for a in allowed}

    def v(value: Any, path: str, ctx: Ctx) -> None:
        ok = isinstance(value, str) and (
            value.upper() in upper if case_insensitive else value in allowed
        )
        if not ok:
            ctx.error(path, f"must be one of {names} (got {value!r})")

    return v


def duration(min_seconds: float = 0.0, max_seconds: float | None = None) -> Validator:
    def v(value: Any, path: str, ctx: Ctx) -> None:
        if not isinstance(value, str):
            hint = f' such as "{value}s"' if isinstance(value, (int, float)) else ' such as "1s"'
            ctx.error(path, f"must be a duration string{hint}")
            return
        try:
            secs = parse_duration(value)
        except ValueError as exc:
            ctx.error(path, str(exc))
            return
        if secs < min_seconds:
            ctx.error(path, f"must be at least {format_seconds(min_seconds)} (got {value!r})")
        elif max_seconds is not None and secs > max_seconds:
            ctx.error(path, f"must be at most {format_seconds(max_seconds)} (got {value!r})")

    return v


def regex() -> Validator:
    return string(check=check_regex)


def ip_or_cidr(value: str) -> str | None:
    try:
        if "/" in value:
            ipaddress.ip_network(value, strict=False)
        else:
            ipaddress.ip_address(value)
    except ValueError:
        return f"{value!r} is not an IP address or CIDR block"
    return None


# -- composite validators ---------------------------------------------------------------------


def list_of(item: Validator, *, nonempty: bool = False, max_items: int | None = None) -> Validator:
    def v(value: Any, path: str, ctx: Ctx) -> None:
        if not isinstance(value, list):
            ctx.error(path, "must be a list")
            return
        if nonempty and not value:
            ctx.error(path, "must not be empty")
        if max_items is not None and len(value) > max_items:
            ctx.error(path, f"must have at most {max_items} entries")
        for i, elem in enumerate(value):
            item(elem, index(path, i), ctx)

    v.shape = Shape("list", item=item)  # type: ignore[attr-defined]
    return v


def map_of(
    val: Validator,
    *,
    key: Callable[[str], str | None] | None = None,
    int_keys: bool = False,
) -> Validator:
    """A mapping. ``key`` checks each key (returns a reason or None). With ``int_keys`` YAML's
    integer keys (``8080:``) are accepted (they are normalized to strings by ``normalize``)."""

    def v(value: Any, path: str, ctx: Ctx) -> None:
        if not isinstance(value, dict):
            ctx.error(path, "must be a mapping")
            return
        for k, elem in value.items():
            if int_keys and isinstance(k, int) and not isinstance(k, bool):
                k = str(k)
            if not isinstance(k, str):
                ctx.error(path, f"key {k!r} must be a string")
                continue
            sub = join(path, k)
            if key is not None:
                reason = key(k)
                if reason:
                    ctx.error(sub, reason)
                    continue
            val(elem, sub, ctx)

    v.shape = Shape("map", item=val)  # type: ignore[attr-defined]
    return v


Check = Callable[[dict, str, Ctx], None]


def obj(
    fields: Mapping[str, Validator],
    *,
    required: Iterable[str] = (),
    exactly_one: Iterable[tuple[str, ...]] = (),
    at_most_one: Iterable[tuple[str, ...]] = (),
    at_least_one: Iterable[tuple[str, ...]] = (),
    checks: Iterable[Check] = (),
    unsupported: Mapping[str, str] | None = None,
    nonempty: str = "",
    name: str = "",
) -> Validator:
    """A strict object. Groups name fields of which exactly / at most / at least one may be set;
    ``unsupported`` maps Istio fields meshlet refuses to the reason; ``checks`` run on the whole
    object after its fields validate; ``nonempty`` is the message for an empty object. ``name``
    is the Istio message name (``HTTPRoute``) under which ``field_status.py`` lists its fields."""
    fields = dict(fields)
    required = tuple(required)
    exactly_one = tuple(exactly_one)
    at_most_one = tuple(at_most_one)
    at_least_one = tuple(at_least_one)
    checks = tuple(checks)
    unsupported = dict(unsupported or {})
    known = sorted(fields)

    def v(value: Any, path: str, ctx: Ctx) -> None:
        if not isinstance(value, dict):
            ctx.error(path, "must be a mapping")
            return
        if nonempty and not value:
            ctx.error(path, nonempty)
            return
        before = len(ctx.errors)
        for k, elem in value.items():
            if not isinstance(k, str):
                ctx.error(path, f"key {k!r} must be a string")
                continue
            sub = join(path, k)
            if k in unsupported:
                ctx.error(sub, unsupported[k])
            elif k in fields:
                if elem is None:
                    # YAML `field:` with no value: Istio's decoder treats it as unset.
                    continue
                fields[k](elem, sub, ctx)
            else:
                import difflib  # only on a misspelt field: not loaded by a sidecar at rest

                close = difflib.get_close_matches(k, known, n=1)
                hint = f' (did you mean "{close[0]}"?)' if close else ""
                ctx.error(sub, f'unknown field "{k}"{hint}')
        present = {k for k, e in value.items() if e is not None}
        for k in required:
            if k not in present:
                ctx.error(join(path, k), "is required")
        for group in exactly_one:
            got = [g for g in group if g in present]
            if len(got) != 1:
                ctx.error(path, _group_text("exactly one", group, got))
        for group in at_most_one:
            got = [g for g in group if g in present]
            if len(got) > 1:
                ctx.error(path, _group_text("at most one", group, got))
        for group in at_least_one:
            if not any(g in present for g in group):
                ctx.error(path, _group_text("at least one", group, []))
        if len(ctx.errors) == before:
            for check in checks:
                check(value, path, ctx)

    shape = Shape("object", name=name, fields=fields, unsupported=unsupported)
    v.shape = shape  # type: ignore[attr-defined]
    return v


def _group_text(how: str, group: tuple[str, ...], got: list[str]) -> str:
    names = ", ".join(group)
    found = f" (found {', '.join(got)})" if got else ""
    return f"must set {how} of {names}{found}"


# -- names ------------------------------------------------------------------------------------

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_HOST_LABEL = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_]*[A-Za-z0-9])?$")
_HTTP_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def dns1123_subdomain(value: str) -> str | None:
    if len(value) > 253 or not DNS1123_SUBDOMAIN.match(value):
        return (
            f"{value!r} is not a valid name: lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit (DNS-1123)"
        )
    return None


def dns1123_label(value: str) -> str | None:
    if len(value) > 63 or not DNS1123_LABEL.match(value):
        return (
            f"{value!r} is not a valid name: at most 63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit (DNS-1123 label)"
        )
    return None


def label_key(key: str) -> str | None:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or dns1123_subdomain(prefix)):
        return f"label key {key!r} has an invalid prefix"
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        return f"label key {key!r} is not a valid label name"
    return None


def label_value(value: Any, path: str, ctx: Ctx) -> None:
    if not isinstance(value, str):
        ctx.error(path, f"label value must be a string{quote_hint(value)}")
    elif value and (len(value) > 63 or not _LABEL_NAME.match(value)):
        ctx.error(path, f"{value!r} is not a valid label value")


LABELS = map_of(label_value, key=label_key)


def hostname(value: str, *, wildcard: bool = True) -> str | None:
    """Istio host names: FQDN, short name, or a wildcard prefix ``*.example.com`` / ``*``."""
    h = value.rstrip(".")
    if wildcard and h == "*":
        return None
    if wildcard and h.startswith("*."):
        h = h[2:]
    if not h or len(h) > 253:
        return f"{value!r} is not a valid host name"
    for label in h.split("."):
        if len(label) > 63 or not _HOST_LABEL.match(label):
            hint = " (a wildcard is only allowed as a leading '*.')" if "*" in value else ""
            return f"{value!r} is not a valid host name{hint}"
    return None


def http_header_name(value: str) -> str | None:
    if not _HTTP_TOKEN.match(value.lstrip(":")):
        return f"{value!r} is not a valid HTTP header name"
    return None


def port_number(value: Any, path: str, ctx: Ctx) -> None:
    integer(1, 65535)(value, path, ctx)


def port_key(value: str) -> str | None:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        return f"port {value!r} must be a number between 1 and 65535"
    return None
