"""Traffic accounting in a worker: a filter counting each request into the worker's ledger.

With ``accounting`` set (a ``redis_stream`` or a ``collector``), every
accounted route (``accounting.routes``, or all) gets an
:class:`AccountingFilter` first in its chain.  When a request ends it adds
one request, the bytes received from the client and the bytes sent to it
to the row of ``(route, session, url_key, api_key)`` in the worker's
:class:`Ledger`:

- ``session``: the request's live session, as the ``sessions`` filter
  verified (or opened) it (``request.state["edge.session"]``);
- ``url_key``: the signature of a signed URL (``signed_urls.param_signature``)
  that the ``signed_urls`` filter verified (``request.state["edge.signed"]``),
  so that each issued link is one row;
- ``api_key``: the ``accounting.api_key_header`` header.

The three are recorded as the first 16 hex digits of their SHA-256, never
as sent (they are credentials); empty when absent.  A session id or
signature the edge filters did not accept is counted under
:data:`UNVERIFIED` (one row, however many values a client invents), and
once the ledger is half full, new API keys (which nothing verifies) go to
:data:`UNVERIFIED` too: made-up values cannot push the real rows out.
The signature is read off the URL when the request comes in (this filter
is first on the chain; ``signed_urls`` takes it off the URL later).  The worker hands its
rows to the master (:func:`report_rows`) which batches and flushes them
(:mod:`speedproxy.cluster.accounting`).  A route that is not accounted
has no such filter and pays nothing.
"""

from __future__ import annotations

import hashlib
import json
from http.cookies import SimpleCookie
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import parse_qsl

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from speedproxy.filters.base import Filter

log = Logger(namespace="speedproxy.cluster")

Key = Tuple[str, str, str, str]

#: The value of a key column the edge filters did not verify.
UNVERIFIED = "unverified"

#: ``request.state`` keys: the edge filters' (:mod:`speedproxy.edge.signed_urls`,
#: :mod:`speedproxy.edge.sessions`) and this filter's own.
SIGNED_STATE = "edge.signed"
SESSION_STATE = "edge.session"
_SIGNATURE = "accounting.signature"
_PRESENTED = "accounting.session_presented"


def fingerprint(value: Optional[str]) -> str:
    """The first 16 hex digits of ``value``'s SHA-256 (empty for none)."""
    if not value:
        return ""
    return hashlib.sha256(value.encode("latin-1", "replace")).hexdigest()[:16]


class Ledger:
    """One worker's counts since its last report, at most ``limit`` rows."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.rows: Dict[Key, List[int]] = {}
        #: Requests not counted because the ledger was full.
        self.dropped = 0

    def add(self, key: Key, bytes_in: int, bytes_out: int) -> None:
        row = self.rows.get(key)
        if row is None and key[3] and key[3] != UNVERIFIED and len(self.rows) * 2 >= self.limit:
            key = (key[0], key[1], key[2], UNVERIFIED)  # unverified API keys get half the rows at most
            row = self.rows.get(key)
        if row is None:
            if len(self.rows) >= self.limit:
                self.dropped += 1
                return
            row = self.rows[key] = [0, 0, 0]
        row[0] += 1
        row[1] += bytes_in
        row[2] += bytes_out

    def take(self) -> Tuple[List[Dict[str, Any]], int]:
        """The rows (and the dropped count) so far; the ledger starts again empty."""
        rows = [
            {"route": key[0], "session": key[1], "url_key": key[2], "api_key": key[3],
             "requests": value[0], "bytes_in": value[1], "bytes_out": value[2]}
            for key, value in self.rows.items()
        ]
        dropped, self.rows, self.dropped = self.dropped, {}, 0
        return rows, dropped


class AccountingFilter(Filter):
    """Counts every request of one route into ``ledger``."""

    wants_body = False
    rewrites_body = False

    def __init__(self, route: str, ledger: Ledger, session_name: str, signature_param: str, api_key_header: str) -> None:
        self.route = route
        self.ledger = ledger
        self.session_name = session_name
        self.signature_param = signature_param
        self.api_key_header = api_key_header

    def _from_query(self, query: str, name: str) -> str:
        if not name or not query or name not in query:
            return ""
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key == name:
                return value
        return ""

    def _session(self, request: Any) -> str:
        if not self.session_name:
            return ""
        cookies = request.header("Cookie")
        if cookies and self.session_name in cookies:
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(cookies)
            except Exception:
                jar = SimpleCookie()
            morsel = jar.get(self.session_name)
            if morsel is not None and morsel.value:
                return morsel.value
        return self._from_query(request.query, self.session_name)

    def request(self, request: Any) -> None:
        """Note what the request presents before the edge filters take it off the URL."""
        if self.signature_param:
            signature = self._from_query(request.query, self.signature_param)
            if signature:
                request.state[_SIGNATURE] = signature
        if self.session_name and self._session(request):
            request.state[_PRESENTED] = True
        return None

    def finished(self, request: Any, complete: bool) -> None:
        exchange = request._exchange
        state = request.state
        session = state.get(SESSION_STATE)
        if session:
            session_key = fingerprint(session)
        else:
            session_key = UNVERIFIED if state.get(_PRESENTED) else ""
        signature = state.get(_SIGNATURE)
        if signature:
            url_key = fingerprint(signature) if state.get(SIGNED_STATE) else UNVERIFIED
        else:
            url_key = ""
        key = (self.route, session_key, url_key, fingerprint(request.header(self.api_key_header)))
        self.ledger.add(key, exchange.bytes_received, exchange.bytes_sent + exchange.head_bytes)


def ledger_for(core: Any) -> Ledger:
    """The ledger of a worker's ``core`` (made once)."""
    ledger = getattr(core, "_accounting_ledger", None)
    if ledger is None:
        ledger = core._accounting_ledger = Ledger(core.config.accounting.max_buffer)
    return ledger


