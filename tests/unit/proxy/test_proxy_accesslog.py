"""Tests for :mod:`speedproxy.accesslog`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import List

import pytest
from zope.interface.verify import verifyObject

from speedproxy.accesslog import (
    AccessLogFormatter,
    FileAccessLog,
    IAccessLog,
    TwistedLogAccessLog,
    open_access_log,
)

# 2026-11-23 11:05:47 UTC
STAMP = 1795431947.25

COMBINED = re.compile(
    r'^(?P<ip>\S+) - - \[(?P<time>[^\]]+)\] "(?P<request>(?:[^"\\]|\\.)*)" (?P<status>\d{3}) (?P<size>\d+) '
    r'"(?P<referer>(?:[^"\\]|\\.)*)" "(?P<agent>(?:[^"\\]|\\.)*)" rt=(?P<rt>\d+\.\d{3}) '
    r"upstream=(?P<upstream>\S+) rid=(?P<rid>\S+)$"
)


def line(**overrides: object) -> str:
    args = dict(
        client_ip="127.0.0.1",
        method=b"GET",
        target=b"/",
        version=b"HTTP/1.1",
        status=200,
        size=1024,
        referer=None,
        user_agent=b"curl/8.0",
        seconds=0.0021,
        upstream="127.0.0.1:8081",
        request_id=b"ab12-1",
    )
    args.update(overrides)
    return AccessLogFormatter(lambda: STAMP).format(**args)  # type: ignore[arg-type]


def test_combined_format_example() -> None:
    assert line() == (
        '127.0.0.1 - - [23/Nov/2026:11:05:47 +0000] "GET / HTTP/1.1" 200 1024 "-" "curl/8.0" '
        "rt=0.002 upstream=127.0.0.1:8081 rid=ab12-1"
    )


def test_fields_parse_as_combined() -> None:
    match = COMBINED.match(line(referer=b"https://r.example/", status=404, size=0, seconds=1.5))
    assert match is not None
    assert match["ip"] == "127.0.0.1"
    assert match["request"] == "GET / HTTP/1.1"
    assert match["status"] == "404"
    assert match["size"] == "0"
    assert match["referer"] == "https://r.example/"
    assert match["agent"] == "curl/8.0"
    assert match["rt"] == "1.500"


@pytest.mark.parametrize(
    "agent,quoted",
    [
        (b'say "hi"', 'say \\"hi\\"'),
        (b"back\\slash", "back\\\\slash"),
        (b'\\"', '\\\\\\"'),
        (b"", "-"),
        (None, "-"),
    ],
)
def test_quoting(agent: object, quoted: str) -> None:
    text = line(user_agent=agent)
    match = COMBINED.match(text)
    assert match is not None, text
    assert match["agent"] == quoted


def test_target_quoted_and_missing_upstream() -> None:
    text = line(target=b'/a"b', upstream="", client_ip="2001:db8::1")
    match = COMBINED.match(text)
    assert match is not None
    assert match["request"] == 'GET /a\\"b HTTP/1.1'
    assert match["upstream"] == "-"
    assert match["ip"] == "2001:db8::1"


def test_timestamp_cached_per_second() -> None:
    now = [STAMP]
    formatter = AccessLogFormatter(lambda: now[0])
    first = formatter.timestamp()
    now[0] += 0.5
    assert formatter.timestamp() is first
    now[0] += 1
    assert formatter.timestamp() == "23/Nov/2026:11:05:48 +0000"


def test_file_access_log(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = FileAccessLog(str(path))
    assert verifyObject(IAccessLog, log)
    log.write(line())
    log.write(line(status=502))
    log.flush()
    lines: List[str] = path.read_text("utf-8").splitlines()
    assert len(lines) == 2
    assert all(COMBINED.match(text) for text in lines)
    assert " 502 " in lines[1]
    # rotation: the old file moves away, reopen starts a new one
    path.rename(tmp_path / "access.log.1")
    log.reopen()
    log.write(line(status=404))
    log.close()
    assert path.read_text("utf-8").count("\n") == 1
    assert " 404 " in path.read_text("utf-8")


def test_file_access_log_appends(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_text("old\n")
    log = FileAccessLog(str(path))
    log.write("new")
    log.close()
    assert path.read_text() == "old\nnew\n"


def test_open_access_log(tmp_path: Path) -> None:
    assert open_access_log("off") is None
    assert isinstance(open_access_log("-"), TwistedLogAccessLog)
    assert isinstance(open_access_log(""), TwistedLogAccessLog)
    log = open_access_log(str(tmp_path / "a.log"))
    assert isinstance(log, FileAccessLog)
    log.close()


def test_twisted_log_access_log() -> None:
    from twisted.logger import globalLogPublisher

    events: List[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        log = TwistedLogAccessLog()
        assert verifyObject(IAccessLog, log)
        log.write("a line")
        log.write("another")
        assert not [e for e in events if e.get("log_namespace") == "speedproxy.access"]  # buffered
        log.flush()
        log.close()
    finally:
        globalLogPublisher.removeObserver(events.append)
    # One event per batch, not per line.
    batches = [e["lines"] for e in events if e.get("log_namespace") == "speedproxy.access"]
    assert batches == ["a line\nanother"]


def test_file_access_log_writes_whole_lines_and_reopens(tmp_path) -> None:
    path = tmp_path / "access.log"
    log = FileAccessLog(str(path))
    log.write("one")
    assert path.read_text() == ""  # buffered until the sweep
    log.flush()
    assert path.read_text() == "one\n"
    path.rename(tmp_path / "access.log.1")  # logrotate
    log.write("two")
    log.reopen()  # SIGUSR1: "two" goes to the old file, then the new one is used
    log.write("three")
    log.close()
    assert (tmp_path / "access.log.1").read_text() == "one\ntwo\n"
    assert path.read_text() == "three\n"


def test_json_lines() -> None:
    import json

    from speedproxy.accesslog import JsonAccessLogFormatter

    formatter = JsonAccessLogFormatter(lambda: 1764000000.25)
    record = json.loads(
        formatter.format(
            "10.0.0.1", b"GET", b"/a?b", b"HTTP/1.1", 200, 12, None, b'ua "x"', 0.0021, "127.0.0.1:81",
            b"r-1", queued=0.5, host=b"example.com",
        )
    )
    assert record == {
        "time": "2025-11-24T16:00:00.250Z", "client": "10.0.0.1", "method": "GET", "host": "example.com",
        "target": "/a?b", "version": "HTTP/1.1", "status": 200, "bytes": 12, "referer": None,
        "user_agent": 'ua "x"', "rt": 0.0021, "upstream": "127.0.0.1:81", "rid": "r-1", "qt": 0.5,
    }


def test_a_queued_request_has_qt_after_rt() -> None:
    assert line(seconds=0.815, queued=0.8123).endswith(
        '"curl/8.0" rt=0.815 qt=0.812 upstream=127.0.0.1:8081 rid=ab12-1'
    )
    assert " qt=" not in line(queued=None)


def test_a_reload_naming_an_unusable_access_log_keeps_the_old_one(tmp_path) -> None:
    import dataclasses

    from twisted.internet.testing import MemoryReactorClock

    from speedproxy.config import parse_config
    from speedproxy.proxy.core import ProxyCore

    config = parse_config("server: {access_log: '%s'}\n" % (tmp_path / "a.log"))
    core = ProxyCore(MemoryReactorClock(), config, FileAccessLog(str(tmp_path / "a.log")))
    old = core.access_log
    bad = dataclasses.replace(config, server=dataclasses.replace(config.server, access_log=str(tmp_path / "no" / "b.log")))
    core.apply_config(bad)
    assert core.access_log is old
    good = dataclasses.replace(config, server=dataclasses.replace(config.server, access_log=str(tmp_path / "c.log")))
    core.apply_config(good)
    assert isinstance(core.access_log, FileAccessLog) and core.access_log.path == str(tmp_path / "c.log")
    core.stop()
