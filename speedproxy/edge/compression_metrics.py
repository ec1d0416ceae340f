"""``speedproxy_compression_total{route,event}``: what response compression did.

Events (:data:`speedproxy.edge.compression.EVENTS`): ``stream``, a response
compressed as it was relayed; ``copy_made``, a stored object compressed
into a kept copy; ``copy_hit``, a cache hit answered from a kept copy.
Each worker counts in its own slot of the stats segment
(:meth:`speedproxy.stats.segment.SlotWriter.compression_event`); the master
sums the slots at scrape time.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, Metric

from speedproxy.edge.compression import EVENTS
from speedproxy.stats.segment import COMPRESSION_WORDS, StatsIndex


def compression_counts(reader: Any, config: Any, index: StatsIndex, total: Sequence[int]) -> Dict[str, Dict[str, int]]:
    """``{route: {event: count}}`` for every configured route that compresses."""
    layout = reader.layout
    base = layout.compression_base
    counts: Dict[str, Dict[str, int]] = {}
    for name, route in config.routing.items():
        idx = index.routes.get(name)
        if idx is None or idx >= layout.routes or getattr(route, "compression", None) is None:
            continue
        word = base + idx * COMPRESSION_WORDS
        counts[name] = {event: total[word + i] for i, event in enumerate(EVENTS)}
    return counts


def compression_metrics(reader: Any, config: Any, index: StatsIndex, total: Sequence[int]) -> Iterator[Metric]:
    """The ``speedproxy_compression`` counter family (exposed as ``speedproxy_compression_total``)."""
    counts = compression_counts(reader, config, index, total)
    if not counts:
        return  # no route compresses: no family
    family = CounterMetricFamily(
        "speedproxy_compression",
        "Response compression by route and event: stream (compressed while relayed), "
        "copy_made (a stored object compressed into a kept copy), copy_hit (a hit served from a kept copy).",
        labels=["route", "event"],
    )
    for route, events in counts.items():
        for event, value in events.items():
            family.add_metric([route, event], value)
    yield family