def accounted(route: Any, core: Any) -> bool:
    config = getattr(core, "config", None)
    accounting = getattr(config, "accounting", None)
    if accounting is None or not accounting.enabled:
        return False
    return not accounting.routes or route.name in accounting.routes


def accounting_filter(route: Any, core: Any) -> Optional[AccountingFilter]:
    """The accounting filter of ``route`` (a ``RouteConfig``), or ``None`` when it is not accounted."""
    if core is None or not accounted(route, core):
        return None
    sessions = getattr(route, "sessions", None)
    signed = getattr(route, "signed_urls", None)
    return AccountingFilter(
        route.name,
        ledger_for(core),
        getattr(sessions, "cookie", "") if sessions is not None else "",
        getattr(signed, "param_signature", "") if signed is not None else "",
        core.config.accounting.api_key_header,
    )


def accounting_key(route: Any, core: Any) -> Any:
    """What the accounting filter of ``route`` is built from (for keeping a chain)."""
    if core is None or not accounted(route, core):
        return None
    return (core.config.accounting.api_key_header, getattr(route, "sessions", None), getattr(route, "signed_urls", None))


def chunks(rows: List[Dict[str, Any]], limit: int) -> List[bytes]:
    """``rows`` as JSON lists of at most ``limit`` bytes each."""
    out: List[bytes] = []
    current: List[bytes] = []
    size = 2
    for row in rows:
        data = json.dumps(row, separators=(",", ":")).encode("utf-8")
        if current and size + len(data) + 1 > limit:
            out.append(b"[" + b",".join(current) + b"]")
            current, size = [], 2
        current.append(data)
        size += len(data) + 1
    if current:
        out.append(b"[" + b",".join(current) + b"]")
    return out


def report_rows(core: Any, send: Callable[[bytes, int], Any], reactor: Any, every: float = 1.0) -> LoopingCall:
    """Every ``every`` seconds, hand the worker's counts to ``send(rows_json, dropped)``."""
    from speedproxy.cluster.amp import MAX_PAYLOAD

    def report() -> None:
        ledger = getattr(core, "_accounting_ledger", None)
        if ledger is None or (not ledger.rows and not ledger.dropped):
            return
        rows, dropped = ledger.take()
        pieces = chunks(rows, MAX_PAYLOAD) or [b"[]"]
        for index, piece in enumerate(pieces):
            try:
                send(piece, dropped if index == 0 else 0)
            except Exception:
                log.failure("could not report accounting rows")

    loop = LoopingCall(report)
    loop.clock = reactor
    loop.start(every, now=False)
    return loop
