"""W3C Trace Context on the data path: parsing, new ids, forwarding, the access log.

None of this needs the OpenTelemetry SDK (the ``otel`` extra).
"""

from __future__ import annotations

import json
import os
import re
import string
from typing import Dict, List, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from speedproxy.accesslog import AccessLogFormatter, JsonAccessLogFormatter
from speedproxy.proxy.forwarding import upstream_request_head
from speedproxy.proxy.http1 import parse_request_head
from speedproxy.testing import InMemoryProxy
from speedproxy.tracing.context import TraceIds, is_sampled, traceparent, valid_traceparent

TRACE = b"4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = b"00f067aa0ba902b7"
VALID = b"00-" + TRACE + b"-" + PARENT + b"-01"
FORWARDED = re.compile(rb"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})\Z")



def hex_string(size: int) -> st.SearchStrategy[bytes]:
    return st.text(alphabet="0123456789abcdef", min_size=size, max_size=size).map(str.encode)


# -- validation ------------------------------------------------------------------------


def test_the_spec_example_is_valid() -> None:
    assert valid_traceparent(VALID)
    assert valid_traceparent(b"00-" + TRACE + b"-" + PARENT + b"-00")


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        VALID[:-1],  # too short
        VALID + b"0",  # version 00 is exactly 55 characters
        VALID + b"-extra",  # ...even with a dash after it
        VALID.upper(),  # upper-case hex
        b"00-" + TRACE.upper() + b"-" + PARENT + b"-01",
        b"00-" + b"0" * 32 + b"-" + PARENT + b"-01",  # all-zero trace id
        b"00-" + TRACE + b"-" + b"0" * 16 + b"-01",  # all-zero parent id
        b"ff-" + TRACE + b"-" + PARENT + b"-01",  # version ff is invalid
        b"0g-" + TRACE + b"-" + PARENT + b"-01",
        b"00_" + TRACE + b"-" + PARENT + b"-01",
        b"00-" + TRACE + b"_" + PARENT + b"-01",
        b"00-" + TRACE + b"-" + PARENT + b"_01",
        b"00-" + TRACE + b"-" + PARENT + b"-0x",
        b"00-" + TRACE[:-1] + b"--" + PARENT + b"-01",
        b" 00-" + TRACE + b"-" + PARENT + b"-0",
        b"00-" + TRACE + b"-" + PARENT[:-1] + b"z-01",
    ],
)
def test_invalid_values(value: Optional[bytes]) -> None:
    assert not valid_traceparent(value)


def test_a_higher_version_is_read_by_its_first_55_characters() -> None:
    assert valid_traceparent(b"01-" + TRACE + b"-" + PARENT + b"-01")
    assert valid_traceparent(b"cc-" + TRACE + b"-" + PARENT + b"-01-what-the-future-adds")
    assert not valid_traceparent(b"cc-" + TRACE + b"-" + PARENT + b"-01what")
    assert not valid_traceparent(b"ff-" + TRACE + b"-" + PARENT + b"-01-x")


def _reference(value: bytes) -> bool:
    """The spec's grammar, written plainly (a version other than 00 and ff is
    read as 00 when it has 55 characters)."""
    match = re.fullmatch(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})", value)
    if match is None:
        return False
    version, trace, parent, _ = match.groups()
    return version != b"ff" and trace != b"0" * 32 and parent != b"0" * 16


@settings(max_examples=300)
@given(trace=hex_string(32), parent=hex_string(16), flags=hex_string(2))
def test_every_well_formed_value_is_valid(trace: bytes, parent: bytes, flags: bytes) -> None:
    value = b"00-" + trace + b"-" + parent + b"-" + flags
    assert valid_traceparent(value) == _reference(value)


