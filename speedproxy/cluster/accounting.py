"""Traffic accounting in the master: the workers' counts batched and flushed.

Workers report their rows about every second
(:class:`~speedproxy.cluster.amp.AccountingRows`, see
:mod:`speedproxy.cluster.ledger`); :class:`Accounting` merges them into
one row per ``(route, session, url_key, api_key)`` and, every
``accounting.interval``, sends what it holds as one batch::

    {"node": "edge-1", "from": 1700000000.0, "to": 1700000010.0,
     "records": [{"route": "video", "session": "9f86d081884c7d65", "url_key": "",
                  "api_key": "", "requests": 12, "bytes_in": 2210, "bytes_out": 9123456}]}

to a Redis stream (``XADD <stream> MAXLEN ~ 100000 * node <n> batch <json>``)
or as a JSON ``POST`` to an HTTP collector (a 2xx answer is success).  A
batch that could not be sent stays held and goes with the next flush; the
rows held are bounded by ``accounting.max_buffer``: past it, new rows are
dropped and counted (``speedproxy_accounting_dropped_total``).
"""

from __future__ import annotations

import json
import time
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from speedproxy.config.model import AccountingConfig

log = Logger(namespace="speedproxy.cluster")

Key = Tuple[str, str, str, str]
#: Entries a Redis stream keeps (approximately): older batches are trimmed.
STREAM_MAXLEN = 100000
#: Seconds an HTTP collector has to answer.
COLLECTOR_TIMEOUT = 10.0


class RedisStreamSink:
    """``XADD`` each batch to a stream through a :class:`~speedproxy.cluster.link.RedisLink`."""

    def __init__(self, link: Any, stream: str, maxlen: int = STREAM_MAXLEN) -> None:
        self.link = link
        self.stream = stream
        self.maxlen = maxlen

    def describe(self) -> str:
        return f"redis stream {self.stream}"

    def send(self, batch: Dict[str, Any]) -> Deferred:
        data = json.dumps(batch, separators=(",", ":"))
        return self.link.call("XADD", self.stream, "MAXLEN", "~", self.maxlen, "*", "node", batch["node"], "batch", data)


class CollectorSink:
    """``POST`` each batch as JSON to an HTTP collector (treq)."""

    def __init__(self, reactor: Any, url: str, client: Any = None, timeout: float = COLLECTOR_TIMEOUT) -> None:
        self.reactor = reactor
        self.url = url
        self.timeout = timeout
        self._client = client

    def describe(self) -> str:
        return f"collector {self.url}"

    @property
    def client(self) -> Any:
        if self._client is None:
            from treq.client import HTTPClient
            from twisted.web.client import Agent, HTTPConnectionPool

            pool = HTTPConnectionPool(self.reactor, persistent=True)
            self._client = HTTPClient(Agent(self.reactor, connectTimeout=self.timeout, pool=pool))
        return self._client

    def send(self, batch: Dict[str, Any]) -> Deferred:
        call = maybeDeferred(self.client.post, self.url, json=batch, headers={b"User-Agent": [b"speedproxy-accounting"]})

        def answered(response: Any) -> Deferred:
            def check(_: Any) -> Any:
                if not 200 <= response.code < 300:
                    raise RuntimeError(f"the collector answered {response.code}")
                return response.code

            return response.content().addCallback(check)

        call.addCallback(answered)
        return call.addTimeout(self.timeout, self.reactor)


