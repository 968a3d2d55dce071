"""Differential tests of the route matcher: the compiled module and its pure-Python twin give the
same answer on generated route tables and requests, and both agree with a reference written
straight from Istio's HTTPMatchRequest semantics (no plan tuples, no lazy dicts)."""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.routes.table import (
    EXACT,
    PREFIX,
    PRESENT,
    REGEX,
    Destination,
    HeaderOps,
    MatchBlock,
    Matcher,
    Route,
    RouteTable,
    VirtualHost,
)

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

HOSTS = ("a", "b")
PATH_CHARS = "/abAB1"
HEADER_NAMES = ("x-a", "x-b")
QUERY_KEYS = ("k", "q")
REGEXES = ("/a.*", ".*b", "/[ab]+", "(/a|/B)/?", "[0-9]+", "a,b", ".*", "")
# values drawn from a small shared pool, so matchers and requests meet often (random text
# would almost never make an exact match or a prefix hit)
POOL = ("", "a", "b", "a,b", "ab", "/a", "/A", "/a/b", "1", "42", "GET", "a:80", "b,a")
VALUES = st.sampled_from(POOL) | st.text(alphabet="abAB/1,", max_size=4)


HEADER_VALUES = st.sampled_from(["a", "b", "a,b", "b,a", "a,", "1"])
HEADER_REGEXES = ("a,b", "a.*", "b", "[ab]", ".*,.*")


def _matcher(name: str, *, present: bool = True, invert: bool = False, values=VALUES,
             regexes=REGEXES):  # fmt: skip
    ops = [EXACT, PREFIX, REGEX] + ([PRESENT] if present else [])

    @st.composite
    def build(draw):
        op = draw(st.sampled_from(ops))
        if op == REGEX:
            value = draw(st.sampled_from(regexes))
            return Matcher(name, op, value, re.compile(value), invert)
        return Matcher(name, op, "" if op == PRESENT else draw(values), None, invert)

    return build()


@st.composite
def blocks(draw, index: int) -> MatchBlock:
    # a few conditions per block, so that requests often satisfy all but the one that decides
    kinds = draw(
        st.sets(st.sampled_from(["uri", "method", "authority", "scheme", "headers", "query"]),
                max_size=3)
    )  # fmt: skip
    ignore_case = draw(st.booleans())
    uri = draw(_matcher("uri", present=False)) if "uri" in kinds else None
    if uri is not None and ignore_case:
        # as the compiler builds it: the value lowercased, a regex compiled with re.I
        uri = Matcher(
            "uri",
            uri.op,
            uri.value.lower(),
            re.compile(uri.value, re.I) if uri.op == REGEX else None,
        )
    headers = []
    if "headers" in kinds:
        names = draw(st.lists(st.sampled_from(HEADER_NAMES), min_size=1, max_size=2, unique=True))
        headers = [
            draw(_matcher(n, invert=draw(st.booleans()), values=HEADER_VALUES,
                          regexes=HEADER_REGEXES))
            for n in names
        ]  # fmt: skip
    query = []
    if "query" in kinds:
        keys = draw(st.lists(st.sampled_from(QUERY_KEYS), min_size=1, max_size=2, unique=True))
        query = [draw(_matcher(k)) for k in keys]
    return MatchBlock(
        name=f"b{index}",
        uri=uri,
        method=draw(_matcher("method", present=False)) if "method" in kinds else None,
        authority=draw(_matcher("authority", present=False)) if "authority" in kinds else None,
        scheme=Matcher("scheme", EXACT, "http", None) if "scheme" in kinds else None,
        headers=tuple(headers),
        query=tuple(query),
        ignore_uri_case=ignore_case,
    )


DEST = Destination("svc", "", 0, 1, HeaderOps(), HeaderOps(), {}, "c")


@st.composite
def tables(draw) -> RouteTable:
    hosts = {}
    for h in HOSTS:
        if not draw(st.booleans()):
            continue
        routes = []
        for r in range(draw(st.integers(0, 4))):
            n = draw(st.integers(0, 3))
            matches = tuple(draw(blocks(i)) for i in range(n))
            routes.append(Route(f"{h}.{r}", "", matches, (DEST,), (1,), 1))
        hosts[h] = VirtualHost(h, h, tuple(routes))
    return RouteTable(version="t", hosts=hosts, clusters={}, services={})


