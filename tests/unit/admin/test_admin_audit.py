"""Tests for :mod:`speedproxy.admin.audit`."""

from __future__ import annotations

from typing import Any, List

from twisted.internet.address import IPv4Address
from twisted.logger import globalLogPublisher

from speedproxy.admin.audit import audit_line, should_audit


class FakeRequest:
    def __init__(self, method: bytes, uri: bytes) -> None:
        self.method = method
        self.uri = uri

    def getClientAddress(self) -> Any:
        return IPv4Address("TCP", "192.0.2.7", 5555)


def test_what_is_audited() -> None:
    assert should_audit(b"POST", 200)
    assert should_audit(b"DELETE", 404)
    assert should_audit(b"GET", 401)
    assert not should_audit(b"GET", 200)
    assert not should_audit(b"HEAD", 404)


def test_line_fields_and_outcomes() -> None:
    events: List[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        line = audit_line(FakeRequest(b"POST", b"/api/v1/backends/add"), 200)
        denied = audit_line(FakeRequest(b"GET", b"/api/v1/config"), 401, "missing_key")
        failed = audit_line(FakeRequest(b"PUT", b"/api/v1/config"), 400)
        aborted = audit_line(FakeRequest(b"PUT", b"/api/v1/config"), 200, aborted=True)
        assert audit_line(FakeRequest(b"GET", b"/status"), 200) is None
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert line is not None and denied is not None and failed is not None and aborted is not None
    assert line.startswith("audit time=")
    assert "peer=192.0.2.7 method=POST path=/api/v1/backends/add outcome=allowed status=200" in line
    assert denied.endswith("outcome=denied status=401 reason=missing_key")
    assert "outcome=failed status=400" in failed
    assert "outcome=aborted" in aborted
    audit_events = [e for e in events if e.get("log_namespace") == "speedproxy.audit"]
    assert len(audit_events) == 4


def test_secret_looking_query_parameters_are_masked() -> None:
    line = audit_line(FakeRequest(b"POST", b"/x?api_key=abc&backend_id=b1&token=t"), 401, "wrong_key")
    assert line is not None
    assert "abc" not in line and "=t " not in line
    assert "backend_id=b1" in line


def test_a_note_says_what_the_path_does_not() -> None:
    line = audit_line(FakeRequest(b"POST", b"/api/v1/cache/purge"), 200, note='url=http://h/a"b\nc')
    assert line is not None
    assert line.endswith('status=200 note="url=http://h/a\\"b?c"')
    assert audit_line(FakeRequest(b"POST", b"/x"), 200, note=None).endswith("status=200")  # type: ignore[union-attr]
