from __future__ import annotations

import json
from typing import Any, Callable, List

from twisted.internet.defer import Deferred, succeed

from speedproxy.cluster.purge_bus import FleetCacheFanout, PurgeBus


class Link:
    """Two buses on one Link hear each other's messages, as on one Redis channel."""

    def __init__(self) -> None:
        self.handlers: List[Callable[[bytes], None]] = []
        self.published: List[bytes] = []

    def subscribe(self, channel: str, handler: Callable[[bytes], None]) -> None:
        self.handlers.append(handler)

    def publish(self, channel: str, message: bytes) -> Deferred:
        self.published.append(message)
        for handler in list(self.handlers):
            handler(message)
        return succeed(len(self.handlers))


class Fanout:
    def __init__(self) -> None:
        self.calls: List[tuple] = []

    def each(self, action: str, **arguments: Any) -> Deferred:
        self.calls.append((action, arguments))
        if arguments.get("url") == "bad":
            return succeed([{"slot": 0, "pid": 1, "error": "bad", "refused": True}])
        return succeed([{"slot": 0, "pid": 1, "result": 1}])

    def slots(self) -> List[int]:
        return [0]


def _nodes() -> Any:
    link = Link()
    local_a, local_b = Fanout(), Fanout()
    bus_a = PurgeBus(link, "p:", "a", "ia", local_a)
    bus_b = PurgeBus(link, "p:", "b", "ib", local_b)
    return link, FleetCacheFanout(local_a, bus_a), local_a, FleetCacheFanout(local_b, bus_b), local_b


def test_a_purge_runs_here_then_on_the_other_node_once() -> None:
    link, fleet_a, local_a, fleet_b, local_b = _nodes()
    fleet_a.each("purge", url="http://site/x")
    assert local_a.calls == [("purge", {"url": "http://site/x"})]
    assert local_b.calls == [("purge", {"url": "http://site/x"})]
    assert len(link.published) == 1  # b ran it on its own fan-out: not published again
    fleet_b.each("clear", tier="all")
    assert local_a.calls[-1] == ("clear", {"tier": "all"}) and len(link.published) == 2


def test_reads_and_refused_purges_stay_here() -> None:
    link, fleet_a, local_a, _, local_b = _nodes()
    fleet_a.each("keys", prefix="", limit=10)
    fleet_a.each("purge", url="bad")
    assert link.published == [] and local_b.calls == []
    assert fleet_a.slots() == [0]  # the rest of the fan-out is the local one's


def test_a_message_heard_twice_or_malformed_is_ignored() -> None:
    link, _, _, _, local_b = _nodes()
    bus_b = PurgeBus(link, "p:", "b2", "ib2", local_b)
    message = json.dumps({"id": "m1", "node": "z", "instance": "iz", "action": "purge",
                          "arguments": {"prefix": "http://s/", "evil": 1}}).encode()
    bus_b.heard(message)
    bus_b.heard(message)
    bus_b.heard(b"{not json")
    bus_b.heard(json.dumps({"id": "m2", "instance": "iz", "action": "shutdown", "arguments": {}}).encode())
    assert local_b.calls == [("purge", {"prefix": "http://s/"})]
