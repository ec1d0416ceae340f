"""Credentials added to requests sent to an upstream (:mod:`speedproxy.edge.upstream_credentials`)."""

from __future__ import annotations

from speedproxy.config.model import UpstreamRulesConfig
from speedproxy.edge.upstream_credentials import UpstreamRules, rules_for
from speedproxy.testing import InMemoryProxy

CONFIG = """\
backends:
  tmdb:
    - {id: b1, host: 10.1.0.1, port: 8081}
  other:
    - {id: b2, host: 10.1.0.2, port: 8081}
upstreams:
  tmdb:
    add_query: {api_key: "k&=1 2"}
    set_headers: {Authorization: "Bearer secret-token", X-Tenant: acme}
routing:
  tmdb: {path: /3/, upstream: tmdb, load_balancer: round_robin}
  other: {path: /, upstream: other, load_balancer: round_robin}
"""


def rules(**kw) -> UpstreamRules:
    made = rules_for(UpstreamRulesConfig(**kw))
    assert made is not None
    return made


def test_no_keys_no_rules() -> None:
    assert rules_for(None) is None
    assert rules_for(UpstreamRulesConfig()) is None


def test_query_is_added_replacing_the_clients_and_percent_encoded() -> None:
    made = rules(add_query=(("api_key", "k&=1 2"), ("lang", "fr")))
    assert made.target(b"/3/movie/1") == b"/3/movie/1?api_key=k%26%3D1%202&lang=fr"
    assert made.target(b"/3/movie/1?") == b"/3/movie/1?api_key=k%26%3D1%202&lang=fr"
    assert made.target(b"/m?page=2&api_key=mine&api_key=again&lang") == b"/m?page=2&api_key=k%26%3D1%202&lang=fr"


def test_headers_replace_the_clients_and_the_request_lists_are_untouched() -> None:
    made = rules(set_headers=(("Authorization", "Bearer t"),))
    headers = [(b"Host", b"h"), (b"authorization", b"mine"), (b"Accept", b"*/*")]
    lowered = [b"host", b"authorization", b"accept"]
    target, out, out_lowered = made.outgoing(b"/x", headers, lowered)
    assert target == b"/x"
    assert out == [(b"Host", b"h"), (b"Accept", b"*/*"), (b"Authorization", b"Bearer t")]
    assert out_lowered == [b"host", b"accept", b"authorization"]
    assert headers[1] == (b"authorization", b"mine") and len(lowered) == 3


def test_every_request_to_the_upstream_carries_them_and_only_there() -> None:
    proxy = InMemoryProxy(CONFIG)
    assert proxy.core.groups["tmdb"].rules is not None
    assert proxy.core.groups["other"].rules is None
    client = proxy.client()
    client.send(b"GET /3/movie/550?language=en&api_key=client HTTP/1.1\r\nHost: h\r\nAuthorization: Basic x\r\n\r\n")
    backend = proxy.accept()
    line, headers = backend.request_head()
    assert line == b"GET /3/movie/550?language=en&api_key=k%26%3D1%202 HTTP/1.1"
    fields = dict(headers)
    assert fields[b"Authorization"] == b"Bearer secret-token"
    assert fields[b"X-Tenant"] == b"acme"
    assert [name for name, _ in headers].count(b"Authorization") == 1
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert client.response().body == b"ok"
    other = proxy.client()
    other.send(b"GET /x?a=1 HTTP/1.1\r\nHost: h\r\n\r\n")
    line, headers = proxy.accept().request_head()
    assert line == b"GET /x?a=1 HTTP/1.1"
    assert b"Authorization" not in dict(headers)


def test_a_retry_carries_them_too() -> None:
    proxy = InMemoryProxy(CONFIG.replace("    - {id: b1, host: 10.1.0.1, port: 8081}\n",
                                         "    - {id: b1, host: 10.1.0.1, port: 8081}\n    - {id: b3, host: 10.1.0.3, port: 8081}\n"))
    client = proxy.client()
    client.send(b"GET /3/a HTTP/1.1\r\nHost: h\r\n\r\n")
    proxy.refuse()
    line, headers = proxy.accept().request_head()
    assert line == b"GET /3/a?api_key=k%26%3D1%202 HTTP/1.1"
    assert dict(headers)[b"Authorization"] == b"Bearer secret-token"
