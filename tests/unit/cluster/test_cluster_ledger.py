from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any, List, Tuple

from twisted.internet.task import Clock

from speedproxy.cluster.ledger import (
    AccountingFilter,
    Ledger,
    accounting_filter,
    accounting_key,
    chunks,
    fingerprint,
    report_rows,
)
from speedproxy.config.model import AccountingConfig, RouteConfig


class Request:
    """What the filter reads of a request view."""

    def __init__(self, headers: dict, query: str = "", received: int = 100, sent: int = 900, head: int = 50) -> None:
        self._headers = {k.lower(): v for k, v in headers.items()}
        self.query = query
        self.state: dict = {}
        self._exchange = SimpleNamespace(bytes_received=received, bytes_sent=sent, head_bytes=head)

    def header(self, name: str) -> Any:
        return self._headers.get(name.lower())


def test_fingerprint_is_a_sha256_prefix_and_empty_for_none() -> None:
    assert fingerprint("abc") == "ba7816bf8f01cfea"
    assert fingerprint(None) == fingerprint("") == ""


def _through(counting: AccountingFilter, request: "Request", signed: bool = False, session: str = "") -> None:
    """``request`` through the accounting filter, the edge filters between (as the chain runs them)."""
    counting.request(request)
    if signed:
        request.state["edge.signed"] = (1700000000, None)
    if session:
        request.state["edge.session"] = session
    request.query = ""  # signed_urls and sessions take their parameters off the URL
    counting.finished(request, True)


def test_the_filter_counts_per_verified_session_signature_and_api_key() -> None:
    ledger = Ledger(100)
    counting = AccountingFilter("video", ledger, "spx_session", "sig", "X-API-Key")
    _through(counting, Request({"Cookie": "a=1; spx_session=S1", "X-API-Key": "K"}, "sig=abc&exp=1"), True, "S1")
    _through(counting, Request({"Cookie": "spx_session=S1", "X-API-Key": "K"}, "exp=1&sig=abc"), True, "S1")
    _through(counting, Request({}, "spx_session=S2"), session="S2")
    rows, dropped = ledger.take()
    assert dropped == 0
    assert sorted((r["session"], r["url_key"], r["api_key"], r["requests"], r["bytes_in"], r["bytes_out"]) for r in rows) == sorted([
        (fingerprint("S1"), fingerprint("abc"), fingerprint("K"), 2, 200, 1900),
        (fingerprint("S2"), "", "", 1, 100, 950),
    ])
    assert ledger.take() == ([], 0)


def test_unverified_values_share_one_row_and_cannot_fill_the_ledger() -> None:
    ledger = Ledger(10)
    counting = AccountingFilter("video", ledger, "spx_session", "sig", "X-API-Key")
    for index in range(100):  # made-up sessions and signatures: refused by the edge filters
        _through(counting, Request({"Cookie": f"spx_session=forged{index}"}, f"sig=bad{index}&exp=1"))
    for index in range(100):  # made-up API keys: half the ledger at most
        _through(counting, Request({"X-API-Key": f"key{index}"}))
    _through(counting, Request({}, "sig=good&exp=1"), True, "S1")
    rows, dropped = ledger.take()
    assert dropped == 0
    keys = {(r["session"], r["url_key"], r["api_key"]): r["requests"] for r in rows}
    assert keys[("unverified", "unverified", "")] == 100
    assert keys[(fingerprint("S1"), fingerprint("good"), "")] == 1
    assert sum(1 for key in keys if key[2] not in ("", "unverified")) <= 4
    assert sum(keys.values()) == 201


def test_a_full_ledger_counts_what_it_drops() -> None:
    ledger = Ledger(2)
    for key in ("a", "b", "c", "c", "a"):
        ledger.add(("r", key, "", ""), 1, 1)
    rows, dropped = ledger.take()
    assert dropped == 2 and {r["session"]: r["requests"] for r in rows} == {"a": 2, "b": 1}


def _core(**accounting: Any) -> Any:
    return SimpleNamespace(config=SimpleNamespace(accounting=AccountingConfig(**accounting)))


def test_only_accounted_routes_get_the_filter() -> None:
    route, other = RouteConfig(name="video"), RouteConfig(name="api", path="/api/")
    assert accounting_filter(route, _core()) is None  # no destination: off
    assert accounting_filter(route, None) is None
    core = _core(collector="http://c/", routes=("video",))
    assert isinstance(accounting_filter(route, core), AccountingFilter)
    assert accounting_filter(other, core) is None and accounting_key(other, core) is None
    assert accounting_key(route, core) is not None
    assert accounting_filter(other, _core(collector="http://c/")) is not None


def test_chunks_stay_under_the_limit_and_keep_every_row() -> None:
    rows = [{"route": "r", "n": index, "pad": "x" * 50} for index in range(100)]
    pieces = chunks(rows, 1000)
    assert len(pieces) > 1 and all(len(piece) <= 1000 for piece in pieces)
    assert [row for piece in pieces for row in json.loads(piece)] == rows


def test_report_rows_hands_the_ledger_over_every_second() -> None:
    clock = Clock()
    core = _core(collector="http://c/")
    sent: List[Tuple[bytes, int]] = []
    loop = report_rows(core, lambda rows, dropped: sent.append((rows, dropped)), clock)
    clock.advance(1)
    assert sent == []  # nothing counted yet
    from speedproxy.cluster.ledger import ledger_for

    ledger_for(core).add(("r", "", "", ""), 10, 20)
    clock.advance(1)
    assert [json.loads(rows) for rows, _ in sent] == [[{"route": "r", "session": "", "url_key": "", "api_key": "",
                                                        "requests": 1, "bytes_in": 10, "bytes_out": 20}]]
    loop.stop()


def test_through_the_chain_the_verified_signature_and_session_are_the_keys() -> None:
    from speedproxy.cluster.ledger import ledger_for
    from speedproxy.edge.signed_urls import signature
    from speedproxy.testing import InMemoryProxy

    key = "first-key-0123456789abcdef"
    proxy = InMemoryProxy(
        "backends:\n  default:\n    - {id: b1, host: 10.1.0.1, port: 8081}\n"
        "accounting:\n  collector: http://127.0.0.1:9/\n"
        "routing:\n"
        f"  video: {{path: /v/, upstream: default, signed_urls: {{secrets: [\"{key}\"]}}, sessions: {{}}}}\n"
    )
    proxy.reactor.advance(1_700_000_000)
    expires = int(proxy.reactor.seconds()) + 60
    sig = signature(key, "/v/a.ts", expires)
    client = proxy.client("192.0.2.1")
    client.send(f"GET /v/a.ts?exp={expires}&sig={sig} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    proxy.accept().send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    answer = client.response()
    assert answer.status == 200
    session = answer.header(b"x-speedproxy-session").decode()
    forged = proxy.client("192.0.2.1")
    forged.send(f"GET /v/a.ts?exp={expires}&sig=bogus HTTP/1.1\r\nHost: h\r\nCookie: spx_session=made-up\r\n\r\n".encode())
    assert forged.response().status == 403
    rows, _ = ledger_for(proxy.core).take()
    keys = sorted((row["session"], row["url_key"]) for row in rows)
    assert keys == sorted([(fingerprint(session), fingerprint(sig)), ("unverified", "unverified")])
