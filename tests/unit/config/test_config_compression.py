"""``routing.<name>.compression`` (:mod:`speedproxy.config.compression`)."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from speedproxy.config.loader import ConfigError, config_from_mapping, config_to_mapping, parse_config
from speedproxy.config.model import RouteCompressionConfig

BASE = """\
backends:
  default:
    - {id: a, host: 127.0.0.1, port: 9000}
routing:
  r:
    path: /
    upstream: default
"""


def route(extra: str):
    return parse_config(BASE + textwrap.indent(extra, "    "), "f.yaml").routing["r"]


def errors(extra: str) -> str:
    with pytest.raises(ConfigError) as info:
        route(extra)
    return str(info.value)


def test_absent_or_null_is_off() -> None:
    assert route("") .compression is None
    assert route("compression: null\n").compression is None


def test_empty_mapping_is_on_with_defaults() -> None:
    assert route("compression: {}\n").compression == RouteCompressionConfig()
    defaults = RouteCompressionConfig()
    assert defaults.types == ("application/vnd.apple.mpegurl", "application/json", "text/*")
    assert (defaults.min_size, defaults.gzip_level, defaults.brotli, defaults.brotli_level) == (1024, 5, True, 4)
    assert defaults.brotli_stream_level == 2


def test_the_issue_example() -> None:
    settings = route(
        "compression: {types: [application/vnd.apple.mpegurl, application/json, text/*],\n"
        "              min_size: 1KiB, gzip_level: 5, brotli: true}\n"
    ).compression
    assert settings == RouteCompressionConfig(min_size=1024, gzip_level=5, brotli=True)


def test_types_are_lower_cased() -> None:
    assert route("compression: {types: [Application/JSON, TEXT/*]}\n").compression.types == ("application/json", "text/*")


@pytest.mark.parametrize(
    "extra,message",
    [
        ("compression: {types: [text]}\n", "f.yaml:8: routing.r.compression.types[0]: expected a media type"),
        ("compression: {types: []}\n", "f.yaml:8: routing.r.compression.types: list at least one media type"),
        ("compression: {types: text/html}\n", "routing.r.compression.types: expected a list of media types"),
        ("compression: {gzip_level: 0}\n", "routing.r.compression.gzip_level: must be between 1 and 9, got 0"),
        ("compression: {brotli_level: 12}\n", "routing.r.compression.brotli_level: must be between 0 and 11"),
        (
            "compression: {brotli_stream_level: -1}\n",
            "f.yaml:8: routing.r.compression.brotli_stream_level: must be between 0 and 11, got -1",
        ),
        ("compression: {brotli_stream_level: fast}\n", "f.yaml:8: routing.r.compression.brotli_stream_level:"),
        ("compression: {min_size: lots}\n", "routing.r.compression.min_size:"),
        ("compression: {brotli: maybe}\n", "routing.r.compression.brotli:"),
        ("compression: {level: 3}\n", "f.yaml:8: routing.r.compression.level: unknown key 'level'"),
        ("compression: gzip\n", "routing.r.compression: expected a mapping"),
    ],
)
def test_errors_name_file_line_and_key(extra: str, message: str) -> None:
    assert message in errors(extra)


def test_round_trip() -> None:
    config = parse_config(
        BASE + "    compression: {types: [text/*], min_size: 4KiB, gzip_level: 9, brotli: false, brotli_level: 2,"
        " brotli_stream_level: 1}\n"
    )
    data = config_to_mapping(config)
    assert data["routing"]["r"]["compression"] == {
        "types": ["text/*"], "min_size": "4KiB", "gzip_level": 9, "brotli": False, "brotli_level": 2,
        "brotli_stream_level": 1,
    }
    assert config_from_mapping(data) == config
    assert parse_config(yaml.safe_dump(data)) == config
    plain = parse_config(BASE)
    assert "compression" not in config_to_mapping(plain)["routing"]["r"]
