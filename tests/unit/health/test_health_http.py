"""speedproxy.health.http: the HTTP probe, against real local backends."""

from __future__ import annotations

from typing import Any, Tuple

import pytest_twisted

from speedproxy.config.model import BackendConfig, HealthCheckConfig
from speedproxy.health.http import HTTPHealthChecker
from speedproxy.testing import HTTPBackend, echo, free_port, stall


def backend_config(port: int, expected: Tuple[int, int] = (200, 399), timeout: float = 5.0) -> BackendConfig:
    check = HealthCheckConfig(path="/healthz?deep=1", timeout=timeout, expected_status=expected)
    return BackendConfig(id="b1", host="127.0.0.1", port=port, health_check=check)


def checker() -> HTTPHealthChecker:
    from twisted.internet import reactor

    return HTTPHealthChecker(reactor)


@pytest_twisted.inlineCallbacks
def test_a_healthy_answer_and_what_the_probe_sends() -> Any:
    with HTTPBackend(echo()) as server:
        healthy = yield checker().check(backend_config(server.port))
        assert healthy is True
        (request,) = server.requests
        assert (request.method, request.path) == ("GET", "/healthz?deep=1")
        assert request.header("User-Agent").startswith("speedproxy-health/")


@pytest_twisted.inlineCallbacks
def test_the_status_must_be_in_the_expected_range() -> Any:
    with HTTPBackend(echo(status=503)) as server:
        assert (yield checker().check(backend_config(server.port))) is False
    with HTTPBackend(echo(status=302)) as server:
        assert (yield checker().check(backend_config(server.port))) is True
        assert (yield checker().check(backend_config(server.port, expected=(200, 299)))) is False


@pytest_twisted.inlineCallbacks
def test_a_refused_connection_is_unhealthy() -> Any:
    assert (yield checker().check(backend_config(free_port()))) is False


@pytest_twisted.inlineCallbacks
def test_no_answer_within_the_timeout_is_unhealthy() -> Any:
    from twisted.internet import reactor

    with HTTPBackend(stall()) as server:
        started = reactor.seconds()
        assert (yield checker().check(backend_config(server.port, timeout=0.3))) is False
        assert reactor.seconds() - started < 3.0
