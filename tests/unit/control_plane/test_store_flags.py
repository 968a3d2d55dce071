"""`meshlet control-plane` store flags: etcd endpoints, TLS and auth options are checked before
anything starts, and each mistake is named."""

from __future__ import annotations

import argparse

import pytest

from control_plane.cli.commands import control_plane as cmd


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    return p.parse_args(list(argv))


def test_sqlite_is_the_default_and_refuses_etcd_flags(monkeypatch, tmp_path):
    monkeypatch.delenv("MESHLET_STORE", raising=False)
    assert cmd.etcd_options(parse()) is None
    with pytest.raises(ValueError, match="--etcd-user needs --store etcd://"):
        cmd.etcd_options(parse("--etcd-user", "u"))


def test_etcd_options(monkeypatch, tmp_path):
    monkeypatch.delenv("MESHLET_ETCD_PASSWORD", raising=False)
    (tmp_path / "ca.pem").write_text("x")
    (tmp_path / "pw").write_text("s3cret\n")
    o = cmd.etcd_options(parse("--store", "etcd://a:2379,b:2379", "--etcd-cacert",
                               str(tmp_path / "ca.pem"), "--etcd-user", "meshlet",
                               "--etcd-password-file", str(tmp_path / "pw"), "--etcd-prefix",
                               "/mesh", "--lease-ttl", "5s", "--etcd-timeout", "2s"))
    assert o.endpoints == ["https://a:2379", "https://b:2379"]  # a CA file means TLS
    assert (o.user, o.password, o.prefix, o.lease_ttl, o.timeout) == \
        ("meshlet", "s3cret", "/mesh/", 5, 2.0)
    monkeypatch.setenv("MESHLET_STORE", "etcd://c:2379")
    assert cmd.etcd_options(parse()).endpoints == ["http://c:2379"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--store", "etcd://a"], "is not HOST:PORT"),
    (["--store", "mysql://a:1"], "expected etcd://"),
    (["--store", "etcd://a:1", "--etcd-cert", "c.pem"], "go together"),
    (["--store", "etcd://a:1", "--etcd-cacert", "/nonexistent.pem"], "no such file"),
    (["--store", "etcd://a:1", "--lease-ttl", "1s"], "at least 2s"),
    (["--store", "etcd://a:1", "--etcd-password-file", "/nonexistent"], "--etcd-password-file"),
])
def test_bad_etcd_flags_are_named(argv, message, monkeypatch):
    monkeypatch.delenv("MESHLET_ETCD_PASSWORD", raising=False)
    with pytest.raises(ValueError, match=message):
        cmd.etcd_options(parse(*argv))


def test_password_without_user(monkeypatch):
    monkeypatch.setenv("MESHLET_ETCD_PASSWORD", "x")
    with pytest.raises(ValueError, match="needs --etcd-user"):
        cmd.etcd_options(parse("--store", "etcd://a:1"))


def test_admin_token_file_is_checked_before_starting(tmp_path, capsys):
    from control_plane.cli.main import main

    base = ["control-plane", "--data-dir", str(tmp_path / "d"), "--listen", "127.0.0.1:0"]
    assert main([*base, "--admin-token-file", str(tmp_path / "missing")]) == 2
    assert "--admin-token-file" in capsys.readouterr().err
    (tmp_path / "empty").write_text("\n")
    assert main([*base, "--admin-token-file", str(tmp_path / "empty")]) == 2
    assert "is empty" in capsys.readouterr().err
