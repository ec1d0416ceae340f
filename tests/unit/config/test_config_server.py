"""Tests for :mod:`speedproxy.config.server`: ``admin.listen`` has one parser, shared by the
loader's check and every listener that binds it."""

from __future__ import annotations

import pytest

from speedproxy.admin import auth
from speedproxy.config import ConfigError, parse_config, units
from speedproxy.master import listeners


def test_the_binders_use_the_loaders_parser() -> None:
    assert listeners.parse_listen is units.parse_listen
    assert auth.parse_listen is units.parse_listen


@pytest.mark.parametrize("listen", ["localhost", "[::1]:9901x", "[nothost]:80", "127.0.0.1:0", ":80"])
def test_a_bad_listen_address_is_refused_with_the_parsers_message(listen: str) -> None:
    with pytest.raises(ValueError) as parsed:
        units.parse_listen(listen)
    with pytest.raises(ConfigError) as loaded:
        parse_config(f'admin:\n  listen: "{listen}"\n', "f.yaml")
    assert loaded.value.problems == [f"f.yaml:2: admin.listen: {parsed.value}"]


@pytest.mark.parametrize("listen, address", [("127.0.0.1:9911", ("127.0.0.1", 9911)), ("[::1]:9901", ("::1", 9901))])
def test_a_listen_address_is_kept_as_written_and_binds_what_the_parser_returns(listen: str, address: tuple) -> None:
    config = parse_config(f'admin:\n  listen: "{listen}"\n', "f.yaml")
    assert config.admin.listen == listen
    assert listeners.parse_listen(config.admin.listen) == address
