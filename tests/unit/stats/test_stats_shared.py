"""A worker's view of the segment: its own counters, every worker's per-backend load."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, List

import pytest

from speedproxy.balancers.least_connections import LeastConnectionsBalancer
from speedproxy.config.model import BackendConfig
from speedproxy.stats.reader import StatsReader
from speedproxy.stats.segment import (
    ACTIVE_CLIENTS,
    ACTIVE_UPSTREAM,
    B_ACTIVE,
    B_DOWN_UNTIL_MS,
    B_FAILURES,
    B_REQUESTS,
    BYTES_IN,
    CLIENTS_TOTAL,
    REQUESTS,
    Layout,
    StatsSegment,
)
from speedproxy.stats.shared import SharedView
from speedproxy.upstreams import Backend

LAYOUT = Layout(slots=4, routes=2, backends=3)


@pytest.fixture
def path(tmp_path: Path) -> Iterator[str]:
    """A segment created by the "master"; workers attach to the file like worker processes."""
    segment = StatsSegment.create(str(tmp_path / "stats"), LAYOUT)
    yield segment.path
    segment.close()


def _workers(path: str, count: int) -> List[SharedView]:
    """``count`` workers, each with its own mapping of the file, in slots 0..count-1."""
    return [SharedView(StatsSegment.attach(path), slot) for slot in range(count)]


def _backend_word(view: SharedView, slot: int, backend: int, word: int) -> int:
    segment = view.segment
    return segment.read_slot(slot)[segment.layout.backend_base + backend * 6 + word]


def test_backend_active_counts_requests_in_flight_from_every_worker(path: str) -> None:
    one, two, three = _workers(path, 3)
    one.started(1)
    one.started(1)
    two.started(1)
    three.started(2)
    for view in (one, two, three):
        assert view.backend_active(1) == 3
        assert view.backend_active(2) == 1
        assert view.backend_active(0) == 0
    two.finished(1, failed=False)
    one.finished(1, failed=True)
    assert three.backend_active(1) == 1
    assert one.backend_active(1) == 1


def test_started_and_finished_keep_the_own_slots_counters(path: str) -> None:
    one, two = _workers(path, 2)
    two.started(0)
    two.started(0)
    two.started(2)
    two.finished(0, failed=True)
    two.finished(2, failed=False)
    values = two.segment.read_slot(1)
    base = LAYOUT.backend_base
    assert values[base + B_REQUESTS] == 2
    assert values[base + B_ACTIVE] == 1
    assert values[base + B_FAILURES] == 1
    assert values[base + 12 + B_REQUESTS] == 1
    assert values[base + 12 + B_ACTIVE] == 0
    assert values[base + 12 + B_FAILURES] == 0
    assert values[ACTIVE_UPSTREAM] == 1
    assert one.segment.read_slot(0) == [0] * LAYOUT.slot_words


def test_add_active_moves_the_backend_gauge_and_the_workers_upstream_gauge(path: str) -> None:
    (view,) = _workers(path, 1)
    view.add_active(2, 5)
    view.add_active(2, -2)
    assert view.backend_active(2) == 3
    values = view.segment.read_slot(0)
    assert values[ACTIVE_UPSTREAM] == 3
    assert values[LAYOUT.backend_base + 12 + B_REQUESTS] == 0


def test_add_failure_counts_without_touching_the_gauges(path: str) -> None:
    (view,) = _workers(path, 1)
    view.add_failure(1)
    view.add_failure(1)
    values = view.segment.read_slot(0)
    assert values[LAYOUT.backend_base + 6 + B_FAILURES] == 2
    assert values[LAYOUT.backend_base + 6 + B_ACTIVE] == 0
    assert values[ACTIVE_UPSTREAM] == 0


def test_least_connections_sees_the_other_workers_requests(path: str) -> None:
    mine, other = _workers(path, 2)

    def backends(view: SharedView) -> List[Backend]:
        return [Backend(BackendConfig(id=f"b{i}"), stats_index=i, shared=view) for i in range(3)]

    here, there = backends(mine), backends(other)
    # The other worker has three requests on b0 and one on b1; this one none.
    for _ in range(3):
        there[0].request_started()
    there[1].request_started()
    assert [b.local_connections for b in here] == [0, 0, 0]
    assert [b.active_connections for b in here] == [3, 1, 0]

    balancer = LeastConnectionsBalancer()
    balancer.update(here)
    assert balancer.pick(here, "k").id == "b2"
    here[2].request_started()
    here[2].request_started()
    # b1 (1 in flight elsewhere) now beats b2 (2 here) and b0 (3 elsewhere).
    assert balancer.pick(here, "k").id == "b1"


def test_max_conn_counts_every_workers_requests(path: str) -> None:
    mine, other = _workers(path, 2)
    here = Backend(BackendConfig(id="b0", max_conn=2), stats_index=0, shared=mine)
    there = Backend(BackendConfig(id="b0", max_conn=2), stats_index=0, shared=other)
    there.request_started()
    assert here.available
    there.request_started()
    assert not here.available
    there.request_finished(failed=False)
    assert here.available


def test_use_slots_reads_only_the_worker_slots_and_always_its_own(path: str) -> None:
    views = _workers(path, 4)
    for view in views:
        view.started(0)  # one request from each of the four slots
    first = views[0]
    first.use_slots(2)
    assert first.backend_active(0) == 2
    last = views[3]
    last.use_slots(2)
    assert last.backend_active(0) == 3  # slots 0, 1 and its own 3
    last.use_slots(100)
    assert last.backend_active(0) == 4
    last.use_slots(0)
    assert last.backend_active(0) == 2  # slot 0 (at least one) and its own


def test_use_slots_limits_down_until_too(path: str) -> None:
    views = _workers(path, 4)
    views[3].set_down_until(1, 500.0)
    views[0].use_slots(2)
    assert views[0].down_until(1) == 0.0
    views[0].use_slots(4)
    assert views[0].down_until(1) == 500.0


def test_down_until_is_the_latest_verdict_of_any_worker(path: str) -> None:
    one, two, three = _workers(path, 3)
    assert one.down_until(0) == 0.0
    one.set_down_until(0, 1_700_000_010.25)
    two.set_down_until(0, 1_700_000_030.5)
    three.set_down_until(0, 1_700_000_020.0)
    assert one.down_until(0) == 1_700_000_030.5
    assert one.down_until(1) == 0.0
    assert _backend_word(one, 1, 0, B_DOWN_UNTIL_MS) == 1_700_000_030_500
    two.set_down_until(0, 0.0)  # half open again in that worker
    assert three.down_until(0) == 1_700_000_020.0


def test_down_until_has_millisecond_resolution(path: str) -> None:
    (view,) = _workers(path, 1)
    view.set_down_until(2, 12.3456)
    assert view.down_until(2) == 12.345


def test_live_workers_counts_slots_the_master_gave_a_pid(path: str) -> None:
    master = StatsSegment.attach(path)
    reader = StatsReader(master)
    (view,) = _workers(path, 1)
    assert view.live_workers() == 0
    master.reset_slot(0, 1200, 1)
    master.reset_slot(2, 1202, 1)
    master.reset_slot(3, 1203, 1)
    assert view.live_workers() == 3
    reader.retire(2)  # exited
    assert view.live_workers() == 2
    master.reset_slot(2, 1302, 2)  # respawned
    assert view.live_workers() == 3


def test_clients_are_counted_per_worker_and_summed_across_workers(path: str) -> None:
    one, two = _workers(path, 2)
    one.client_opened()
    one.client_opened()
    two.client_opened()
    one.client_closed()
    assert one.active_clients() == 2
    assert two.active_clients() == 2
    values = one.segment.read_slot(0)
    assert values[ACTIVE_CLIENTS] == 1
    assert values[CLIENTS_TOTAL] == 2
    assert two.segment.read_slot(1)[CLIENTS_TOTAL] == 1


def test_active_clients_reads_every_slot_whatever_use_slots_says(path: str) -> None:
    views = _workers(path, 4)
    views[3].client_opened()
    views[0].use_slots(1)
    assert views[0].active_clients() == 1


def test_bytes_in_adds_to_the_own_slot(path: str) -> None:
    one, two = _workers(path, 2)
    two.bytes_in(300)
    two.bytes_in(12)
    assert two.segment.read_slot(1)[BYTES_IN] == 312
    assert one.segment.read_slot(0)[BYTES_IN] == 0


def test_the_writer_and_the_view_share_one_slot(path: str) -> None:
    one, two = _workers(path, 2)
    assert two.writer.base == LAYOUT.slot_offset(1)
    two.writer.request_done(0, 1, 200, 0.01, 5)
    two.started(1)
    values = one.segment.read_slot(1)
    assert values[LAYOUT.backend_base + 6 + B_REQUESTS] == 1
    assert values[REQUESTS] == 1