@settings(max_examples=500)
@given(
    position=st.integers(0, 54),
    byte=st.sampled_from(sorted(set(string.printable.encode()) | {0, 0x7F, 0x80, 0xFF})),
)
def test_one_changed_byte_agrees_with_the_grammar(position: int, byte: int) -> None:
    value = bytearray(VALID)
    value[position] = byte
    assert valid_traceparent(bytes(value)) == _reference(bytes(value))


@settings(max_examples=300)
@given(value=st.binary(min_size=0, max_size=70))
def test_arbitrary_bytes_never_pass_unless_grammatical(value: bytes) -> None:
    if len(value) == 55:
        assert valid_traceparent(value) == _reference(value)
    elif valid_traceparent(value):  # a future version: its first 55 characters
        assert value[:2] not in (b"00", b"ff") and value[55:56] == b"-"
        assert _reference(b"00" + value[2:55])


# -- new ids -------------------------------------------------------------------------------


class Request:
    def __init__(self, value: Optional[bytes] = None) -> None:
        self.traceparent = value


def test_new_traces_have_well_formed_distinct_ids() -> None:
    ids = TraceIds(batch=16)  # several refills
    seen_traces, seen_spans = set(), set()
    for _ in range(100):
        trace_id, span_id, flags = ids.new_trace()
        assert FORWARDED.match(traceparent(trace_id, span_id, flags))
        assert valid_traceparent(traceparent(trace_id, span_id, flags))
        assert flags == b"01"  # sampled by default
        seen_traces.add(trace_id)
        seen_spans.add(span_id)
    assert len(seen_traces) == 100 and len(seen_spans) == 100


def test_a_valid_parent_keeps_its_trace_and_flags_and_gets_a_new_span() -> None:
    ids = TraceIds()
    for flags in (b"01", b"00", b"03"):
        request = Request(b"00-" + TRACE + b"-" + PARENT + b"-" + flags)
        trace_id, span_id, trace_flags = ids.start(request)
        assert (trace_id, trace_flags) == (TRACE, flags)
        assert len(span_id) == 16 and span_id != PARENT
        assert request.traceparent is not None  # kept: its tracestate goes on


@pytest.mark.parametrize("value", [b"", b"garbage", VALID.upper(), b"00-" + b"0" * 32 + b"-" + PARENT + b"-01"])
def test_an_invalid_parent_starts_a_new_trace_and_is_forgotten(value: bytes) -> None:
    request = Request(value)
    context = TraceIds().start(request)
    assert request.traceparent is None
    assert context[0] != TRACE and valid_traceparent(traceparent(*context))


def test_sample_ratio_decides_new_traces_as_opentelemetry_does() -> None:
    assert {TraceIds(0.0).new_trace()[2] for _ in range(50)} == {b"00"}
    assert {TraceIds(1.0).new_trace()[2] for _ in range(50)} == {b"01"}
    ids = TraceIds(0.25)
    bound = round(0.25 * 2**64)
    flags = []
    for _ in range(2000):
        trace_id, _, flag = ids.new_trace()
        # TraceIdRatioBased: the low 64 bits of the trace id under the bound.
        assert (flag == b"01") == ((int(trace_id, 16) & (2**64 - 1)) < bound)
        flags.append(flag)
    assert 0.18 < flags.count(b"01") / len(flags) < 0.32
    # A client's trace keeps its own decision, whatever the ratio.
    assert TraceIds(0.0).start(Request(VALID))[2] == b"01"


def test_is_sampled() -> None:
    assert is_sampled(b"01") and is_sampled(b"03") and is_sampled(b"ff")
    assert not is_sampled(b"00") and not is_sampled(b"02") and not is_sampled(b"fe")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_reuse_its_parents_ids() -> None:
    ids = TraceIds()
    ids.new_trace()  # fills the batch
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        os.write(write, b"".join(ids.new_trace()[:2]))
        os._exit(0)
    os.close(write)
    child = os.read(read, 100)
    os.close(read)
    os.waitpid(pid, 0)
    assert child and child != b"".join(ids.new_trace()[:2])


