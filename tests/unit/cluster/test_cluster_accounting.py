from __future__ import annotations

import json
from typing import Any, Dict, List

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from speedproxy.cluster.accounting import Accounting, CollectorSink, RedisStreamSink
from speedproxy.config.model import AccountingConfig


class Sink:
    def __init__(self) -> None:
        self.batches: List[Dict[str, Any]] = []
        self.failing = False

    def describe(self) -> str:
        return "test sink"

    def send(self, batch: Dict[str, Any]) -> Deferred:
        if self.failing:
            return fail(RuntimeError("down"))
        self.batches.append(batch)
        return succeed(None)


def _rows(*rows: tuple) -> bytes:
    return json.dumps([{"route": r, "session": s, "url_key": "", "api_key": "", "requests": n, "bytes_in": i,
                        "bytes_out": o} for r, s, n, i, o in rows]).encode()


def test_rows_are_merged_and_flushed_every_interval() -> None:
    clock, sink = Clock(), Sink()
    accounting = Accounting(clock, AccountingConfig(interval=10.0, collector="http://c/"), sink, "edge-1",
                            wall=clock.seconds)
    accounting.start()
    accounting.add_json(_rows(("video", "s1", 2, 10, 100)))
    accounting.add_json(_rows(("video", "s1", 1, 5, 50), ("api", "", 1, 1, 1)))
    clock.advance(9)
    assert sink.batches == []
    clock.advance(1)
    [batch] = sink.batches
    assert batch["node"] == "edge-1" and batch["from"] == 0 and batch["to"] == 10
    assert {(r["route"], r["requests"], r["bytes_in"], r["bytes_out"]) for r in batch["records"]} == {
        ("video", 3, 15, 150), ("api", 1, 1, 1)}
    clock.advance(10)
    assert len(sink.batches) == 1  # nothing new: no empty batch
    assert accounting.sent == 2 and b"speedproxy_accounting_records_total 2" in accounting.metrics_text()


def test_a_failed_flush_keeps_the_rows_within_the_bound() -> None:
    clock, sink = Clock(), Sink()
    accounting = Accounting(clock, AccountingConfig(interval=1.0, collector="http://c/", max_buffer=3), sink, "n",
                            wall=clock.seconds)
    accounting.start()
    sink.failing = True
    accounting.add_json(_rows(("r", "a", 1, 1, 1), ("r", "b", 1, 1, 1)))
    clock.advance(1)
    assert accounting.failures == 1 and len(accounting.rows) == 2
    accounting.add_json(_rows(("r", "a", 1, 1, 1), ("r", "c", 1, 1, 1), ("r", "d", 1, 1, 1)), dropped=4)
    assert accounting.dropped == 5  # d: past the bound; 4: dropped in a worker
    sink.failing = False
    clock.advance(1)
    [batch] = sink.batches
    assert batch["from"] == 0  # the held rows keep their start
    assert {r["session"]: r["requests"] for r in batch["records"]} == {"a": 2, "b": 1, "c": 1}
    assert b"speedproxy_accounting_dropped_total 5" in accounting.metrics_text()


def test_malformed_rows_are_ignored() -> None:
    accounting = Accounting(Clock(), AccountingConfig(collector="http://c/"), Sink(), "n")
    accounting.add_json(b"not json")
    accounting.add_json(b'[{"route": "r"}, 3]')
    assert accounting.rows == {}


def test_the_redis_sink_adds_one_stream_entry_per_batch() -> None:
    calls: List[tuple] = []

    class Link:
        def call(self, *args: Any) -> Deferred:
            calls.append(args)
            return succeed(b"1-0")

    RedisStreamSink(Link(), "acct", maxlen=500).send({"node": "n", "records": []})
    assert calls == [("XADD", "acct", "MAXLEN", "~", 500, "*", "node", "n", "batch", '{"node":"n","records":[]}')]


def test_the_collector_sink_fails_on_a_non_2xx_answer() -> None:
    class Response:
        def __init__(self, code: int) -> None:
            self.code = code

        def content(self) -> Deferred:
            return succeed(b"")

    class Client:
        code = 503
        posted: List[tuple] = []

        def post(self, url: str, json: Any, headers: Any) -> Deferred:
            self.posted.append((url, json))
            return succeed(Response(self.code))

    client = Client()
    sink = CollectorSink(Clock(), "http://c/x", client=client)
    failures: List[Any] = []
    sink.send({"records": []}).addErrback(failures.append)
    assert "503" in failures[0].getErrorMessage()
    client.code = 204
    results: List[Any] = []
    sink.send({"records": [1]}).addCallback(results.append)
    assert results == [204] and client.posted[-1] == ("http://c/x", {"records": [1]})
