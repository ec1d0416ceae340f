"""Fixtures for the in-memory proxy tests (see :class:`speedproxy.testing.InMemoryProxy`)."""

from __future__ import annotations

from typing import Callable

import pytest

from speedproxy.testing import InMemoryProxy as ProxyHarness


@pytest.fixture
def make_proxy() -> Callable[..., ProxyHarness]:
    return ProxyHarness


@pytest.fixture
def proxy() -> ProxyHarness:
    return ProxyHarness()
