"""Tests for speedproxy.master.access_relay: workers' access lines into twistd's log."""

from __future__ import annotations

import os
from typing import Any, List

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock

from speedproxy.master.access_relay import (
    FLUSH_BYTES,
    FLUSH_DELAY,
    AccessLogPipe,
    AccessLogRelay,
    open_access_pipe,
)
from speedproxy.master.environment import keep_freed_memory


def relay() -> tuple:
    clock = Clock()
    events: List[str] = []
    return clock, events, AccessLogRelay(clock, events.append)


def test_lines_wait_for_the_delay_then_go_as_one_event() -> None:
    clock, events, subject = relay()
    subject.lines(b"a 1\na 2")
    subject.lines(b"b 1")
    assert events == []
    clock.advance(FLUSH_DELAY)
    assert events == ["a 1\na 2\nb 1"]
    clock.advance(FLUSH_DELAY * 10)
    assert events == ["a 1\na 2\nb 1"]  # nothing pending, nothing logged


def test_a_full_batch_goes_at_once_and_cancels_the_timer() -> None:
    clock, events, subject = relay()
    subject.lines(b"x" * 10)
    subject.lines(b"y" * FLUSH_BYTES)
    assert events == ["x" * 10 + "\n" + "y" * FLUSH_BYTES]
    assert clock.getDelayedCalls() == []


def test_flush_logs_what_is_pending_now() -> None:
    clock, events, subject = relay()
    subject.lines(b"last line")
    subject.flush()
    assert events == ["last line"]
    assert clock.getDelayedCalls() == []
    subject.flush()
    assert events == ["last line"]


def test_bad_utf8_is_replaced_not_raised() -> None:
    clock, events, subject = relay()
    subject.lines(b"agent \xff")
    subject.flush()
    assert events == ["agent \ufffd"]


class _Reactor:
    def __init__(self) -> None:
        self.readers: List[Any] = []

    def addReader(self, reader: Any) -> None:
        self.readers.append(reader)

    def removeReader(self, reader: Any) -> None:
        self.readers.remove(reader)


def test_pipe_hands_whole_lines_and_keeps_a_partial_one() -> None:
    clock, events, subject = relay()
    reactor = _Reactor()
    read_end, write_end = open_access_pipe()
    pipe = AccessLogPipe(reactor, read_end, subject)
    pipe.start()
    assert reactor.readers == [pipe]
    try:
        os.write(write_end, b"one\ntwo\nthr")
        assert pipe.doRead() is None
        os.write(write_end, b"ee")
        assert pipe.doRead() is None  # no newline yet: kept
        os.write(write_end, b"\nfour\n")
        assert pipe.doRead() is None
        assert pipe.doRead() is None  # nothing to read: not an error
        subject.flush()
        assert events == ["one\ntwo\nthree\nfour"]
    finally:
        os.close(write_end)
    result = pipe.doRead()
    assert isinstance(result, ConnectionDone)
    pipe.connectionLost(result)
    assert reactor.readers == []
    assert pipe.fileno() == -1


def test_the_pipe_is_bigger_where_linux_allows() -> None:
    import fcntl

    read_end, write_end = open_access_pipe()
    try:
        assert not os.get_blocking(read_end)
        assert os.get_blocking(write_end)
        assert not os.get_inheritable(read_end)
        get_size = getattr(fcntl, "F_GETPIPE_SZ", None)
        if get_size is not None:
            with open("/proc/sys/fs/pipe-max-size") as handle:
                allowed = int(handle.read())
            assert fcntl.fcntl(write_end, get_size) >= min(allowed, 1024 * 1024)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_keep_freed_memory_on_glibc() -> None:
    import platform

    if platform.libc_ver()[0] == "glibc":
        assert keep_freed_memory() is True
    else:
        assert keep_freed_memory() is False
