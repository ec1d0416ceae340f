"""Upstream credentials in the admin API (:mod:`speedproxy.admin.upstream_masks`)."""

from __future__ import annotations

import json

import pytest

from speedproxy.admin.changes import MASK, config_from_body, masked_mapping
from speedproxy.admin.json_resource import APIError
from speedproxy.config import parse_config

BASE = """\
backends:
  tmdb:
    - {id: a, host: 10.0.0.1, port: 80}
upstreams:
  tmdb:
    add_query: {api_key: "${env:SPEEDPROXY_TEST_TMDB_KEY}", language: written-in-secret}
    set_headers: {Authorization: "Bearer written-in-token"}
    expect_content_type: [image/*]
routing:
  default: {path: /, upstream: tmdb}
"""


@pytest.fixture
def config(monkeypatch):
    monkeypatch.setenv("SPEEDPROXY_TEST_TMDB_KEY", "resolved-key-value")
    return parse_config(BASE)


def test_shown_masked_or_as_the_reference(config) -> None:
    shown = masked_mapping(config)
    assert shown["upstreams"]["tmdb"] == {
        "add_query": {"api_key": "${env:SPEEDPROXY_TEST_TMDB_KEY}", "language": MASK},
        "set_headers": {"Authorization": MASK},
        "expect_content_type": ["image/*"],
    }
    text = json.dumps(shown)
    for secret in ("resolved-key-value", "written-in-secret", "written-in-token"):
        assert secret not in text


def test_the_mask_sent_back_keeps_the_value(config) -> None:
    body = masked_mapping(config)
    body["upstreams"]["tmdb"]["set_headers"]["X-Extra"] = "new"
    updated = config_from_body(body, config)
    rules = updated.upstreams["tmdb"]
    assert dict(rules.set_headers) == {"Authorization": "Bearer written-in-token", "X-Extra": "new"}
    assert dict(rules.add_query) == {"api_key": "resolved-key-value", "language": "written-in-secret"}


def test_a_mask_standing_for_nothing_is_a_bad_request(config) -> None:
    body = masked_mapping(config)
    body["upstreams"]["tmdb"]["add_query"]["page"] = MASK
    with pytest.raises(APIError) as info:
        config_from_body(body, config)
    assert info.value.status == 400
    assert info.value.field == "upstreams.tmdb.add_query.page"
