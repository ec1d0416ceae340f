"""CacheTiers: the memory tier in front of a real disk tier in a temporary directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, List

import pytest

from speedproxy.cache.entry import CachedObject
from speedproxy.cache.policy import StoredPolicy
from speedproxy.cache.tiers import CacheTiers
from speedproxy.config.model import CacheConfig

KEY = b"http://origin/c/100k"
BODY = bytes(range(256)) * 400  # 100 KiB: packed, and big enough for sendfile once verified


def stored(body: bytes = BODY, etag: bytes = b'"v1"') -> CachedObject:
    headers = [(b"Content-Type", b"application/octet-stream"), (b"ETag", etag)]
    return CachedObject(
        KEY, b"", (), 200, b"OK", headers, [name.lower() for name, _ in headers], body,
        StoredPolicy(3600.0, 0.0, 1000.0, False, False, 0.0, 0.0), 999.0,
    )


def body_of(entry: CachedObject) -> bytes:
    return entry.read_body() if entry.file is not None else entry.body


@pytest.fixture
def tiers(tmp_path: Path) -> Iterator[CacheTiers]:
    made: List[CacheTiers] = []

    def make() -> CacheTiers:
        made.append(CacheTiers(CacheConfig(memory_size=0, disk_path=str(tmp_path / "cache"))))
        return made[-1]

    first = make()
    first.make = make  # type: ignore[attr-defined]
    yield first
    for item in made:
        item.close()


def counted_index_reads(tiers: CacheTiers) -> List[bytes]:
    """Record each lookup that goes to the disk tier's index."""
    calls: List[bytes] = []
    real = tiers.disk.get

    def get(key: bytes, variant: bytes = b""):
        calls.append(key)
        return real(key, variant)

    tiers.disk.get = get
    return calls


def test_a_repeated_disk_hit_skips_the_index_and_sends_from_the_file(tiers: CacheTiers) -> None:
    tiers.store(stored())
    assert tiers.disk.flush()
    reader = tiers.make()  # another worker: nothing in its memory
    index_reads = counted_index_reads(reader)
    first = reader.lookup(KEY, [], [])
    assert first is not None and body_of(first) == BODY
    assert first.file is None  # read whole once, to check its crc
    for _ in range(3):
        again = reader.lookup(KEY, [], [])
        assert again is not None and again is not first
        assert again.file is not None and again.file.fd >= 0  # sendfile(2) from its record
        assert (again.file.length, again.read_body()) == (len(BODY), BODY)
        assert again.header(b"etag") == b'"v1"'
        again.file.close()
    assert index_reads == [KEY]
    assert reader.hits["disk"] == 4


def test_a_purge_forgets_the_known_head(tiers: CacheTiers) -> None:
    tiers.store(stored())
    assert tiers.disk.flush()
    reader = tiers.make()
    assert reader.lookup(KEY, [], []) is not None
    assert reader.purge(KEY) >= 1
    assert reader.lookup(KEY, [], []) is None
    assert tiers.lookup(KEY, [], []) is None


def test_a_drop_from_another_worker_forgets_the_known_head(tiers: CacheTiers) -> None:
    tiers.store(stored())
    assert tiers.disk.flush()
    reader = tiers.make()
    assert reader.lookup(KEY, [], []) is not None
    tiers.purge(KEY)  # the disk row is gone; this worker is told through DropKeys
    reader.drop_from_memory(KEY)
    assert reader.lookup(KEY, [], []) is None


def test_a_store_replaces_the_known_head(tiers: CacheTiers) -> None:
    tiers.store(stored())
    assert tiers.disk.flush()
    reader = tiers.make()
    assert reader.lookup(KEY, [], []) is not None
    reader.store(stored(BODY[::-1], b'"v2"'))
    assert reader.disk.flush()
    found = reader.lookup(KEY, [], [])
    assert found is not None and found.header(b"etag") == b'"v2"' and body_of(found) == BODY[::-1]


def test_a_refreshed_disk_hit_keeps_its_body(tiers: CacheTiers) -> None:
    """A 304 freshens a hit whose body is still in its file: the new record
    has the new head and the whole body (not the empty in-memory body)."""
    tiers.store(stored())
    assert tiers.disk.flush()
    reader = tiers.make()
    reader.lookup(KEY, [], [])
    hit = reader.lookup(KEY, [], [])
    assert hit is not None and hit.file is not None
    headers = [(b"Content-Type", b"application/octet-stream"), (b"ETag", b'"v1"'), (b"X-Fresh", b"yes")]
    hit.set_headers(headers, [name.lower() for name, _ in headers])
    reader.refresh(hit)
    hit.file.close()
    assert reader.disk.flush()
    for tier in (reader, tiers.make()):
        found = tier.lookup(KEY, [], [])
        assert found is not None
        assert found.header(b"x-fresh") == b"yes"
        assert body_of(found) == BODY
        if found.file is not None:
            found.file.close()


def test_a_disk_hit_answers_while_its_pack_file_is_open_elsewhere(tiers: CacheTiers) -> None:
    """Descriptors handed out for sendfile are the hit's own: closing one
    (or the store pruning its cached descriptors) leaves the others usable."""
    tiers.store(stored())
    assert tiers.disk.flush()
    reader = tiers.make()
    reader.lookup(KEY, [], [])
    one = reader.lookup(KEY, [], [])
    two = reader.lookup(KEY, [], [])
    assert one.file.fd != two.file.fd
    one.file.close()
    reader.disk._prune_fds(set())
    assert os.pread(two.file.fd, 16, two.file.offset) == BODY[:16]
    two.file.close()
