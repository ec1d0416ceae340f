"""``upstreams.<name>``: what the proxy adds to every request sent to one upstream group.

``add_query: {api_key: "${env:TMDB_API_KEY}"}`` puts the parameter in the
target of every request sent to the group's backends (replacing one of the
same name the client sent: a client cannot choose the key);
``set_headers: {Authorization: ...}`` sets those fields (replacing the
client's).  The client's request is left as it came: the access log, the
cache key and the admin API's active/slow request lists show the client's
URL, never the credential; ``GET /api/v1/config`` shows a written-in value
masked and a ``${env:...}``/``${file:...}`` reference as the reference.
Retries and internal requests (prefetch, background refresh, warm-up) to
the group get the same additions.  Active health checks do not: point
``health_check.path`` at a path that needs no credential.

An upstream group without any of these keys has no :class:`UpstreamRules`
(``None``): its requests take the path they always took.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple
from urllib.parse import quote

from speedproxy.config.model import UpstreamRulesConfig
from speedproxy.edge.response_validation import ContentTypeCheck

Headers = List[Tuple[bytes, bytes]]


def _query_part(name: str, value: str) -> bytes:
    return (quote(name, safe="[]") + "=" + quote(value, safe="")).encode("ascii")


class UpstreamRules:
    """The request additions and response checks of one upstream group."""

    __slots__ = ("query", "query_names", "headers", "header_names", "expect")

    def __init__(self, config: UpstreamRulesConfig) -> None:
        #: ``name=value`` parts appended to the query, percent-encoded.
        self.query = tuple(_query_part(name, value) for name, value in config.add_query)
        self.query_names = frozenset(part.partition(b"=")[0] for part in self.query)
        self.headers: Headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in config.set_headers]
        self.header_names = frozenset(name.lower() for name, _ in self.headers)
        #: The content-type check (``None``: answers are not checked).
        self.expect: Optional[ContentTypeCheck] = (
            ContentTypeCheck(config.expect_content_type) if config.expect_content_type else None
        )

    def target(self, target: bytes) -> bytes:
        """``target`` with the group's query parameters (the client's of the same name dropped)."""
        if not self.query:
            return target
        path, mark, query = target.partition(b"?")
        names = self.query_names
        kept = [part for part in query.split(b"&") if part and part.partition(b"=")[0] not in names] if mark else []
        return path + b"?" + b"&".join(kept + list(self.query))

    def outgoing(self, target: bytes, headers: Headers, lowered: List[bytes]) -> Tuple[bytes, Headers, List[bytes]]:
        """The target and fields to send to the backend (new lists; the request's are untouched)."""
        target = self.target(target)
        if self.headers:
            names = self.header_names
            keep = [index for index, name in enumerate(lowered) if name not in names]
            headers = [headers[index] for index in keep] + self.headers
            lowered = [lowered[index] for index in keep] + [name.lower() for name, _ in self.headers]
        return target, headers, lowered

    def rejects(self, head: Any) -> bool:
        expect = self.expect
        return expect is not None and expect.rejects(head)


def rules_for(config: Optional[UpstreamRulesConfig]) -> Optional[UpstreamRules]:
    """The rules of a group, or ``None`` when it has none (the bare path)."""
    if config is None or not (config.add_query or config.set_headers or config.expect_content_type):
        return None
    return UpstreamRules(config)
