"""Invariant: any document either loads or raises InvalidConfig, never anything else."""

from __future__ import annotations

import copy

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from control_plane.api.resources import KINDS, InvalidConfig, from_dict, load_path, load_text

EXAMPLES = load_path("configs/examples")

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 70000), st.floats(allow_nan=False),
    st.sampled_from(["", "*", "1s", "x", "v1", "STRICT", "5xx", "(", "/a", "10.0.0.1"]),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(
                [
                    "exact",
                    "host",
                    "name",
                    "x",
                    "port",
                    "number",
                    "labels",
                    "mode",
                    "value",
                    "route",
                    "destination",
                ]
            ),
            inner,
            max_size=3,
        ),
    ),
    max_leaves=8,
)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(EXAMPLES), st.data(), values)
def test_mutated_examples_load_or_raise_invalid_config(example, data, replacement):
    doc = example.to_dict()
    paths = list(_paths(doc["spec"]))
    path = data.draw(st.sampled_from(paths))
    if not path:
        doc["spec"] = replacement
    else:
        target = doc["spec"]
        for p in path[:-1]:
            target = target[p]
        target[path[-1]] = replacement
    try:
        r = from_dict(copy.deepcopy(doc), "f.yaml", 1)
    except InvalidConfig as exc:
        assert exc.errors and all(str(e) for e in exc.errors)
    else:
        assert r.kind in KINDS


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["apiVersion", "kind", "metadata", "spec", "x"]), values, max_size=5
    )
)
def test_arbitrary_documents(doc):
    try:
        from_dict(doc)
    except InvalidConfig:
        pass


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_arbitrary_text(text):
    try:
        load_text(text)
    except InvalidConfig:
        pass


def test_examples_survive_yaml_round_trip():
    for r in EXAMPLES:
        [again] = load_text(yaml.safe_dump(r.to_dict()))
        assert again.spec == r.spec
