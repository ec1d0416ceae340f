"""The ``upstreams`` section (:mod:`speedproxy.config.upstream_rules`)."""

from __future__ import annotations

import pytest
import yaml

from speedproxy.config.loader import ConfigError, config_from_mapping, config_to_mapping, parse_config
from speedproxy.config.model import UpstreamRulesConfig

BASE = """\
backends:
  tmdb:
    - {id: a, host: 127.0.0.1, port: 9000}
routing:
  r: {path: /, upstream: tmdb}
"""


def errors(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + text, "f.yaml")
    return str(info.value)


def test_values_are_resolved_and_their_sources_kept(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TMDB_API_KEY", "k-123")
    token = tmp_path / "token"
    token.write_text("Bearer from-file\n")
    config = parse_config(
        BASE + "upstreams:\n  tmdb:\n"
        '    add_query: {api_key: "${env:TMDB_API_KEY}", language: en}\n'
        f'    set_headers: {{Authorization: "${{file:{token}}}"}}\n'
        "    expect_content_type: [image/*, Application/Octet-Stream]\n"
    )
    rules = config.upstreams["tmdb"]
    assert rules.add_query == (("api_key", "k-123"), ("language", "en"))
    assert rules.add_query_sources == (("api_key", "${env:TMDB_API_KEY}"), ("language", "en"))
    assert rules.set_headers == (("Authorization", "Bearer from-file"),)
    assert rules.set_headers_sources == (("Authorization", f"${{file:{token}}}"),)
    assert rules.expect_content_type == ("image/*", "application/octet-stream")
    assert "k-123" not in repr(rules) and "from-file" not in repr(config)


def test_absent_section_is_empty() -> None:
    assert parse_config(BASE).upstreams == {}
    assert parse_config(BASE + "upstreams:\n  tmdb: null\n").upstreams == {}


@pytest.mark.parametrize(
    "text,message",
    [
        ("upstreams:\n  nope: {}\n", "f.yaml:7: upstreams.nope: no upstream 'nope' in backends (known: tmdb)"),
        ("upstreams:\n  tmdb: {add_query: {api_key: \"${env:SPEEDPROXY_TEST_UNSET}\"}}\n",
         "f.yaml:7: upstreams.tmdb.add_query.api_key: ${env:SPEEDPROXY_TEST_UNSET}: the environment variable"),
        ("upstreams:\n  tmdb: {add_query: {api_key: \"${file:relative}\"}}\n", "the path must be absolute"),
        ("upstreams:\n  tmdb: {add_query: {\"a b\": x}}\n", "expected a query parameter name"),
        ("upstreams:\n  tmdb: {set_headers: {Host: x}}\n", "upstreams.tmdb.set_headers.Host: the proxy sets Host itself"),
        ("upstreams:\n  tmdb: {set_headers: {X-Forwarded-For: x}}\n", "the proxy sets X-Forwarded-For itself"),
        ("upstreams:\n  tmdb: {set_headers: {\"bad name\": x}}\n", "expected an HTTP header name"),
        ("upstreams:\n  tmdb: {set_headers: [x]}\n", "upstreams.tmdb.set_headers: expected a mapping of header names"),
        ("upstreams:\n  tmdb: {expect_content_type: [image]}\n", "upstreams.tmdb.expect_content_type[0]: expected a media type"),
        ("upstreams:\n  tmdb: {api_key: x}\n", "f.yaml:7: upstreams.tmdb.api_key: unknown key 'api_key'"),
        ("upstreams: [tmdb]\n", "f.yaml:6: upstreams: expected a mapping of upstream names"),
    ],
)
def test_errors_name_file_line_and_key(text: str, message: str) -> None:
    assert message in errors(text)


def test_a_header_value_with_a_line_break_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("SPEEDPROXY_TEST_CRLF", "a\r\nX-Injected: 1")
    assert "upstreams.tmdb.set_headers.X-Key: the value holds a control character" in errors(
        'upstreams:\n  tmdb: {set_headers: {X-Key: "${env:SPEEDPROXY_TEST_CRLF}"}}\n'
    )


def test_round_trip_writes_references_back_as_references(monkeypatch) -> None:
    monkeypatch.setenv("TMDB_API_KEY", "k-123")
    config = parse_config(
        BASE + 'upstreams:\n  tmdb: {add_query: {api_key: "${env:TMDB_API_KEY}"}, set_headers: {X-A: b}, '
        "expect_content_type: [image/*]}\n"
    )
    data = config_to_mapping(config)
    assert data["upstreams"] == {
        "tmdb": {"add_query": {"api_key": "${env:TMDB_API_KEY}"}, "set_headers": {"X-A": "b"}, "expect_content_type": ["image/*"]}
    }
    assert "k-123" not in yaml.safe_dump(data)
    assert config_from_mapping(data) == config
    assert "upstreams" not in config_to_mapping(parse_config(BASE))
    assert UpstreamRulesConfig() == UpstreamRulesConfig()
