"""Tests for :mod:`speedproxy.edge.host_table`: the file, its header and the key helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from speedproxy.edge.host_table import EdgeTable, client_bytes, client_text, edge_state_path, key_hash


def test_client_addresses_round_trip() -> None:
    for text in ("192.0.2.1", "2001:db8::7"):
        assert client_text(client_bytes(text)) == text


def test_a_foreign_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "edge"
    path.write_bytes(b"x" * 100)
    with pytest.raises(ValueError, match="not a speedproxy edge state file"):
        EdgeTable(str(path))


def test_private_table_takes_no_locks() -> None:
    table = EdgeTable(None)
    assert table.fd is None and table.path is None
    table.lock(5)
    table.unlock(5)


def test_two_processes_map_one_file_and_keys_hash_alike(tmp_path: Path) -> None:
    path = edge_state_path(str(tmp_path / "stats"))
    assert path.endswith("stats.edge")
    one, two = EdgeTable(path), EdgeTable(path)
    one.map[5000:5004] = b"abcd"
    assert two.map[5000:5004] == b"abcd"
    assert key_hash(b"k") == key_hash(b"k") != key_hash(b"j")
    assert 0 < key_hash(b"") < 2**63
