"""The disk tier: real files in tmp_path, real processes for sharing and crashes."""

from __future__ import annotations

import errno
import hashlib
import inspect
import os
import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

from speedproxy.cache.disk import DiskEntry, DiskStore

KiB = 1024
MiB = 1024 * KiB
ROOT = Path(__file__).resolve().parents[3]


def pattern(key: bytes, size: Optional[int] = None) -> bytes:
    """The deterministic content of an object, derived from its key."""
    seed = hashlib.sha256(key).digest()
    if size is None:
        size = 100 + int.from_bytes(seed[:2], "big") % 4000
    return (seed * (size // len(seed) + 1))[:size]


def meta_of(key: bytes) -> bytes:
    return b"meta:" + key


# The same helpers, for the child processes.
PATTERN = "\n".join(
    ["import hashlib", "from typing import Optional", inspect.getsource(pattern), inspect.getsource(meta_of)]
)


class Log:
    def __init__(self) -> None:
        self.lines: List[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)


@pytest.fixture
def log() -> Log:
    return Log()


@pytest.fixture
def cache_dir(tmp_path: Path) -> str:
    return str(tmp_path / "cache")


@pytest.fixture
def store(cache_dir: str, log: Log) -> Iterator[DiskStore]:
    s = DiskStore(cache_dir, 64 * MiB, log=log)
    assert s.open()
    yield s
    s.close()


def reopen(path: str, log: Log, **kw: object) -> DiskStore:
    s = DiskStore(path, kw.pop("max_size", 64 * MiB), log=log, **kw)  # type: ignore[arg-type]
    assert s.open()
    return s


def pack_files(path: str) -> List[str]:
    return sorted(os.listdir(os.path.join(path, "packs")))


def run_child(code: str, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-c", PATTERN + textwrap.dedent(code), *args],
        env=env,
        capture_output=True,
        timeout=timeout,
    )


def start_child(code: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", PATTERN + textwrap.dedent(code), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
    )


def read_line(proc: subprocess.Popen, deadline: float) -> bytes:
    """The child's next stdout line, failing (not hanging) after ``deadline``."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
    assert ready, "child too slow"
    line = proc.stdout.readline()  # unbuffered pipe: select is exact
    assert line, proc.stderr.read() if proc.stderr else b""
    return line.strip()


# -- round trips ---------------------------------------------------------------


def test_small_round_trip(store: DiskStore) -> None:
    store.put(b"/a", b"", b"meta-a", b"body-a")
    assert store.flush()  # visible once committed
    entry = store.get(b"/a")
    assert isinstance(entry, DiskEntry)
    assert (entry.meta, entry.body, entry.in_file, entry.fd) == (b"meta-a", b"body-a", False, -1)
    assert entry.read_body() == b"body-a" and entry.length == 6
    assert store.get(b"/b") is None
    assert store.get(b"/a", b"gzip") is None


def test_large_round_trip_is_a_file_range(store: DiskStore) -> None:
    body = pattern(b"/big", 3 * MiB)
    store.put(b"/big", b"", b"M" * 300, body)
    assert store.flush()
    with store.get(b"/big") as entry:  # type: ignore[union-attr]
        assert entry.in_file and entry.body is None and entry.meta == b"M" * 300
        assert entry.length == len(body) and entry.path and os.path.exists(entry.path)
        assert os.pread(entry.fd, 1000, entry.offset) == body[:1000]  # sendfile-able range
        assert entry.read_body() == body
    assert entry.fd == -1


def test_streaming_writer(store: DiskStore) -> None:
    writer = store.begin(b"/stream", b"br", b"meta")
    assert writer.active
    chunks = [pattern(b"/stream%d" % i, 256 * KiB) for i in range(12)]
    for chunk in chunks:
        writer.write(chunk)
    assert store.get(b"/stream", b"br") is None
    writer.commit()
    assert not writer.active
    small = store.begin(b"/tiny", b"", b"m")
    small.write(b"abc")
    small.write(b"def")
    small.commit()
    aborted = store.begin(b"/aborted", b"", b"m")
    aborted.write(pattern(b"x", 2 * MiB))
    aborted.abort()
    aborted.write(b"ignored")
    aborted.commit()
    assert store.flush()
    with store.get(b"/stream", b"br") as entry:  # type: ignore[union-attr]
        assert entry.read_body() == b"".join(chunks)
    assert store.get(b"/tiny").body == b"abcdef"  # type: ignore[union-attr]
    assert store.get(b"/aborted") is None
    assert len([f for f in pack_files(store.path) if f.endswith(".obj")]) == 1


def test_replace_variants_and_too_big(store: DiskStore) -> None:
    store.put(b"/v", b"", b"m0", b"plain")
    store.put(b"/v", b"gzip", b"m1", b"zipped")
    store.put(b"/v", b"gzip", b"m2", b"zipped again")
    store.put(b"/huge", b"", b"m", b"x" * (store.max_object_size + 1))
    writer = store.begin(b"/huge2", b"", b"m")
    writer.write(b"x" * (store.max_object_size + 1))
    assert not writer.active
    writer.commit()
    assert store.flush()
    assert store.variants(b"/v") == [b"", b"gzip"]
    assert store.get(b"/v", b"gzip").body == b"zipped again"  # type: ignore[union-attr]
    assert store.get(b"/huge") is None and store.get(b"/huge2") is None
    info = store.info()
    assert info["entries"] == 2
    assert info["live_bytes"] == sum(28 + 2 + len(v) + 2 + len(b) for v, b in [(b"", b"plain"), (b"gzip", b"zipped again")])


def test_restart_survival(cache_dir: str, log: Log) -> None:
    s = reopen(cache_dir, log)
    for i in range(50):
        s.put(b"/k%d" % i, b"", meta_of(b"/k%d" % i), pattern(b"/k%d" % i))
    s.put(b"/large", b"", b"m", pattern(b"/large", 2 * MiB))
    s.close()  # close commits what is queued
    s = reopen(cache_dir, log)
    try:
        for i in range(50):
            entry = s.get(b"/k%d" % i)
            assert entry is not None and entry.body == pattern(b"/k%d" % i)
            assert entry.meta == meta_of(b"/k%d" % i)
        # A large object is served at once after a restart (its data was
        # fsync'ed before it was indexed) and its checksum verified in the background.
        with s.get(b"/large") as entry:  # type: ignore[union-attr]
            assert entry.read_body() == pattern(b"/large", 2 * MiB)
        assert s.flush()
        with s.get(b"/large") as entry:  # type: ignore[union-attr]
            assert entry.read_body() == pattern(b"/large", 2 * MiB)
        assert s.info()["entries"] == 51
    finally:
        s.close()
    assert os.listdir(os.path.join(cache_dir, "owners")) == []


# -- several processes -----------------------------------------------------------

WRITER = """
import sys
from speedproxy.cache.disk import DiskStore
path, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = DiskStore(path, 64 << 20, log=lambda m: print("LOG", m, file=sys.stderr))
assert s.open()
for i in range(first, first + count):
    key = b"/obj/%d" % i
    s.put(key, b"", meta_of(key), pattern(key))
    if i % 20 == 0:
        w = s.begin(key + b"/large", b"", meta_of(key))
        w.write(pattern(key, 1100 * 1024))
        w.commit()
assert s.flush()
print("flushed", flush=True)
sys.stdin.readline()
s.close()
"""


def test_two_writer_processes_and_a_reader(cache_dir: str, log: Log) -> None:
    reader = reopen(cache_dir, log)
    try:
        deadline = time.monotonic() + 15
        children = [start_child(WRITER, cache_dir, str(n * 1000), "200") for n in (1, 2)]
        try:
            for child in children:
                assert read_line(child, deadline) == b"flushed"
            # Visible here while the writers are still running.
            for base in (1000, 2000):
                for i in range(base, base + 200):
                    key = b"/obj/%d" % i
                    entry = reader.get(key)
                    assert entry is not None and entry.body == pattern(key), key
                    if i % 20 == 0:
                        with reader.get(key + b"/large") as big:  # type: ignore[union-attr]
                            assert big.read_body() == pattern(key, 1100 * 1024)
        finally:
            for child in children:
                child.communicate(b"\n", timeout=10)
                assert child.returncode == 0, child.stderr
        # And the other way round: written here, read by another process.
        reader.put(b"/from-parent", b"", b"pm", pattern(b"/from-parent"))
        assert reader.flush()
        done = run_child(
            """
            import sys
            from speedproxy.cache.disk import DiskStore
            s = DiskStore(sys.argv[1], 64 << 20, log=print)
            assert s.open()
            e = s.get(b"/from-parent")
            assert e is not None and e.meta == b"pm" and e.body == pattern(b"/from-parent")
            s.close()
            """,
            cache_dir,
        )
        assert done.returncode == 0, done.stderr
        assert reader.info()["entries"] == 2 * 210 + 1
    finally:
        reader.close()


KILLED = """
import os, sys, time
import speedproxy.cache.disk_background as background
import speedproxy.cache.disk_index as index
from speedproxy.cache.disk import DiskStore
path, moment = sys.argv[1], sys.argv[2]
s = DiskStore(path, 256 << 20, pack_size=256 << 10, log=lambda m: None)
assert s.open()


def stuck(real, when):
    def run(*args):
        real(*args)
        if when(*args):
            print("stuck", flush=True)
            time.sleep(60)
    return run


def pack_fd(fd):
    return os.readlink("/proc/self/fd/%d" % fd).endswith(".pack")


def small_rows(conn, rows):
    return any(row[8] == 0 for row in rows)


i = 0
while True:
    key = b"/k/%d" % i
    if i % 25 == 0:
        w = s.begin(key, b"", meta_of(key))
        data = pattern(key, 1500 * 1024)
        for j in range(0, len(data), 100000):
            w.write(data[j:j + 100000])
        w.commit()
    else:
        s.put(key, b"", meta_of(key), pattern(key))
    if i % 50 == 49:
        s.flush()
        print("committed", i, flush=True)
    if i == 500:
        w = s.begin(b"/never", b"", b"m")
        w.write(b"x" * (3 << 20))
        if moment == "after-fsync":  # data on disk, not indexed
            background.datasync = stuck(background.datasync, pack_fd)
        elif moment == "in-commit":  # rows inserted, transaction not committed
            index.store_entries = stuck(index.store_entries, small_rows)
        print("midwrite", flush=True)
    i += 1
"""


def _open_pack_tails(path: str) -> List[int]:
    """Bytes written past what the index says, in the packs of a dead writer."""
    db = sqlite3.connect(os.path.join(path, "index.db"))
    try:
        rows = db.execute("SELECT name, size FROM packs WHERE state = 0").fetchall()
    finally:
        db.close()
    return [os.path.getsize(os.path.join(path, "packs", name)) - size for name, size in rows]


@pytest.mark.parametrize("moment", ["anytime", "after-fsync", "in-commit"])
def test_kill_9_while_writing(cache_dir: str, log: Log, moment: str) -> None:
    deadline = time.monotonic() + 20
    child = start_child(KILLED, cache_dir, moment)
    committed = -1
    try:
        while True:
            line = read_line(child, deadline)
            if line == b"midwrite":
                break
            committed = int(line.split()[1])
        if moment != "anytime":
            assert read_line(child, deadline) == b"stuck"
    finally:
        child.send_signal(signal.SIGKILL)  # while it keeps writing
        child.wait(10)
    assert committed >= 499
    if moment != "anytime":
        assert max(_open_pack_tails(cache_dir)) > 0  # killed with data not indexed
    s = reopen(cache_dir, log, max_size=256 * MiB)
    try:
        keys = s.keys(b"/k/", limit=100000)
        assert len(keys) > committed
        with s.get(b"/k/0") as first:  # type: ignore[union-attr]  # large: served, verified in the background
            assert first.read_body() == pattern(b"/k/0", 1500 * 1024)
        for key in keys:
            entry = s.get(key)
            if entry is not None:
                entry.close()
        assert s.flush()
        intact = 0
        for key in keys:
            entry = s.get(key)
            if entry is None:
                continue
            with entry:
                size = 1500 * 1024 if int(key.split(b"/")[-1]) % 25 == 0 else None
                assert entry.meta == meta_of(key)
                assert entry.read_body() == pattern(key, size), key
            intact += 1
        # Everything committed before the last "committed" line is there.
        for i in range(committed + 1):
            assert s.get(b"/k/%d" % i) is not None, i
        assert intact == len(keys) >= committed + 1
        assert s.get(b"/never") is None
        # The dead writer's files were swept: its open pack sealed and cut to
        # what was indexed, the half-written large file deleted.
        assert len(os.listdir(os.path.join(cache_dir, "owners"))) == 1  # ours
        names = {n for n, in s._admin_conn().execute("SELECT name FROM packs").fetchall()}
        assert set(pack_files(cache_dir)) == names
        for name, size, state in s._admin_conn().execute("SELECT name, size, state FROM packs"):
            assert state == 1
            assert os.path.getsize(os.path.join(cache_dir, "packs", name)) == size
        # And the store goes on.
        s.put(b"/after", b"", b"m", b"a")
        assert s.flush() and s.get(b"/after").body == b"a"  # type: ignore[union-attr]
    finally:
        s.close()


# -- corruption -------------------------------------------------------------------


def _record_offset(s: DiskStore, key: bytes) -> tuple:
    row = s._admin_conn().execute(
        "SELECT p.name, e.offset, e.size FROM entries e JOIN packs p ON p.id = e.pack"
        " WHERE e.key = ?",
        (key,),
    ).fetchall()[0]
    return os.path.join(s.packs_dir, row[0]), row[1], row[2]


def _flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x55]))


def test_corrupt_byte_in_pack_is_dropped(store: DiskStore) -> None:
    for i in range(20):
        store.put(b"/c%d" % i, b"", b"m", pattern(b"/c%d" % i))
    store.put(b"/big64", b"", b"m", pattern(b"/big64", 100 * KiB))
    assert store.flush()
    path, offset, size = _record_offset(store, b"/c7")
    _flip(path, offset + size - 3)  # in the body
    path, offset, size = _record_offset(store, b"/c8")
    _flip(path, offset + 1)  # in the header
    path, offset, size = _record_offset(store, b"/big64")
    _flip(path, offset + size - 1)
    assert store.get(b"/c7") is None
    assert store.get(b"/c8") is None
    assert store.get(b"/big64") is None
    assert store.flush()
    assert b"/c7" not in store.keys() and b"/c8" not in store.keys()
    assert b"/big64" not in store.keys()
    for i in set(range(20)) - {7, 8}:
        assert store.get(b"/c%d" % i).body == pattern(b"/c%d" % i)  # type: ignore[union-attr]
    assert store.info()["corrupt"] >= 3


def test_corrupt_large_object_is_dropped_after_restart(cache_dir: str, log: Log) -> None:
    s = reopen(cache_dir, log)
    s.put(b"/L", b"", b"m", pattern(b"/L", 2 * MiB))
    s.put(b"/L2", b"", b"m", pattern(b"/L2", 2 * MiB))
    s.close()
    s = reopen(cache_dir, log)
    try:
        path, offset, size = _record_offset(s, b"/L")
        _flip(path, offset + size // 2)
        # Header and length are fine, so both are served until the checksum,
        # verified in the background, finds the damaged one.
        for key in (b"/L", b"/L2"):
            entry = s.get(key)
            assert entry is not None
            entry.close()
        assert s.flush()
        assert s.get(b"/L") is None
        assert s.keys() == [b"/L2"]
        with s.get(b"/L2") as entry:  # type: ignore[union-attr]
            assert entry.read_body() == pattern(b"/L2", 2 * MiB)
        assert s.flush()
        assert not os.path.exists(path)  # its file went with it
    finally:
        s.close()


def test_truncated_files_are_dropped(store: DiskStore) -> None:
    for i in range(30):
        store.put(b"/t%d" % i, b"", b"m", pattern(b"/t%d" % i, 4000))
    store.put(b"/T", b"", b"m", pattern(b"/T", 2 * MiB))
    assert store.flush()
    path, offset, _ = _record_offset(store, b"/t20")
    os.truncate(path, offset + 10)
    big, offset, size = _record_offset(store, b"/T")
    os.truncate(big, offset + size - 1)
    for i in range(20):
        assert store.get(b"/t%d" % i).body == pattern(b"/t%d" % i, 4000)  # type: ignore[union-attr]
    for i in range(20, 30):
        assert store.get(b"/t%d" % i) is None
    assert store.get(b"/T") is None
    os.unlink(big)
    assert store.flush()
    assert len(store.keys()) == 20


# -- eviction ---------------------------------------------------------------------


def test_eviction_bounds_size_and_keeps_recently_read(cache_dir: str, log: Log) -> None:
    max_size = 2 * MiB
    s = reopen(cache_dir, log, max_size=max_size, pack_threshold=256 * KiB)
    try:
        hot = [b"/hot/%d" % i for i in range(10)]
        for key in hot:
            s.put(key, b"", b"m", pattern(key, 20 * KiB))
        s.put(b"/hot/large", b"", b"m", pattern(b"/hot/large", 300 * KiB))
        assert s.flush()
        for i in range(300):
            key = b"/cold/%d" % i
            s.put(key, b"", b"m", pattern(key, 20 * KiB))
            if i % 10 == 0:
                s.put(key + b"/large", b"", b"m", pattern(key, 300 * KiB))
            if i % 10 == 0:
                assert s.flush()
                for h in hot + [b"/hot/large"]:
                    entry = s.get(h)
                    assert entry is not None, h
                    entry.close()
        assert s.flush()
        info = s.info()
        assert info["bytes"] <= max_size
        on_disk = sum(os.path.getsize(os.path.join(cache_dir, "packs", f)) for f in pack_files(cache_dir))
        assert on_disk <= max_size
        assert info["evictions"] > 200 and s.evictions == info["evictions"]
        for key in hot:
            assert s.get(key).body == pattern(key, 20 * KiB)  # type: ignore[union-attr]
        with s.get(b"/hot/large") as entry:  # type: ignore[union-attr]
            assert entry.read_body() == pattern(b"/hot/large", 300 * KiB)
        assert s.get(b"/cold/0") is None
        assert s.get(b"/cold/299") is not None
        assert info["storing"] and log.lines == []
    finally:
        s.close()


FILLER = """
import sys
from speedproxy.cache.disk import DiskStore
path, name = sys.argv[1], sys.argv[2].encode()
s = DiskStore(path, 1 << 20, log=lambda m: print("LOG", m, file=sys.stderr))
assert s.open()
for i in range(400):
    key = b"/%s/%d" % (name, i)
    s.put(key, b"", meta_of(key), pattern(key, 5000 + i * 10))
    if i % 50 == 0:
        assert s.flush()
assert s.flush()
s.close()
"""


def test_concurrent_writers_share_one_bound(cache_dir: str, log: Log) -> None:
    s = reopen(cache_dir, log, max_size=MiB)
    try:
        children = [start_child(FILLER, cache_dir, name) for name in ("a", "b", "c")]
        for child in children:
            _, err = child.communicate(timeout=20)
            assert child.returncode == 0, err
        assert s.flush()
        info = s.info()
        assert info["bytes"] <= MiB and info["evictions"] > 300
        present = 0
        for key in s.keys(limit=10000):
            name, number = key.split(b"/")[1:]
            entry = s.get(key)
            assert entry is not None
            assert entry.body == pattern(key, 5000 + int(number) * 10) and entry.meta == meta_of(key)
            present += 1
        assert present == info["entries"] > 50
    finally:
        s.close()


def test_interrupted_eviction_is_finished_by_the_sweep(
    cache_dir: str, log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    from speedproxy.cache.disk_maintenance import Maintenance

    s = reopen(cache_dir, log, max_size=MiB)
    try:
        # As if the process died between the commit and the unlinks.
        monkeypatch.setattr(Maintenance, "_unlink_pack", lambda self, pid, path: None)
        for i in range(150):
            s.put(b"/e/%d" % i, b"", b"m", pattern(b"/e/%d" % i, 10 * KiB))
        assert s.flush()
        assert s.evictions > 0
        assert sum(os.path.getsize(os.path.join(cache_dir, "packs", f)) for f in pack_files(cache_dir)) > MiB
    finally:
        s.close()
    monkeypatch.undo()
    s = reopen(cache_dir, log, max_size=MiB)
    try:
        assert s.flush()
        names = {n for n, in s._admin_conn().execute("SELECT name FROM packs").fetchall()}
        assert set(pack_files(cache_dir)) == names
        assert sum(os.path.getsize(os.path.join(cache_dir, "packs", f)) for f in names) <= MiB
        for key in s.keys(limit=1000):
            assert s.get(key).body == pattern(key, 10 * KiB)  # type: ignore[union-attr]
    finally:
        s.close()


def test_many_small_objects_few_files(store: DiskStore) -> None:
    for i in range(5000):
        store.put(b"/poster/%d.jpg" % i, b"", b"m", pattern(b"/poster/%d" % i, 1000))
        if i % 1000 == 999:
            assert store.flush()
    assert store.flush()
    assert store.info()["entries"] == 5000
    assert len(pack_files(store.path)) == 2  # 4 MiB packs for a 64 MiB store
    assert store.get(b"/poster/4321.jpg").body == pattern(b"/poster/4321", 1000)  # type: ignore[union-attr]


# -- purges and listing -----------------------------------------------------------------


def test_delete_prefix_clear_keys_search(store: DiskStore) -> None:
    for i in range(30):
        store.put(b"/movie/%02d" % i, b"", b"m", b"x" * 100)
        store.put(b"/tv/%02d" % i, b"", b"m", b"y" * 100)
    store.put(b"/tv/00", b"gzip", b"m", b"z")
    store.put(b"\xff\xff", b"", b"m", b"edge")
    store.put(b"/big", b"", b"m", pattern(b"/big", 2 * MiB))
    assert store.flush()
    assert store.keys(b"/movie/", limit=3) == [b"/movie/00", b"/movie/01", b"/movie/02"]
    assert len(store.keys(limit=1000)) == 62
    assert store.keys(b"\xff") == [b"\xff\xff"]
    assert store.search(b"vie/1", limit=100) == [b"/movie/%02d" % i for i in range(10, 20)]
    assert store.search(b"vie/", limit=2) == [b"/movie/00", b"/movie/01"]
    assert store.delete(b"/tv/00", b"gzip") == 1
    assert store.delete(b"/tv/01") == 1
    assert store.delete(b"/nothing") == 0
    assert store.delete_prefix(b"/movie/") == 30
    assert store.get(b"/movie/05") is None and store.get(b"/tv/05") is not None
    assert store.delete_prefix(b"\xff") == 1
    assert store.info()["entries"] == 30
    assert store.clear() == 30
    assert store.info()["entries"] == 0 and store.keys() == []
    assert store.flush()
    # The large file went at once; the open pack stays for new objects.
    assert [f for f in pack_files(store.path) if f.endswith(".obj")] == []
    store.put(b"/again", b"", b"m", b"a")
    assert store.flush()
    assert store.get(b"/again").body == b"a"  # type: ignore[union-attr]


# -- failures ------------------------------------------------------------------------------


def test_unusable_directory_then_fixed(tmp_path: Path, log: Log) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"not a directory")
    now = [0.0]
    s = DiskStore(str(blocker / "cache"), MiB, log=log, clock=lambda: now[0], retry_after=60)
    assert not s.open()
    assert not s.storing
    s.put(b"/a", b"", b"m", b"b")
    writer = s.begin(b"/a", b"", b"m")
    writer.write(b"data")
    writer.commit()
    assert s.get(b"/a") is None and s.keys() == [] and s.delete_prefix(b"/") == 0
    assert not s.flush()
    info = s.info()
    assert info["storing"] is False and info["errors"] >= 1
    assert len(log.lines) == 1 and "not storing" in log.lines[0]
    now[0] += 30
    s.put(b"/a", b"", b"m", b"b")  # too early to try again
    assert info["errors"] == s.errors
    blocker.unlink()
    now[0] += 31
    s.put(b"/a", b"", b"m", b"b")  # opens, then stores
    assert s.storing and s.flush()
    assert s.get(b"/a").body == b"b"  # type: ignore[union-attr]
    s.close()


def test_unreadable_index_is_started_again(cache_dir: str, log: Log) -> None:
    s = reopen(cache_dir, log)
    s.put(b"/a", b"", b"m", b"b")
    s.close()
    with open(os.path.join(cache_dir, "index.db"), "r+b") as f:
        f.write(b"this is not an SQLite database at all" * 4)
    s = reopen(cache_dir, log)
    try:
        assert s.get(b"/a") is None
        assert len(log.lines) == 1 and "index unusable" in log.lines[0]
        assert s.flush()
        assert pack_files(cache_dir) == []  # the old packs were nobody's: deleted
        s.put(b"/b", b"", b"m", b"c")
        assert s.flush() and s.get(b"/b").body == b"c"  # type: ignore[union-attr]
    finally:
        s.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory(tmp_path: Path, log: Log) -> None:  # pragma: no cover - non-root
    s = DiskStore(str(tmp_path / "c"), MiB, log=log)
    assert s.open()
    os.chmod(s.packs_dir, 0o500)
    try:
        s.put(b"/a", b"", b"m", b"b")
        s.flush()
        assert not s.storing and s.get(b"/a") is None
    finally:
        os.chmod(s.packs_dir, 0o700)
        s.close()


def test_disk_full_stops_storing_then_retries(
    cache_dir: str, log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    s = DiskStore(cache_dir, 64 * MiB, log=log, clock=lambda: now[0], retry_after=60)
    assert s.open()
    try:
        s.put(b"/before", b"", b"m", b"kept")
        assert s.flush()
        real_pwrite, real_write = os.pwrite, os.write

        def full(*args: object) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "pwrite", full)
        monkeypatch.setattr(os, "write", full)
        s.put(b"/lost", b"", b"m", b"x" * 100)
        assert s.flush()
        assert not s.storing
        s.put(b"/ignored", b"", b"m", b"x")  # no exception, not even queued
        writer = s.begin(b"/stream", b"", b"m")
        writer.write(b"y" * 10)
        writer.commit()
        assert s.flush()
        info = s.info()
        assert info["storing"] is False and info["errors"] == 1
        assert len(log.lines) == 1 and "No space left" in log.lines[0]
        assert s.get(b"/before").body == b"kept"  # type: ignore[union-attr]
        assert s.get(b"/lost") is None and s.get(b"/stream") is None
        # Space again: storing resumes after retry_after.
        monkeypatch.setattr(os, "pwrite", real_pwrite)
        monkeypatch.setattr(os, "write", real_write)
        now[0] += 59
        assert not s.storing
        now[0] += 2
        assert s.storing
        s.put(b"/after", b"", b"m", b"back")
        assert s.flush()
        assert s.get(b"/after").body == b"back"  # type: ignore[union-attr]
        # A large streamed object meeting a full disk half-way.
        writer = s.begin(b"/bigstream", b"", b"m")
        writer.write(b"z" * (2 * MiB))
        monkeypatch.setattr(os, "write", full)
        writer.write(b"z" * MiB)
        assert not writer.active and not s.storing
        monkeypatch.setattr(os, "write", real_write)
        writer.commit()
        assert s.flush()
        assert s.get(b"/bigstream") is None
        assert [f for f in pack_files(cache_dir) if f.endswith(".obj")] == []
    finally:
        s.close()


def test_file_size_limit_in_a_child(cache_dir: str) -> None:
    """A real EFBIG from the kernel (RLIMIT_FSIZE), in the background thread and the writer."""
    done = run_child(
        """
        import resource, signal, sys
        from speedproxy.cache.disk import DiskStore
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        lines = []
        s = DiskStore(sys.argv[1], 64 << 20, log=lines.append)
        assert s.open()
        for i in range(400):
            key = b"/f/%d" % i
            s.put(key, b"", b"m", pattern(key, 8000))
            if i == 50:
                assert s.flush()
        assert s.flush()
        w = s.begin(b"/stream", b"", b"m")
        for i in range(30):
            w.write(b"s" * 100000)
        w.commit()
        assert s.flush()
        assert not s.storing, s.info()
        assert s.info()["errors"] >= 1 and len(lines) == 1, lines
        assert s.get(b"/f/0").body == pattern(b"/f/0", 8000)
        assert s.get(b"/stream") is None
        s.close()
        print("ok")
        """,
        cache_dir,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == b"ok"


def test_closed_store_answers_nothing(cache_dir: str, log: Log) -> None:
    s = reopen(cache_dir, log)
    s.put(b"/a", b"", b"m", b"b")
    s.close()
    assert s.get(b"/a") is None and not s.storing and s.keys() == []
    s.put(b"/b", b"", b"m", b"b")
    assert not s.flush()
    s.close()
