"""``POST /api/v1/cache/purge``: drop one URL, or every URL under a prefix, everywhere.

Body ``{"url": "http://host/path?q"}`` (every variant stored for it, by
every cached route) or ``{"prefix": "http://host/path"}`` (every key
starting with it), exactly one of them.  The purge reaches every worker's
memory tier and the disk tier before the answer, which says how many
objects each worker dropped and the total; a worker that does not answer
makes it a 500 naming it.  With ``cache.cascade_purge`` it is first
forwarded to the upstream speedproxies (:mod:`speedproxy.admin.cascade`).
"""

from __future__ import annotations

from typing import Any, Dict, List
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.web.server import Request

from speedproxy.admin.cache_figures import counts_or_fail
from speedproxy.admin.cache_worker import fanout_of
from speedproxy.admin.cascade import Cascade, incoming_path
from speedproxy.admin.context import AdminContext, APIResource
from speedproxy.admin.json_resource import bad_request, read_json_object

#: Longest URL or prefix accepted.
MAX_URL = 8192


def check_url(value: Any, name: str) -> str:
    """An absolute ``http(s)://host/...`` URL (400 naming ``name`` otherwise)."""
    if not isinstance(value, str) or not value:
        raise bad_request(f"{name} must be a non-empty string", name)
    if len(value) > MAX_URL:
        raise bad_request(f"{name} is longer than {MAX_URL} characters", name)
    if not value.isascii():
        raise bad_request(f"{name} must be ASCII (percent-encode other characters, as clients send them)", name)
    try:
        parts = urlsplit(value)
    except ValueError as error:
        raise bad_request(f"{name}: {error}", name) from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise bad_request(f"{name} must be an absolute http(s) URL such as http://host/path, got {value!r}", name)
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        raise bad_request(f"{name} must not hold spaces or control characters", name)
    return value


class CachePurgeResource(APIResource):
    """``POST /api/v1/cache/purge`` with ``{"url": ...}`` or ``{"prefix": ...}``."""

    FIELDS = ("url", "prefix")

    def __init__(self, api: AdminContext, cascade: Cascade) -> None:
        super().__init__(api)
        self.cascade = cascade

    def json_POST(self, request: Request) -> Any:
        body = read_json_object(request)
        for key in body:
            if key not in self.FIELDS:
                raise bad_request(f"unknown key {key!r} (give url or prefix)", key)
        if "url" in body and "prefix" in body:
            raise bad_request("give url or prefix, not both", "prefix")
        if "url" not in body and "prefix" not in body:
            raise bad_request("give the url to purge (or a prefix)", "url")
        name = "url" if "url" in body else "prefix"
        value = check_url(body[name], name)
        arguments = {name: value}
        request.audit_note = f"{name}={value}"  # type: ignore[attr-defined]
        path = incoming_path(request)
        if self.cascade.passed_here(path):
            return self.cascade.skipped(path)
        fanout = fanout_of(self.api.control)

        def purge() -> Deferred:
            def done(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
                answer = counts_or_fail(rows, "purged", "purge")
                answer[name] = value
                return answer

            return fanout.each("purge", **arguments).addCallback(done)

        return self.cascade.around(self.api.config, path, "purge", arguments, purge)
