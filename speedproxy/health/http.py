"""An HTTP GET probe of ``health_check.path``."""

from __future__ import annotations

from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from zope.interface import implementer

from speedproxy import __version__
from speedproxy.config.model import BackendConfig
from speedproxy.health.interface import IHealthChecker


@implementer(IHealthChecker)
class HTTPHealthChecker:
    """GETs the backend's health path; healthy when the status is in range."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.agent = Agent(reactor, pool=pool)
        self.client = HTTPClient(self.agent)

    def check(self, backend: BackendConfig) -> Deferred:
        check = backend.health_check
        assert check is not None
        host = f"[{backend.host}]" if ":" in backend.host else backend.host
        url = f"{backend.scheme}://{host}:{backend.port}{check.path}".encode("ascii")
        headers = Headers({b"User-Agent": [f"speedproxy-health/{__version__}".encode()]})
        low, high = check.expected_status
        request = self.client.get(url, headers=headers, unbuffered=True, allow_redirects=False)

        def judge(response: Any) -> bool:
            # Read the body and drop it, so the connection closes cleanly.
            treq.collect(response, _drop).addErrback(_drop)
            return low <= response.code <= high

        request.addCallback(judge)
        request.addTimeout(check.timeout, self.reactor)
        request.addErrback(lambda _: False)
        return request


def _drop(_: Any) -> None:
    """Nothing to keep of a probe's body (or of a failure to read it)."""