_QUERY_PART = st.sampled_from(["k=a", "k=b", "q=a+b", "q=a%2Cb", "%6B=A", "k", "k=", "q=1", "x=1"])
requests = st.fixed_dictionaries(
    {
        "host": st.sampled_from(HOSTS + ("c",)),
        "path": st.sampled_from(["/", "/a", "/A", "/a/b", "/ab", "/B/", "/1"])
        | st.text(alphabet=PATH_CHARS, max_size=6).map(lambda s: "/" + s),
        "query": st.lists(_QUERY_PART, max_size=3).map("&".join),
        "method": st.sampled_from(["GET", "POST", "get", "a"]) | VALUES,
        "authority": VALUES,
        "scheme": st.sampled_from(["http", "https"]),
        # repeated names are common: the matcher sees them joined with ","
        "headers": st.lists(
            st.tuples(st.sampled_from(HEADER_NAMES), HEADER_VALUES),
            max_size=4,
        ),
    }
)


# -- the reference ------------------------------------------------------------------------------


def _string_match(mt: Matcher, subject: str) -> bool:
    if mt.op == EXACT:
        return subject == mt.value
    if mt.op == PREFIX:
        return subject.startswith(mt.value)
    if mt.op == REGEX:
        return mt.rx.fullmatch(subject) is not None
    return True


def _block_matches(b: MatchBlock, req: dict) -> bool:
    if b.uri is not None:
        subject = req["path"].lower() if b.ignore_uri_case else req["path"]
        if not _string_match(b.uri, subject):
            return False
    for mt, subject in ((b.method, req["method"]), (b.authority, req["authority"]),
                        (b.scheme, req["scheme"])):  # fmt: skip
        if mt is not None and not _string_match(mt, subject):
            return False
    for mt in b.headers:
        values = [v for n, v in req["headers"] if n == mt.name]
        ok = bool(values) and _string_match(mt, ",".join(values))
        if ok == mt.invert:
            return False
    params: dict[str, str] = {}
    for part in filter(None, req["query"].split("&")):
        k, _, v = part.partition("=")
        params.setdefault(unquote_plus(k), unquote_plus(v))
    return all(mt.name in params and _string_match(mt, params[mt.name]) for mt in b.query)


def reference(table: RouteTable, req: dict):
    vh = table.hosts.get(req["host"])
    if vh is None:
        return None
    for route in vh.routes:
        if not route.matches:
            return vh, route, None
        for b in route.matches:
            if _block_matches(b, req):
                return vh, route, b
    return vh, None, None


def _ids(res):
    return None if res is None else tuple(id(x) if x is not None else None for x in res)


def _find(mod, table, req):
    return mod.find(
        table, req["host"], req["path"], req["query"], req["method"], req["authority"],
        req["scheme"], list(req["headers"]),
    )  # fmt: skip


@SETTINGS
@given(table=tables(), reqs=st.lists(requests, min_size=1, max_size=5))
def test_twin_compiled_and_reference_agree(both, table, reqs):
    twin, compiled = both
    for req in reqs:
        want = _ids(reference(table, req))
        assert _ids(_find(twin, table, req)) == want, req
        assert _ids(_find(compiled, table, req)) == want, req


@SETTINGS
@given(
    weights=st.lists(st.integers(0, 50), min_size=2, max_size=5).filter(lambda w: sum(w) > 0),
    r=st.floats(0.0, 1.0, exclude_max=True),
)
def test_weighted_pick_agrees(both, weights, r):
    twin, compiled = both
    dests = tuple(
        Destination("svc", f"s{i}", 0, w, HeaderOps(), HeaderOps(), {}, f"c{i}")
        for i, w in enumerate(weights)
    )
    cum, total = [], 0
    for w in weights:
        total += w
        cum.append(total)
    route = Route("r", "", (), dests, tuple(cum), total)
    picked = twin.pick_destination(route, r)
    assert compiled.pick_destination(route, r) is picked
    # reference: the destination whose cumulative range holds int(r * total)
    point = int(r * total)
    assert picked is next(d for d, c in zip(dests, cum, strict=True) if point < c)
    assert picked.weight > 0


@SETTINGS
@given(block=blocks(0), reqs=st.lists(requests, min_size=1, max_size=8))
def test_one_block_against_many_requests(both, block, reqs):
    """Denser than whole tables: every request meets the block's conditions."""
    twin, compiled = both
    route = Route("r", "", (block,), (DEST,), (1,), 1)
    table = RouteTable(version="t", hosts={"a": VirtualHost("a", "a", (route,))}, clusters={},
                       services={})  # fmt: skip
    for req in reqs:
        req = {**req, "host": "a"}
        want = _ids(reference(table, req))
        assert _ids(_find(twin, table, req)) == want, req
        assert _ids(_find(compiled, table, req)) == want, req
