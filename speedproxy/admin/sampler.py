"""Recent rates (requests/s, error rate, latency percentiles) from periodic samples.

The stats segment only has totals since start.  :class:`StatsSampler` reads
them once a second (``control.stats_snapshot()``) and keeps the last five
minutes, so the performance endpoints can answer "over the last 10 s / 60 s".
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Tuple

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger(namespace="speedproxy.admin")

#: Windows reported by :meth:`StatsSampler.windows`, in seconds.
WINDOWS = (10, 60, 300)


@dataclass(frozen=True)
class Sample:
    time: float
    requests: int
    status: Tuple[Tuple[str, int], ...]
    latency_ms_sum: float
    histogram: Tuple[Tuple[str, int], ...]


def sample_of(now: float, snapshot: Mapping[str, Any]) -> Sample:
    totals = snapshot.get("totals", {})
    requests = int(totals.get("requests", 0))
    return Sample(
        time=now,
        requests=requests,
        status=tuple(sorted((k, int(v)) for k, v in totals.get("status", {}).items())),
        latency_ms_sum=float(totals.get("avg_latency_ms", 0.0)) * requests,
        histogram=tuple((k, int(v)) for k, v in snapshot.get("latency_histogram", {}).items()),
    )


def percentile(histogram: List[Tuple[str, int]], fraction: float) -> Optional[float]:
    """Estimate a latency percentile (ms) from cumulative ``(bound, count)`` buckets.

    Linear interpolation inside the bucket holding the rank; ``None`` when
    there is no request.  Ranks in the ``+Inf`` bucket give its lower bound.
    """
    if not histogram or histogram[-1][1] <= 0:
        return None
    total = histogram[-1][1]
    rank = fraction * total
    lower_bound, lower_count = 0.0, 0
    for bound, count in histogram:
        if count >= rank:
            if bound == "+Inf":
                return round(lower_bound * 1000.0, 3)
            upper = float(bound)
            span = count - lower_count
            share = (rank - lower_count) / span if span else 1.0
            return round((lower_bound + (upper - lower_bound) * share) * 1000.0, 3)
        if bound != "+Inf":
            lower_bound = float(bound)
        lower_count = count
    return round(lower_bound * 1000.0, 3)


def delta(newer: Sample, older: Optional[Sample]) -> Dict[str, Any]:
    """Rates between two samples (``older`` ``None``: since start)."""
    if older is None:
        older = Sample(newer.time, 0, (), 0.0, ())
        seconds = None
    else:
        seconds = max(newer.time - older.time, 0.0)
    requests = max(newer.requests - older.requests, 0)
    old_status = dict(older.status)
    status = {k: max(v - old_status.get(k, 0), 0) for k, v in newer.status}
    old_hist = dict(older.histogram)
    histogram = [(k, max(v - old_hist.get(k, 0), 0)) for k, v in newer.histogram]
    errors = status.get("5xx", 0)
    latency = newer.latency_ms_sum - older.latency_ms_sum
    return {
        "seconds": round(seconds, 3) if seconds is not None else None,
        "requests": requests,
        "requests_per_second": round(requests / seconds, 3) if seconds else None,
        "status": status,
        "error_rate": round(errors / requests, 4) if requests else 0.0,
        "client_error_rate": round(status.get("4xx", 0) / requests, 4) if requests else 0.0,
        "avg_latency_ms": round(latency / requests, 3) if requests else 0.0,
        "p50_ms": percentile(histogram, 0.50),
        "p90_ms": percentile(histogram, 0.90),
        "p99_ms": percentile(histogram, 0.99),
    }


class StatsSampler:
    """Samples ``snapshot()`` every ``interval`` seconds on ``clock``."""

    def __init__(
        self,
        snapshot: Callable[[], Mapping[str, Any]],
        clock: Any,
        interval: float = 1.0,
        keep_seconds: float = 300.0,
    ) -> None:
        self.snapshot = snapshot
        self.clock = clock
        self.interval = interval
        self.samples: Deque[Sample] = deque(maxlen=int(keep_seconds / interval) + 2)
        self._call: Optional[LoopingCall] = None

    def start(self) -> None:
        if self._call is not None:
            return
        self._call = LoopingCall(self.sample)
        self._call.clock = self.clock
        self._call.start(self.interval, now=True)

    def stop(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.running:
            call.stop()

    def current(self) -> Optional[Sample]:
        try:
            return sample_of(self.clock.seconds(), self.snapshot())
        except Exception:  # the segment is gone (shutting down)
            return None

    def sample(self) -> None:
        current = self.current()
        if current is not None:
            self.samples.append(current)

    def window(self, seconds: float, now: Optional[Sample] = None) -> Dict[str, Any]:
        """Rates over (about) the last ``seconds``; since start when no sample is that old."""
        now = now or self.current()
        if now is None:
            return {}
        older = None
        for sample in self.samples:
            if now.time - sample.time <= seconds + self.interval / 2:
                older = sample
                break
        if older is not None and older.time >= now.time:
            older = None
        result = delta(now, older)
        result["window_seconds"] = seconds
        return result

    def windows(self) -> Dict[str, Dict[str, Any]]:
        now = self.current()
        if now is None:
            return {}
        result = {f"last_{seconds}s": self.window(seconds, now) for seconds in WINDOWS}
        result["since_start"] = delta(now, None)
        return result
