from __future__ import annotations

from typing import Iterator

import pytest

from cluster_fixtures import running_redis
from speedproxy.testing.redis import RedisServer


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    """A fresh ``redis-server`` on a free port, stopped after the test."""
    yield from running_redis()
