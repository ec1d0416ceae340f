"""``speedproxy_compression_total{route,event}`` (:mod:`speedproxy.edge.compression_metrics`)."""

from __future__ import annotations


from speedproxy.edge.compression_metrics import compression_counts, compression_metrics
from speedproxy.stats.reader import StatsReader
from speedproxy.testing import InMemoryProxy

CONFIG = """\
backends:
  default:
    - {id: b1, host: 10.1.0.1, port: 8081}
routing:
  zipped: {path: /z/, upstream: default, load_balancer: round_robin, compression: {min_size: 0}}
  plain: {path: /, upstream: default, load_balancer: round_robin}
"""

BODY = b'{"a": 1}' * 100


def test_events_are_counted_per_route_and_exported() -> None:
    proxy = InMemoryProxy(CONFIG)
    for _ in range(3):
        client = proxy.client()
        client.send(b"GET /z/a.json HTTP/1.1\r\nHost: h\r\nAccept-Encoding: gzip\r\n\r\n")
        if proxy.pending_connects():
            backend = proxy.accept()
        backend.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY)
        assert client.response().header(b"Content-Encoding") == b"gzip"
    reader = StatsReader(proxy.core.shared.segment)
    total = reader.totals()
    index = proxy.core.stats_index
    assert compression_counts(reader, proxy.config, index, total) == {
        "zipped": {"stream": 3, "copy_made": 0, "copy_hit": 0}
    }
    (family,) = list(compression_metrics(reader, proxy.config, index, total))
    samples = {(s.labels["route"], s.labels["event"]): s.value for s in family.samples if s.name.endswith("_total")}
    assert samples == {("zipped", "stream"): 3, ("zipped", "copy_made"): 0, ("zipped", "copy_hit"): 0}


def test_no_family_without_a_compressing_route() -> None:
    proxy = InMemoryProxy(CONFIG.replace(", compression: {min_size: 0}", ""))
    reader = StatsReader(proxy.core.shared.segment)
    assert list(compression_metrics(reader, proxy.config, proxy.core.stats_index, reader.totals())) == []
