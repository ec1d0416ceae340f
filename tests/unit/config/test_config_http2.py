"""``server.h2_max_concurrent_streams``: HTTP/2 streams a client may have open at once."""

from __future__ import annotations

import pytest

from speedproxy.config import ConfigError, config_from_mapping, config_to_mapping, parse_config


def test_default_and_set() -> None:
    assert parse_config("").server.h2_max_concurrent_streams == 128
    assert parse_config("server: {h2_max_concurrent_streams: 16}\n").server.h2_max_concurrent_streams == 16


@pytest.mark.parametrize(
    "value, message",
    [
        ("0", "must be between 1 and 65536, got 0"),
        ("100000", "must be between 1 and 65536, got 100000"),
        ("many", 'expected an integer, got "many"'),
        ("true", "expected an integer"),
    ],
)
def test_bad_values_name_file_line_and_key(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(f"server:\n  workers: 1\n  h2_max_concurrent_streams: {value}\n", "h2.yaml")
    text = str(error.value)
    assert "h2.yaml:3: server.h2_max_concurrent_streams: " in text and message in text


def test_round_trips() -> None:
    config = parse_config("server: {h2_max_concurrent_streams: 7}\n")
    assert config_from_mapping(config_to_mapping(config)).server.h2_max_concurrent_streams == 7
