from __future__ import annotations

import pytest

from speedproxy.cluster.address import RedisAddress, parse_redis_address


def test_redis_forms() -> None:
    assert parse_redis_address("redis://127.0.0.1:6380/2") == RedisAddress((("127.0.0.1", 6380),), 2)
    assert parse_redis_address("redis://cache") == RedisAddress((("cache", 6379),), 0)
    assert parse_redis_address("redis://[::1]:7000/0").hosts == (("::1", 7000),)
    withpass = parse_redis_address("redis://:s%40cret@h:1/0")
    assert (withpass.username, withpass.password) == (None, "s@cret")
    user = parse_redis_address("redis://app:pw@h/0")
    assert (user.username, user.password) == ("app", "pw")
    assert "pw" not in user.describe()


def test_sentinel_forms() -> None:
    address = parse_redis_address("sentinel://s1:26379,s2,[::1]:26380/mymaster/3")
    assert address.sentinel and address.service == "mymaster" and address.db == 3
    assert address.hosts == (("s1", 26379), ("s2", 26379), ("::1", 26380))
    assert address.describe() == "sentinel://s1:26379,s2:26379,[::1]:26380/mymaster/3"
    assert parse_redis_address("sentinel://s1/svc").db == 0


@pytest.mark.parametrize(
    "text, message",
    [
        ("http://h/0", "expected"),
        ("redis://", "no host"),
        ("redis://h:99999/0", "out of range"),
        ("redis://h/x", "database must be a number"),
        ("redis://a,b/0", "names one server"),
        ("sentinel://s1", "needs the service name"),
        ("sentinel://s1/a/b/c", "path parts"),
        ("redis://h h/0", "not host"),
    ],
)
def test_bad_addresses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_redis_address(text)
