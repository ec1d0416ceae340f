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
        self._exchange = SimpleNamespace(bytes_received=received, bytes_sent=sent, head_bytes=head)

    def header(self, name: str) -> Any:
        return self._headers.get(name.lower())


def test_fingerprint_is_a_sha256_prefix_and_empty_for_none() -> None:
    assert fingerprint("abc") == "ba7816bf8f01cfea"
    assert fingerprint(None) == fingerprint("") == ""


def test_the_filter_counts_per_session_signature_and_api_key() -> None:
    ledger = Ledger(100)
    counting = AccountingFilter("video", ledger, "spx_session", "sig", "X-API-Key")
    counting.finished(Request({"Cookie": "a=1; spx_session=S1", "X-API-Key": "K"}, "sig=abc&exp=1"), True)
    counting.finished(Request({"Cookie": "spx_session=S1", "X-API-Key": "K"}, "exp=1&sig=abc"), False)
    counting.finished(Request({}, "spx_session=S2"), True)
    rows, dropped = ledger.take()
    assert dropped == 0
    assert sorted((r["session"], r["url_key"], r["api_key"], r["requests"], r["bytes_in"], r["bytes_out"]) for r in rows) == sorted([
        (fingerprint("S1"), fingerprint("abc"), fingerprint("K"), 2, 200, 1900),
        (fingerprint("S2"), "", "", 1, 100, 950),
    ])
    assert ledger.take() == ([], 0)


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