# -- parsing and forwarding -------------------------------------------------------------


def test_the_parser_finds_traceparent_and_tracestate() -> None:
    request = parse_request_head(b"GET / HTTP/1.1\r\nHost: h\r\nTraceparent: " + VALID + b"\r\ntracestate: a=1\r\nTRACESTATE: b=2")
    assert request.traceparent == VALID
    assert request.tracestate == b"a=1,b=2"  # one list, in order
    plain = parse_request_head(b"GET / HTTP/1.1\r\nHost: h")
    assert plain.traceparent is None and plain.tracestate is None
    twice = parse_request_head(b"GET / HTTP/1.1\r\nHost: h\r\ntraceparent: " + VALID + b"\r\ntraceparent: " + VALID)
    assert twice.traceparent == b"" and not valid_traceparent(twice.traceparent)


def _head(raw: bytes, **kwargs: object) -> Dict[bytes, List[bytes]]:
    request = parse_request_head(raw)
    head = upstream_request_head(
        request.method,
        request.target,
        request.headers,
        request.connection_tokens,
        peer="192.0.2.1",
        client_ip="192.0.2.1",
        scheme=b"http",
        host=request.host,
        request_id=b"r-1",
        framing=b"",
        lowered=request.lowered,
        **kwargs,  # type: ignore[arg-type]
    )
    assert head.endswith(b"\r\n\r\n")
    fields: Dict[bytes, List[bytes]] = {}
    for line in head[:-4].split(b"\r\n")[1:]:
        name, _, value = line.partition(b": ")
        fields.setdefault(name.lower(), []).append(value)
    return fields


def test_forwarded_head_replaces_traceparent_and_keeps_or_drops_tracestate() -> None:
    raw = b"GET / HTTP/1.1\r\nHost: h\r\ntraceparent: " + VALID + b"\r\ntracestate: a=1"
    kept = _head(raw, trace=(TRACE, b"1111222233334444", b"01"))
    assert kept[b"traceparent"] == [b"00-" + TRACE + b"-1111222233334444-01"]
    assert kept[b"tracestate"] == [b"a=1"]
    dropped = _head(raw, trace=(TRACE, b"1111222233334444", b"01"), drop_tracestate=True)
    assert b"tracestate" not in dropped
    # Without a trace (callers that pass none) nothing is added, the client's is still dropped.
    assert b"traceparent" not in _head(raw)


# -- the access log --------------------------------------------------------------------


def test_access_log_line_has_trace_between_upstream_and_rid() -> None:
    formatter = AccessLogFormatter(lambda: 1795431947.25)
    args = ("127.0.0.1", b"GET", b"/", b"HTTP/1.1", 200, 5, None, b"curl/8.0", 0.0021, "127.0.0.1:8081", b"ab12-1")
    assert formatter.format(*args, trace=TRACE).endswith(
        '"curl/8.0" rt=0.002 upstream=127.0.0.1:8081 trace=%s rid=ab12-1' % TRACE.decode()
    )
    assert formatter.format(*args, queued=0.5, trace=TRACE).endswith(
        "rt=0.002 qt=0.500 upstream=127.0.0.1:8081 trace=%s rid=ab12-1" % TRACE.decode()
    )
    assert " trace=" not in formatter.format(*args)  # a refused request has none
    no_upstream = args[:9] + ("", b"ab12-1")
    assert formatter.format(*no_upstream, trace=TRACE).endswith("upstream=- trace=%s rid=ab12-1" % TRACE.decode())
    record = json.loads(JsonAccessLogFormatter(lambda: 1795431947.25).format(*args, trace=TRACE))
    assert record["trace_id"] == TRACE.decode()
    assert "trace_id" not in json.loads(JsonAccessLogFormatter().format(*args))


# -- through the data path (in memory) ---------------------------------------------------


