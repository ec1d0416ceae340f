"""``speedproxy_refused_total{route,reason}``: requests edge protection refused.

Each worker counts in its own slot of the stats segment
(:meth:`speedproxy.stats.segment.SlotWriter.refused`, through
:func:`speedproxy.edge.refusals.refuse`); the master sums the slots (and the
counts of workers that are gone) at scrape time, as for every other metric.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, Metric

from speedproxy.stats.segment import REFUSAL_REASONS, REFUSAL_WORDS, StatsIndex


def refused_counts(reader: Any, config: Any, index: StatsIndex, total: Sequence[int]) -> Dict[str, Dict[str, int]]:
    """``{route: {reason: count}}`` for every configured route with a stats slot."""
    layout = reader.layout
    base = layout.refused_base
    counts: Dict[str, Dict[str, int]] = {}
    for name in config.routing:
        idx = index.routes.get(name)
        if idx is None or idx >= layout.routes:
            continue
        word = base + idx * REFUSAL_WORDS
        counts[name] = {reason: total[word + i] for i, reason in enumerate(REFUSAL_REASONS)}
    return counts


def refused_metrics(reader: Any, config: Any, index: StatsIndex, total: Sequence[int]) -> Iterator[Metric]:
    """The ``speedproxy_refused`` counter family (exposed as ``speedproxy_refused_total``)."""
    family = CounterMetricFamily(
        "speedproxy_refused",
        "Requests answered locally because edge protection refused them, by route and reason "
        "(" + ", ".join(REFUSAL_REASONS) + ").",
        labels=["route", "reason"],
    )
    for route, reasons in refused_counts(reader, config, index, total).items():
        for reason, count in reasons.items():
            family.add_metric([route, reason], count)
    yield family
