"""The MATCH column of ``meshlet proxy-config routes``: a compiled match block described as the
conditions it checks (it printed the block's index, ``0``, before)."""

from __future__ import annotations

import pytest

from proxy.routes.compile import _Compiler
from proxy.routes.describe import describe_block


def block(spec: dict) -> str:
    compiled = _Compiler([], [], "default", {}, "").match_block(spec, 0)
    assert compiled is not None
    return describe_block(compiled)


@pytest.mark.parametrize(("spec", "text"), [
    ({"headers": {"x-canary": {"exact": "always"}}}, "headers x-canary exact always"),
    ({"uri": {"prefix": "/api"}, "method": {"exact": "GET"}},
     "uri prefix /api and method exact GET"),
    ({"uri": {"regex": "/v[0-9]+"}, "ignoreUriCase": True}, "uri regex /v[0-9]+ (ignore case)"),
    ({"headers": {"X-User": {}}, "withoutHeaders": {"x-debug": {"prefix": "1"}}},
     "headers x-user present and not headers x-debug prefix 1"),
    ({"queryParams": {"v": {"exact": "2"}}, "name": "named"}, "queryParams v exact 2"),
    ({"name": "only-a-name"}, "*"),
])
def test_describe(spec: dict, text: str) -> None:
    assert block(spec) == text
