"""``meshlet control-plane`` push flags: bad values are refused with a clear message (exit 2)
before anything starts."""

from __future__ import annotations

import pytest

from control_plane.cli.main import main


@pytest.mark.parametrize(("flags", "message"), [
    (["--push-throttle", "0"], "--push-throttle must be at least 1"),
    (["--push-debounce", "1s", "--push-debounce-max", "100ms"],
     "--push-debounce-max must not be shorter than --push-debounce"),
    (["--push-debounce", "fast"], "invalid duration 'fast'"),
])
def test_bad_push_settings_are_refused(tmp_path, capsys, flags, message):
    code = main(["control-plane", "--data-dir", str(tmp_path), "--listen", "127.0.0.1:0",
                 *flags])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "store.db").exists()


def test_env_sets_the_defaults(monkeypatch):
    import argparse

    from control_plane.cli.commands import control_plane

    monkeypatch.setenv("MESHLET_PUSH_DEBOUNCE", "5ms")
    monkeypatch.setenv("MESHLET_PUSH_THROTTLE", "7")
    p = argparse.ArgumentParser()
    control_plane.add_arguments(p)
    args = p.parse_args([])
    assert (args.push_debounce, args.push_throttle) == ("5ms", 7)
