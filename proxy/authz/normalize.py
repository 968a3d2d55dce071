"""Request-path normalization for the inbound side: what is authorized is what is forwarded.

One function, :func:`normalize_path`, turns the path of a request target into the single form
that both the authorization engine sees and the application receives (security-ops.md 2.6), or
returns ``None`` when the path is malformed and the caller must answer 400. The steps follow
Istio's strictest setting, in Istio's fixed order:

1. the fragment is stripped and the query split off (the query is never normalized; the caller
   keeps it as received and appends it to the forwarded path);
2. raw control characters, space, DEL and non-ASCII are refused;
3. percent-encodings are checked (``%`` + two hex digits, otherwise 400); unreserved characters
   (``A-Z a-z 0-9 - . _ ~``) are decoded once (``%252e`` stays ``%252E``: no double decoding); the
   rest are kept, hex upper-cased. ``%00``-``%1F`` and ``%7F`` are refused (Istio refuses ``%00``;
   an encoded CR/LF is no better in a backend's log line);
4. encoded slashes ``%2F``/``%5C`` are refused by default: the proxy and the backend could
   disagree on where segments end (CVE-2021-31920). ``decode_slashes=True`` gives Istio's
   ``DECODE_AND_MERGE_SLASHES`` instead (decode to ``/`` and ``\\``, then normalize);
5. ``\\`` becomes ``/`` (Istio BASE);
6. path parameters (``;``) are refused by default: Tomcat-style backends read ``/a/..;/b`` as
   ``/b`` and ``/admin;x`` as ``/admin`` (CVE-2026-73551). ``path_params="keep"`` forwards them
   but still refuses ``;`` on a ``.``/``..`` segment, which no reading makes safe;
7. ``.`` and ``..`` segments are resolved (RFC 3986 section 5.2.4); ``..`` never climbs above
   the root;
8. repeated slashes are merged (MERGE_SLASHES). A trailing slash is kept.

Path *case* is not normalized (Istio does not either): ``/ADMIN`` stays ``/ADMIN``. A backend that
treats paths case-insensitively needs ALLOW rules with positive matches, not DENY rules.

The common, already-clean path costs one precompiled character-class match and no allocation.
"""

from __future__ import annotations

import re

__all__ = ["normalize_path", "normalize_target"]

# A path made only of these characters, with no "//" and no "/.", is already normal and is
# returned as it is (one fullmatch of a character class: the cheapest test measured).
_CLEAN = re.compile(r"/[A-Za-z0-9/\-_~!$&'()*+,=:@.]*")
_BAD_CHAR = re.compile(r"[\x00-\x20\x7f-\U0010ffff]")
_HEX = frozenset("0123456789abcdefABCDEF")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def normalize_path(
    raw_path: str, *, decode_slashes: bool = False, path_params: str = "reject"
) -> str | None:
    """The normalized path of ``raw_path`` (query and fragment removed), or None for a 400.

    ``raw_path`` is the path of an origin-form target (``/a/b``); a ``?query`` or ``#fragment``
    still attached is cut off. ``*`` (the asterisk-form of ``OPTIONS *``) is returned unchanged.
    """
    if not raw_path:
        return None
    if _CLEAN.fullmatch(raw_path) is not None and "//" not in raw_path and "/." not in raw_path:
        return raw_path
    if raw_path == "*":
        return raw_path
    return _slow(raw_path, decode_slashes, path_params)


def normalize_target(
    target: str, *, decode_slashes: bool = False, path_params: str = "reject"
) -> tuple[str, str] | None:
    """``(normalized path, query as received)`` of an origin-form target, or None for a 400.

    Forward ``path + "?" + query`` (or ``path`` when the query is empty): the path the rules saw.
    """
    q = target.find("?")
    query = ""
    if q >= 0:
        query = target[q + 1 :]
        h = query.find("#")
        if h >= 0:
            query = query[:h]
        if _BAD_CHAR.search(query) is not None:
            return None
    path = normalize_path(target, decode_slashes=decode_slashes, path_params=path_params)
    if path is None:
        return None
    return path, query


def _slow(path: str, decode_slashes: bool, path_params: str) -> str | None:
    for sep in ("#", "?"):
        i = path.find(sep)
        if i >= 0:
            path = path[:i]
    if not path or _BAD_CHAR.search(path) is not None:
        return None
    if "%" in path:
        decoded = _decode(path, decode_slashes)
        if decoded is None:
            return None
        path = decoded
    if "\\" in path:
        path = path.replace("\\", "/")
    if path[0] != "/":
        return None
    segments = path.split("/")
    if ";" in path:
        if path_params != "keep":
            return None
        for seg in segments:
            if ";" in seg and seg.partition(";")[0] in (".", ".."):
                return None
    # RFC 3986 5.2.4 on the segments after the leading "/", then merge empty segments.
    out: list[str] = []
    last = len(segments) - 1
    for i in range(1, last + 1):
        seg = segments[i]
        if seg == ".":
            if i == last:
                out.append("")
        elif seg == "..":
            if out:
                out.pop()
            if i == last:
                out.append("")
        else:
            out.append(seg)
    trailing = bool(out) and out[-1] == ""
    kept = [s for s in out if s]
    if not kept:
        return "/"
    result = "/" + "/".join(kept)
    return result + "/" if trailing else result


def _decode(path: str, decode_slashes: bool) -> str | None:
    parts = path.split("%")
    out = [parts[0]]
    for part in parts[1:]:
        if len(part) < 2 or part[0] not in _HEX or part[1] not in _HEX:
            return None  # invalid percent-encoding
        code = int(part[:2], 16)
        ch = chr(code)
        if ch in _UNRESERVED:
            out.append(ch)
        elif code < 0x20 or code == 0x7F:
            return None  # %00 and the other encoded controls
        elif ch in "/\\":
            if not decode_slashes:
                return None
            out.append(ch)
        else:
            out.append("%" + part[:2].upper())
        out.append(part[2:])
    return "".join(out)
