"""Tests for :mod:`speedproxy.admin.auth`."""

from __future__ import annotations

import pytest

from speedproxy.admin.auth import (
    AdminSecurityError,
    KeyChecker,
    is_loopback,
    refuse_insecure_admin,
    resolve_api_key,
    security_problem,
)
from speedproxy.config import Config
from speedproxy.config.model import AdminConfig


def test_key_sources_in_order(tmp_path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("from-file\nsecond line\n")
    env = {"SPEEDPROXY_API_KEY": " from-env "}
    assert resolve_api_key(AdminConfig(api_key="inline", api_key_file=str(key_file)), env) == "inline"
    assert resolve_api_key(AdminConfig(api_key_file=str(key_file)), env) == "from-file"
    assert resolve_api_key(AdminConfig(), env) == "from-env"
    assert resolve_api_key(AdminConfig(), {}) == ""
    empty = tmp_path / "empty"
    empty.write_text("")
    assert resolve_api_key(AdminConfig(api_key_file=str(empty)), env) == "from-env"


def test_unreadable_key_file_keeps_the_api_closed(tmp_path) -> None:
    key = resolve_api_key(AdminConfig(api_key_file=str(tmp_path / "missing")), {})
    assert key
    assert KeyChecker({}).check(AdminConfig(api_key_file=str(tmp_path / "missing")), b"") == "missing_key"


@pytest.mark.parametrize(
    "listen, loopback",
    [
        ("127.0.0.1:9901", True),
        ("127.5.5.5:1", True),
        ("[::1]:9901", True),
        ("localhost:9901", True),
        ("0.0.0.0:9901", False),
        ("[::]:9901", False),
        ("10.0.0.1:9901", False),
        ("admin.example.com:9901", False),
    ],
)
def test_is_loopback(listen, loopback) -> None:
    assert is_loopback(listen) is loopback


def test_security_problem_and_refusal() -> None:
    assert security_problem(AdminConfig(listen="0.0.0.0:1"), {}) is not None
    assert security_problem(AdminConfig(listen="0.0.0.0:1", api_key="k"), {}) is None
    assert security_problem(AdminConfig(listen="0.0.0.0:1"), {"SPEEDPROXY_API_KEY": "k"}) is None
    assert security_problem(AdminConfig(listen="127.0.0.1:1"), {}) is None
    with pytest.raises(AdminSecurityError) as info:
        refuse_insecure_admin(Config(admin=AdminConfig(listen="0.0.0.0:1")), {})
    assert "not a loopback address" in str(info.value)
    assert isinstance(info.value, SystemExit)
    refuse_insecure_admin(Config(), {})


def test_checker() -> None:
    checker = KeyChecker({})
    open_admin = AdminConfig()
    assert checker.check(open_admin, None) is None
    keyed = AdminConfig(api_key="sekrit")
    assert checker.check(keyed, None) == "missing_key"
    assert checker.check(keyed, b"") == "missing_key"
    assert checker.check(keyed, b"sekrit") is None
    assert checker.check(keyed, b"sekri") == "wrong_key"
    assert checker.check(keyed, b"sekrit\x00") == "wrong_key"


def test_checker_rereads_a_changed_key_file(tmp_path) -> None:
    import os

    key_file = tmp_path / "key"
    key_file.write_text("one")
    admin = AdminConfig(api_key_file=str(key_file))
    checker = KeyChecker({})
    assert checker.check(admin, b"one") is None
    key_file.write_text("two")
    os.utime(key_file, (5, 5))
    assert checker.check(admin, b"one") == "wrong_key"
    assert checker.check(admin, b"two") is None
