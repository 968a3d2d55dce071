"""The compiled parser must be present unless the twin-only build was asked for."""

from __future__ import annotations

from proxy import _accel
from tests.unit.http1.conftest import NO_EXTENSIONS


def test_compiled_build_is_present():
    mod = _accel.load_compiled("proxy.http1", "parser")
    if NO_EXTENSIONS:
        return
    assert mod is not None, (
        "proxy.http1._parser_c is not compiled: python setup.py build_ext --inplace"
    )
    assert not mod.__file__.endswith(".py")


def test_facade_reexports_the_chosen_build():
    from proxy.http1 import parser

    impl = _accel.IMPLEMENTATION["proxy.http1.parser"]
    assert impl == parser.IMPLEMENTATION
    expected = "python" if NO_EXTENSIONS else "cython"
    assert impl == expected
    for name in parser.__all__:
        assert hasattr(parser, name), name
    assert parser.ProtocolError(400, "x").status == 400
