"""Tests for :mod:`speedproxy.cache.locks` and :mod:`speedproxy.cache.entry`."""

from __future__ import annotations

import multiprocessing

from speedproxy.cache.entry import CachedObject, VaryMarker
from speedproxy.cache.locks import FillLocks
from speedproxy.cache.policy import StoredPolicy


def _try_lock(path: str, key: bytes, answer) -> None:
    answer.put(FillLocks(path).acquire(key))


def test_one_process_holds_a_key(tmp_path) -> None:
    path = str(tmp_path / "fills.lock")
    locks = FillLocks(path)
    assert locks.acquire(b"k")
    assert locks.acquire(b"k")  # the same process: counted
    answers = multiprocessing.get_context("fork").Queue()
    process = multiprocessing.get_context("fork").Process(target=_try_lock, args=(path, b"k", answers))
    process.start()
    process.join(10)
    assert answers.get(timeout=5) is False
    locks.release(b"k")
    locks.release(b"k")
    process = multiprocessing.get_context("fork").Process(target=_try_lock, args=(path, b"k", answers))
    process.start()
    process.join(10)
    assert answers.get(timeout=5) is True


def test_unusable_lock_file_means_no_cross_worker_locking(tmp_path) -> None:
    locks = FillLocks(str(tmp_path / "missing" / "fills.lock"))
    assert locks.acquire(b"k") and locks.acquire(b"k")
    locks.release(b"k")


def test_entry_meta_round_trip() -> None:
    entry = CachedObject(
        b"http://h/a",
        b"gzip",
        (b"accept-encoding",),
        200,
        b"OK",
        [(b"Content-Type", b"text/plain"), (b"ETag", b'"1"'), (b"Age", b"3")],
        [b"content-type", b"etag", b"age"],
        b"body",
        StoredPolicy(60.0, 3.0, 1000.0, False, True, 5.0, 7.0),
        999.0,
    )
    assert entry.block == b'Content-Type: text/plain\r\nETag: "1"\r\n'  # Age is per answer
    again = CachedObject.from_meta(b"http://h/a", b"gzip", entry.meta(), b"body")
    assert again is not None
    assert (again.status, again.reason, again.vary, again.headers, again.body) == (
        200, b"OK", (b"accept-encoding",), entry.headers, b"body")
    assert repr(again.policy) == repr(entry.policy)
    assert again.read_body(1, 2) == b"od" and again.length == 4
    assert CachedObject.from_meta(b"k", b"", b"not ours", b"") is None
    assert VaryMarker.from_meta(VaryMarker((b"a", b"b")).meta()).names == (b"a", b"b")
