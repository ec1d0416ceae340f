"""Tests for :mod:`speedproxy.edge.connection_limit`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

from speedproxy.config.model import ConnectionLimitConfig
from speedproxy.edge.connection_limit import ConnectionLimitFilter
from speedproxy.edge.host_counts import HostConnectionCounts
from speedproxy.edge.host_table import EdgeTable

from edge_limits_support import filter_request


def test_in_flight_requests_are_limited_and_released(tmp_path: Path) -> None:
    path = str(tmp_path / "edge")
    counted: List[str] = []
    config = ConnectionLimitConfig(per_client=2)
    one = ConnectionLimitFilter("video", config, HostConnectionCounts(EdgeTable(path), 0), counted.append)
    two = ConnectionLimitFilter("video", config, HostConnectionCounts(EdgeTable(path), 1), counted.append)
    first, second = filter_request(), filter_request()
    assert one.request(first) is None and two.request(second) is None
    refused = filter_request()
    answer = one.request(refused)
    assert answer.status == 503 and json.loads(answer.body)["error"] == "too_many_connections"
    assert counted == ["connection_limit"]
    one.finished(refused, False)  # a refused request was never counted: nothing to release
    assert two.request(filter_request(client_ip="192.0.2.99")) is None  # another client
    two.finished(second, True)
    third = filter_request()
    assert two.request(third) is None
    one.finished(first, True)
    one.finished(first, True)  # twice: released once
    assert one.counts.in_flight(b"cl\x00video\x00192.0.2.7") == 1


def test_status_429_may_be_chosen() -> None:
    limit = ConnectionLimitFilter("v", ConnectionLimitConfig(per_client=1, status=429), HostConnectionCounts(EdgeTable(None), 0))
    assert limit.request(filter_request()) is None
    assert limit.request(filter_request()).status == 429


def test_routes_count_apart() -> None:
    counts = HostConnectionCounts(EdgeTable(None), 0)
    config = ConnectionLimitConfig(per_client=1)
    assert ConnectionLimitFilter("a", config, counts).request(filter_request()) is None
    assert ConnectionLimitFilter("b", config, counts).request(filter_request()) is None