class Accounting:
    """Rows held by the master, flushed every ``interval`` to ``sink``."""

    def __init__(self, reactor: Any, config: AccountingConfig, sink: Any, node: str, wall: Any = time.time) -> None:
        self.reactor = reactor
        self.config = config
        self.sink = sink
        self.node = node
        self.wall = wall
        self.rows: Dict[Key, List[int]] = {}
        self.since = wall()
        self.sent = 0
        self.dropped = 0
        self.batches = 0
        self.failures = 0
        self._failing = False
        self._flushing: Optional[Deferred] = None
        self._loop = LoopingCall(self.flush)
        self._loop.clock = reactor

    def start(self) -> None:
        self._loop.start(self.config.interval, now=False)

    def stop(self) -> Deferred:
        if self._loop.running:
            self._loop.stop()
        return self.flush()

    def add_json(self, data: bytes, dropped: int = 0) -> None:
        """Rows reported by a worker (``dropped``: rows it could not keep)."""
        self.dropped += max(0, dropped)
        try:
            rows = json.loads(data)
        except ValueError:
            log.warn("ignored malformed accounting rows from a worker")
            return
        for row in rows if isinstance(rows, list) else ():
            try:
                key = (str(row["route"]), str(row["session"]), str(row["url_key"]), str(row["api_key"]))
                values = (int(row["requests"]), int(row["bytes_in"]), int(row["bytes_out"]))
            except (KeyError, TypeError, ValueError):
                continue
            self.add(key, *values)

    def add(self, key: Key, requests: int, bytes_in: int, bytes_out: int) -> None:
        held = self.rows.get(key)
        if held is None:
            if len(self.rows) >= self.config.max_buffer:
                self.dropped += 1
                return
            held = self.rows[key] = [0, 0, 0]
        held[0] += requests
        held[1] += bytes_in
        held[2] += bytes_out

    def flush(self) -> Deferred:
        """Send what is held as one batch; on failure keep it for the next flush."""
        if self._flushing is not None or not self.rows:
            return self._flushing if self._flushing is not None else succeed(None)
        rows, since, now = self.rows, self.since, self.wall()
        self.rows, self.since = {}, now
        batch = {
            "node": self.node,
            "from": round(since, 3),
            "to": round(now, 3),
            "records": [
                {"route": k[0], "session": k[1], "url_key": k[2], "api_key": k[3],
                 "requests": v[0], "bytes_in": v[1], "bytes_out": v[2]}
                for k, v in rows.items()
            ],
        }
        try:
            sending = self.sink.send(batch)
        except Exception as error:
            sending = fail(error)

        def sent(_: Any) -> None:
            self._flushing = None
            self.sent += len(rows)
            self.batches += 1
            if self._failing:
                self._failing = False
                log.info("accounting: {sink} takes batches again", sink=self.sink.describe())

        def failed(failure: Any) -> None:
            self._flushing = None
            self.failures += 1
            if not self._failing:
                self._failing = True
                log.warn("accounting: {sink} failed ({e}); holding up to {n} rows", sink=self.sink.describe(),
                         e=failure.getErrorMessage(), n=self.config.max_buffer)
            # Back in front of what came since, within the bound.
            newer, self.rows, self.since = self.rows, {}, since
            for key, value in list(rows.items()) + list(newer.items()):
                self.add(key, *value)

        self._flushing = sending
        sending.addCallbacks(sent, failed)
        return sending

    def metrics_text(self) -> bytes:
        return (
            "# HELP speedproxy_accounting_records_total Accounting rows sent to the destination.\n"
            "# TYPE speedproxy_accounting_records_total counter\n"
            f"speedproxy_accounting_records_total {self.sent}\n"
            "# HELP speedproxy_accounting_dropped_total Accounting rows dropped: the buffer was full.\n"
            "# TYPE speedproxy_accounting_dropped_total counter\n"
            f"speedproxy_accounting_dropped_total {self.dropped}\n"
            "# HELP speedproxy_accounting_buffered Accounting rows held, waiting to be sent.\n"
            "# TYPE speedproxy_accounting_buffered gauge\n"
            f"speedproxy_accounting_buffered {len(self.rows)}\n"
            "# HELP speedproxy_accounting_failures_total Flushes the destination refused or did not answer.\n"
            "# TYPE speedproxy_accounting_failures_total counter\n"
            f"speedproxy_accounting_failures_total {self.failures}\n"
        ).encode("utf-8")


def start_accounting(master: Any) -> Optional[Accounting]:
    """The master's accounting when ``accounting`` has a destination; ``None`` otherwise."""
    config = master.config
    accounting = config.accounting
    if not accounting.enabled:
        return None
    from speedproxy.cluster.node import node_name

    if accounting.redis_stream:
        fleet = getattr(master, "fleet", None)
        if fleet is None:
            raise RuntimeError("accounting.redis_stream needs cluster.redis")
        sink: Any = RedisStreamSink(fleet.link, accounting.redis_stream)
    else:
        sink = CollectorSink(master.reactor, accounting.collector)
    made = Accounting(master.reactor, accounting, sink, node_name(config))
    made.start()
    log.info("traffic accounting to {sink} every {interval}s", sink=sink.describe(), interval=accounting.interval)
    return made
