"""speedproxy.master.environment: what workers are started with."""

from __future__ import annotations

from pathlib import Path

from speedproxy.master.environment import MAX_PYPY_NURSERY, last_level_cache, worker_environment


def write_cache(directory: Path, levels: dict) -> Path:
    for index, (level, size) in enumerate(levels.items()):
        entry = directory / f"index{index}"
        entry.mkdir()
        (entry / "level").write_text(f"{level}\n")
        (entry / "size").write_text(f"{size}\n")
    (directory / "uevent").write_text("")
    return directory


def test_last_level_cache_is_the_highest_level(tmp_path: Path) -> None:
    directory = write_cache(tmp_path, {1: "48K", 2: "2048K", 3: "491520K"})
    assert last_level_cache(str(directory)) == 491520 * 1024


def test_last_level_cache_unknown(tmp_path: Path) -> None:
    assert last_level_cache(str(tmp_path / "missing")) is None
    assert last_level_cache(str(write_cache(tmp_path, {}))) is None


def test_pypy_workers_get_a_capped_nursery_when_the_cache_is_huge() -> None:
    env = worker_environment({"PATH": "/bin"}, pypy=True, cache_bytes=480 * 2**20)
    assert env == {"PATH": "/bin", "PYPY_GC_NURSERY": "%dMB" % (MAX_PYPY_NURSERY // 2**20)}


def test_the_nursery_is_left_alone_otherwise() -> None:
    base = {"PATH": "/bin"}
    assert worker_environment(base, pypy=False, cache_bytes=480 * 2**20) == base
    assert worker_environment(base, pypy=True, cache_bytes=32 * 2**20) == base  # PyPy's own default: 16 MiB
    assert worker_environment(base, pypy=True, cache_bytes=None) == base
    chosen = {"PYPY_GC_NURSERY": "300MB"}
    assert worker_environment(chosen, pypy=True, cache_bytes=480 * 2**20) == chosen
