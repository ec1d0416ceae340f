"""``upstreams.<name>.expect_content_type``: answers of the wrong type are backend failures.

An image mirror that answers an HTML error page with ``200`` (a captive
portal, a rate-limit page, an expired account) would otherwise be relayed
and cached as if it were the image.  With ``expect_content_type: [image/*]``
a successful answer (``2xx`` but ``204``) whose ``Content-Type`` is not
listed (or missing) is treated like a connection failure of that backend
(:meth:`speedproxy.proxy.exchange.Exchange.unexpected_response`): it counts
against the backend's passive health check, the request is retried on
another backend as the route's retry rules allow (``server.retries``,
the retry budget, idempotent requests), and when none is left the client
gets ``502 bad_gateway`` naming the type.  The answer is never relayed, so
the route's cache never sees it.  Redirects, ``304`` and errors are not
checked (they are not the content).
"""

from __future__ import annotations

from typing import Any, Dict, FrozenSet, Iterable, Optional


class ContentTypeCheck:
    """The media types an upstream's successful answers must have."""

    __slots__ = ("types", "_exact", "_ranges", "_memo")

    def __init__(self, types: Iterable[str]) -> None:
        self.types = tuple(types)
        exact, ranges = set(), set()
        for item in self.types:
            major, _, minor = item.lower().partition("/")
            if minor == "*":
                ranges.add(major.encode("ascii"))
            else:
                exact.add(item.lower().encode("ascii"))
        self._exact: FrozenSet[bytes] = frozenset(exact)
        self._ranges: FrozenSet[bytes] = frozenset(ranges)
        self._memo: Dict[bytes, bool] = {}

    def type_allowed(self, content_type: Optional[bytes]) -> bool:
        if not content_type:
            return False
        known = self._memo.get(content_type)
        if known is None:
            media = content_type.partition(b";")[0].strip().lower()
            known = media in self._exact or media.partition(b"/")[0] in self._ranges
            if len(self._memo) >= 256:
                self._memo.clear()
            self._memo[content_type] = known
        return known

    def rejects(self, head: Any) -> bool:
        """Is this response head (``status``, ``headers``, ``lowered``) a failure?"""
        status = head.status
        if status < 200 or status >= 300 or status == 204:
            return False
        lowered = head.lowered
        if b"content-type" not in lowered:
            return True
        return not self.type_allowed(head.headers[lowered.index(b"content-type")][1])

    def reason(self, head: Any) -> str:
        """The client's error detail for a rejected head."""
        lowered = head.lowered
        got = (
            head.headers[lowered.index(b"content-type")][1].decode("latin-1")
            if b"content-type" in lowered
            else "none"
        )
        return "the backend answered with Content-Type %s, expected %s" % (got, ", ".join(self.types))
