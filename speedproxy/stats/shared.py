"""A worker's side of the stats segment: its own slot, everyone's gauges."""

from __future__ import annotations

from typing import List

from speedproxy.stats.segment import (
    ACTIVE_CLIENTS,
    ACTIVE_UPSTREAM,
    B_ACTIVE,
    B_DOWN_UNTIL_MS,
    B_FAILURES,
    B_REQUESTS,
    BACKEND_WORDS,
    BYTES_IN,
    CLIENTS_TOTAL,
    PID,
    U_PANIC,
    U_QUEUE,
    UPSTREAM_WORDS,
    SlotWriter,
    StatsSegment,
)


class SharedView:
    """Writes one worker's counters and reads per-backend load of all workers."""

    def __init__(self, segment: StatsSegment, slot: int) -> None:
        self.segment = segment
        self.slot = slot
        self.writer: SlotWriter = segment.writer(slot)
        self.words = segment.words
        layout = segment.layout
        self._backend_bases: List[int] = [
            layout.slot_offset(index) + layout.backend_base for index in range(layout.slots)
        ]
        self._all_backend_bases = self._backend_bases
        self._own_backend_base = self.writer.backend_base
        self._own_upstream_base = self.writer.upstream_base
        self._base = self.writer.base

    def use_slots(self, count: int) -> None:
        """Read only the first ``count`` slots (the ones workers can own).

        The master numbers worker slots from 0, so with ``server.workers: N``
        no slot at or above N is written; skipping them keeps the per-pick
        read of every worker's load short.  Our own slot is always read.
        """
        count = max(1, min(count, len(self._all_backend_bases)))
        bases = self._all_backend_bases[:count]
        own = self._all_backend_bases[self.slot]
        if own not in bases:
            bases.append(own)
        self._backend_bases = bases

    # -- per backend ---------------------------------------------------------

    def backend_active(self, index: int) -> int:
        """Requests in flight to backend ``index`` from every worker."""
        words = self.words
        offset = index * BACKEND_WORDS + B_ACTIVE
        total = 0
        for base in self._backend_bases:
            total += words[base + offset]
        return total

    def add_active(self, index: int, delta: int) -> None:
        self.words[self._own_backend_base + index * BACKEND_WORDS + B_ACTIVE] += delta
        self.words[self._base + ACTIVE_UPSTREAM] += delta

    def started(self, index: int) -> None:
        """A request to backend ``index`` started."""
        word = self._own_backend_base + index * BACKEND_WORDS
        words = self.words
        words[word + B_ACTIVE] += 1
        words[word + B_REQUESTS] += 1
        words[self._base + ACTIVE_UPSTREAM] += 1

    def set_down_until(self, index: int, until: float) -> None:
        """Publish this worker's passive verdict on backend ``index``."""
        self.words[self._own_backend_base + index * BACKEND_WORDS + B_DOWN_UNTIL_MS] = int(until * 1000)

    def down_until(self, index: int) -> float:
        """The latest time any worker took backend ``index`` out until."""
        words = self.words
        offset = index * BACKEND_WORDS + B_DOWN_UNTIL_MS
        latest = 0
        for base in self._backend_bases:
            value = words[base + offset]
            if value > latest:
                latest = value
        return latest / 1000.0

    def finished(self, index: int, failed: bool) -> None:
        """A request to backend ``index`` ended."""
        word = self._own_backend_base + index * BACKEND_WORDS
        words = self.words
        words[word + B_ACTIVE] -= 1
        words[self._base + ACTIVE_UPSTREAM] -= 1
        if failed:
            words[word + B_FAILURES] += 1

    def add_failure(self, index: int) -> None:
        self.words[self._own_backend_base + index * BACKEND_WORDS + B_FAILURES] += 1

    # -- per upstream group ----------------------------------------------------

    def set_queue(self, index: int, length: int) -> None:
        """Publish how many requests wait in this worker's queue of group ``index``."""
        if index >= 0:
            self.words[self._own_upstream_base + index * UPSTREAM_WORDS + U_QUEUE] = length

    def set_panic(self, index: int, panic: bool) -> None:
        """Publish whether this worker balances group ``index`` in panic mode."""
        if index >= 0:
            self.words[self._own_upstream_base + index * UPSTREAM_WORDS + U_PANIC] = 1 if panic else 0

    def add_upstream(self, index: int, word: int) -> None:
        """Count one event (``U_QUEUED``, ``U_QUEUE_FULL``...) of group ``index``."""
        if index >= 0:
            self.words[self._own_upstream_base + index * UPSTREAM_WORDS + word] += 1

    # -- per worker ----------------------------------------------------------

    def speaks_for_all(self) -> bool:
        """Is this the lowest worker slot held by a running worker?

        That worker logs events every worker sees alike (a group entering
        panic), so they are logged once rather than once per worker.
        """
        words = self.words
        layout = self.segment.layout
        for slot in range(min(self.slot, layout.slots)):
            if words[layout.slot_offset(slot) + PID]:
                return False
        return True

    def client_opened(self) -> None:
        words = self.words
        words[self._base + ACTIVE_CLIENTS] += 1
        words[self._base + CLIENTS_TOTAL] += 1

    def client_closed(self) -> None:
        self.words[self._base + ACTIVE_CLIENTS] -= 1

    def live_workers(self) -> int:
        """Worker slots held by a running worker (its pid is set until retired)."""
        words = self.words
        layout = self.segment.layout
        return sum(1 for slot in range(layout.slots) if words[layout.slot_offset(slot) + PID])

    def active_clients(self) -> int:
        """Open client connections across every worker."""
        words = self.words
        layout = self.segment.layout
        return sum(
            words[layout.slot_offset(slot) + ACTIVE_CLIENTS] for slot in range(layout.slots)
        )

    def bytes_in(self, count: int) -> None:
        self.words[self._base + BYTES_IN] += count
