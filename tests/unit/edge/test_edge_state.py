"""Tests for :mod:`speedproxy.edge.state`: the seam's records and which store a core uses."""

from __future__ import annotations

from speedproxy.edge.host_state import HostEdgeState, host_edge_for
from speedproxy.edge.state import Session, SessionLimitReached, Take, edge_state_for
from speedproxy.testing import InMemoryProxy


def test_records() -> None:
    take = Take(False, 0, 0.5, 2.0)
    assert (take.allowed, take.remaining, take.retry_after, take.reset) == (False, 0, 0.5, 2.0)
    session = Session("abc", "192.0.2.1", 1.0, 61.0)
    assert session.to_json() == {"id": "abc", "client": "192.0.2.1", "created": 1.0, "expires": 61.0}
    error = SessionLimitReached("192.0.2.1", 3)
    assert (error.client, error.limit) == ("192.0.2.1", 3)
    assert "192.0.2.1 already has 3 live session(s)" in str(error)


def test_a_core_uses_the_host_store_unless_one_is_put_on_it() -> None:
    proxy = InMemoryProxy()
    core = proxy.core
    store = edge_state_for(core)
    assert isinstance(store, HostEdgeState)
    assert store is host_edge_for(core).state is edge_state_for(core)  # one per core
    assert host_edge_for(core).table.path is None  # serving alone: a private table
    other = object()
    core.edge_state = other  # what speedproxy.cluster does
    assert edge_state_for(core) is other


def test_two_cores_of_one_process_keep_their_own_private_tables() -> None:
    one, two = InMemoryProxy().core, InMemoryProxy().core
    assert host_edge_for(one) is not host_edge_for(two)
