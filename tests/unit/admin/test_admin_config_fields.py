"""Config keys added for the admin API: ``admin.max_body_size``, ``server.slow_request_threshold``."""

from __future__ import annotations

import pytest

from speedproxy.config import ConfigError, config_from_mapping, config_to_mapping, parse_config


def test_defaults() -> None:
    config = parse_config("")
    assert config.admin.max_body_size == 1024 * 1024
    assert config.server.slow_request_threshold == 1.0


def test_values_and_round_trip() -> None:
    config = parse_config("admin:\n  max_body_size: 64KiB\nserver:\n  slow_request_threshold: 250ms\n")
    assert config.admin.max_body_size == 64 * 1024
    assert config.server.slow_request_threshold == 0.25
    data = config_to_mapping(config)
    assert data["server"]["slow_request_threshold"] == "250ms"
    assert config_from_mapping(data) == config


@pytest.mark.parametrize(
    "text, problem",
    [
        ("admin:\n  max_body_size: 10\n", "f.yaml:2: admin.max_body_size: must be at least 1KiB"),
        ("admin:\n  max_body_size: lots\n", "f.yaml:2: admin.max_body_size:"),
        ("server:\n  slow_request_threshold: 0s\n", "f.yaml:2: server.slow_request_threshold: must be greater than 0"),
        ("server:\n  slow_request_threshold: soon\n", "f.yaml:2: server.slow_request_threshold:"),
    ],
)
def test_bad_values_name_the_key(text, problem) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "f.yaml")
    assert problem in str(info.value)