class ListLog:
    def __init__(self) -> None:
        self.lines: List[str] = []

    def write(self, line: str) -> None:
        self.lines.append(line)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _through(request: bytes, proxy: Optional[InMemoryProxy] = None):
    proxy = proxy or InMemoryProxy()
    log = proxy.core.access_log = ListLog()
    client = proxy.client()
    client.send(request)
    backend = proxy.accept()
    _, headers = backend.request_head()
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert client.response().status == 200
    fields: Dict[bytes, List[bytes]] = {}
    for name, value in headers:
        fields.setdefault(name.lower(), []).append(value)
    return fields, log.lines[-1]


def test_without_traceparent_a_new_trace_is_forwarded_and_logged() -> None:
    fields, line = _through(b"GET / HTTP/1.1\r\nHost: h\r\ntracestate: orphan=1\r\n\r\n")
    (value,) = fields[b"traceparent"]
    match = FORWARDED.match(value)
    assert match and valid_traceparent(value) and match.group(3) == b"01"
    assert b"tracestate" not in fields  # nothing to belong to
    assert " trace=%s rid=" % match.group(1).decode() in line


def test_a_valid_traceparent_continues_with_a_new_parent_id() -> None:
    fields, line = _through(
        b"GET / HTTP/1.1\r\nHost: h\r\ntraceparent: " + VALID + b"\r\ntracestate: congo=t61rcWkgMzE,rojo=00f067aa0ba902b7\r\n\r\n"
    )
    (value,) = fields[b"traceparent"]
    match = FORWARDED.match(value)
    assert match and match.group(1) == TRACE and match.group(3) == b"01"
    assert match.group(2) != PARENT
    assert fields[b"tracestate"] == [b"congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"]
    assert " trace=%s rid=" % TRACE.decode() in line


@pytest.mark.parametrize(
    "bad", [VALID.upper(), b"00-" + TRACE + b"-" + PARENT, b"00-" + b"0" * 32 + b"-" + PARENT + b"-01", b"junk"]
)
def test_an_invalid_traceparent_is_replaced_and_its_tracestate_dropped(bad: bytes) -> None:
    fields, line = _through(b"GET / HTTP/1.1\r\nHost: h\r\ntraceparent: " + bad + b"\r\ntracestate: a=1\r\n\r\n")
    (value,) = fields[b"traceparent"]
    match = FORWARDED.match(value)
    assert match and valid_traceparent(value) and match.group(1) != TRACE
    assert b"tracestate" not in fields
    assert " trace=%s rid=" % match.group(1).decode() in line


def test_two_traceparent_fields_start_a_new_trace() -> None:
    fields, _ = _through(
        b"GET / HTTP/1.1\r\nHost: h\r\ntraceparent: " + VALID + b"\r\ntraceparent: " + VALID + b"\r\ntracestate: a=1\r\n\r\n"
    )
    (value,) = fields[b"traceparent"]
    assert FORWARDED.match(value).group(1) != TRACE  # type: ignore[union-attr]
    assert b"tracestate" not in fields


def test_each_request_of_a_connection_has_its_own_trace() -> None:
    proxy = InMemoryProxy()
    log = proxy.core.access_log = ListLog()
    client = proxy.client()
    client.send(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n")
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    client.send(b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    sent = re.findall(rb"traceparent: 00-([0-9a-f]{32})-", backend.received())
    assert len(sent) == 2 and sent[0] != sent[1]
    assert [re.search(r"trace=([0-9a-f]{32})", line).group(1).encode() for line in log.lines] == sent  # type: ignore[union-attr]


def test_a_request_answered_without_a_backend_still_logs_a_trace() -> None:
    proxy = InMemoryProxy()
    log = proxy.core.access_log = ListLog()
    client = proxy.client()
    client.send(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n")  # no route: 404 at once
    assert client.response().status == 404
    assert re.search(r" upstream=- trace=[0-9a-f]{32} rid=", log.lines[-1])
