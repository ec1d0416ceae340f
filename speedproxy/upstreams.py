"""Run-time state of upstream groups and their backends in one worker."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Deque, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from speedproxy.balancers import IBalancer, make_balancer
from speedproxy.config.model import BackendConfig, HealthCheckConfig
from speedproxy.panic import in_panic

_DEFAULT_CHECK = HealthCheckConfig()

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.stats.shared import SharedView


@dataclass(eq=False)
class Backend:
    """One origin server as the data path sees it.

    The config part is replaced in place on reload, so counters survive a
    weight or timeout change.
    """

    config: BackendConfig
    #: Requests in flight to this backend from this worker.
    local_connections: int = 0
    healthy: bool = True
    requests: int = 0
    failures: int = 0
    #: Exponentially weighted moving average of response time, in seconds.
    ewma_response_time: float = 0.0
    #: Load the backend reports about itself as a fraction of its capacity:
    #: 0.0 idle .. 1.0 saturated (a CPU percentage is divided by 100 before it
    #: is stored here).  Used by the ``performance`` balancer; 0.0 = unknown.
    reported_load: float = 0.0
    #: Clock time (``reactor.seconds()``, i.e. wall-clock seconds) at which the
    #: backend last became available; 0.0 = unknown.  The ``performance``
    #: balancer ramps its share up over its slow-start window from here.
    up_since: float = 0.0

    #: Passive health: consecutive failed requests seen by this worker.
    consecutive_failures: int = 0
    #: Passive health: out of rotation until this clock time (0: in).
    down_until: float = 0.0

    #: Whether this backend's answers carry ``X-Speedproxy`` (it is a
    #: speedproxy too: a cache in front of ours, see ``cache.cascade_purge``),
    #: the version it announced, when it was last seen (clock time, 0.0:
    #: never) and how many answers showed it.
    is_speedproxy: bool = False
    version: str = ""
    last_checked: float = 0.0
    check_count: int = 0

    #: Index of this backend in the shared stats segment (-1: none).
    stats_index: int = -1
    #: The worker's view of the stats segment, for counts across workers.
    shared: Optional["SharedView"] = None
    #: The group this backend belongs to (told when passive health changes).
    group: Optional["UpstreamGroup"] = field(default=None, repr=False)

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def active_connections(self) -> int:
        """Requests in flight to this backend from *all* workers.

        Read from the shared stats segment when the worker has one (as
        nginx's upstream ``zone``), so balancers agree across workers.
        """
        shared = self.shared
        if shared is None or self.stats_index < 0:
            return self.local_connections
        return shared.backend_active(self.stats_index)

    @active_connections.setter
    def active_connections(self, value: int) -> None:
        # For tests and single-process use; the data path calls
        # request_started()/request_finished().
        self._add_local(value - self.local_connections)

    def _add_local(self, delta: int) -> None:
        self.local_connections += delta
        shared = self.shared
        if shared is not None and self.stats_index >= 0:
            shared.add_active(self.stats_index, delta)

    def request_started(self) -> None:
        """One more request in flight to this backend."""
        self.requests += 1
        self.local_connections += 1
        shared = self.shared
        if shared is not None and self.stats_index >= 0:
            shared.started(self.stats_index)

    def request_finished(self, failed: bool) -> None:
        """A request to this backend ended (``failed``: no usable answer)."""
        self.local_connections -= 1
        if failed:
            self.failures += 1
        shared = self.shared
        if shared is not None and self.stats_index >= 0:
            shared.finished(self.stats_index, failed)

    @property
    def weight(self) -> int:
        return self.config.weight

    @property
    def available(self) -> bool:
        """Can this backend take one more request right now?"""
        config = self.config
        if not (config.active and self.healthy and not self.down_until and config.weight > 0):
            return False
        shared = self.shared
        if shared is None or self.stats_index < 0:
            return self.local_connections < config.max_conn
        return shared.backend_active(self.stats_index) < config.max_conn

    @property
    def available_in_panic(self) -> bool:
        """:attr:`available`, whatever passive checks say (the group is in panic)."""
        config = self.config
        if not (config.active and self.healthy and config.weight > 0):
            return False
        shared = self.shared
        if shared is None or self.stats_index < 0:
            return self.local_connections < config.max_conn
        return shared.backend_active(self.stats_index) < config.max_conn

    def eligible(self, panic: bool) -> bool:
        """Would this backend take a request once it has a free slot?"""
        config = self.config
        return bool(config.active and self.healthy and config.weight > 0 and (panic or not self.down_until))

    def saw_speedproxy(self, version: str, now: float) -> None:
        """An answer of this backend carried ``X-Speedproxy: <version>``."""
        self.is_speedproxy = True
        self.version = version
        self.last_checked = now
        self.check_count += 1

    # -- passive health (circuit breaker) --------------------------------------

    @property
    def health_check(self) -> HealthCheckConfig:
        return self.config.health_check or _DEFAULT_CHECK

    def record_failure(self, now: float) -> None:
        """A request failed (connect error, timeout, broken answer)."""
        check = self.health_check
        self.consecutive_failures += 1
        if check.passive_failures and self.consecutive_failures >= check.passive_failures:
            self.mark_down(now + check.unhealthy_timeout)

    def record_5xx(self, now: float) -> None:
        """The backend answered 5xx; a failure only when ``passive_5xx``."""
        if self.health_check.passive_5xx:
            self.record_failure(now)
        else:
            self.consecutive_failures = 0

    def record_success(self) -> None:
        self.consecutive_failures = 0

    def mark_down(self, until: float) -> None:
        """Take the backend out until ``until`` (and tell the other workers)."""
        self.down_until = until
        shared = self.shared
        if shared is not None and self.stats_index >= 0:
            shared.set_down_until(self.stats_index, until)
        if self.group is not None:
            self.group.update_panic()

    def half_open(self) -> None:
        """The down period is over: let the next request probe the backend.

        One more failure takes it out again at once.
        """
        self.down_until = 0.0
        passive = self.health_check.passive_failures
        self.consecutive_failures = max(0, passive - 1)
        shared = self.shared
        if shared is not None and self.stats_index >= 0:
            shared.set_down_until(self.stats_index, 0.0)
        if self.group is not None:
            self.group.update_panic()

    def record_response_time(self, seconds: float, alpha: float = 0.3) -> None:
        """Fold one observed response time into the EWMA."""
        if self.ewma_response_time == 0.0:
            self.ewma_response_time = seconds
        else:
            self.ewma_response_time += alpha * (seconds - self.ewma_response_time)


@dataclass(eq=False)
class UpstreamGroup:
    """A named set of backends (a ``backends:`` entry of the config)."""

    name: str
    backends: List[Backend] = field(default_factory=list)
    retry_budget: "RetryBudget" = field(default_factory=lambda: RetryBudget(0.2))
    #: Percent of backends healthy by passive checks below which the group
    #: ignores passive verdicts (see :mod:`speedproxy.panic`).
    panic_threshold: float = 50.0
    #: In panic now: balancers pick among backends passive checks took out too.
    panic: bool = False
    #: The panic state last exported and logged (by the core's housekeeping).
    panic_reported: bool = False
    #: Index of this group in the shared stats segment (-1: none).
    stats_index: int = -1
    #: Exchanges waiting for a backend slot, oldest first (see
    #: :class:`speedproxy.proxy.backlog.Backlog`, which serves them).
    waiting: Deque[Any] = field(default_factory=deque)
    #: The :class:`~speedproxy.proxy.backlog.Backlog` of this group, if queueing.
    backlog: Optional[Any] = None
    #: Credentials added to its requests and checks of its answers
    #: (:class:`speedproxy.edge.upstream_credentials.UpstreamRules`); ``None``: none.
    rules: Optional[Any] = None

    def apply(self, configs: Sequence[BackendConfig]) -> None:
        """Replace membership with ``configs``, keeping state of kept ids."""
        existing = {backend.id: backend for backend in self.backends}
        updated = []
        for config in configs:
            backend = existing.get(config.id)
            if backend is None:
                backend = Backend(config)
            else:
                backend.config = config
            backend.group = self
            updated.append(backend)
        self.backends = updated
        self.update_panic()

    def update_panic(self) -> None:
        """Recompute :attr:`panic` (after a passive or active verdict changed)."""
        self.panic = in_panic(self.backends, self.panic_threshold)

    def get(self, backend_id: str) -> Optional[Backend]:
        for backend in self.backends:
            if backend.id == backend_id:
                return backend
        return None


class RetryBudget:
    """Bounds retries to a fraction of requests, so failures cannot storm.

    Each request deposits ``ratio`` of a token and time deposits
    ``per_second``; a retry spends a whole token.  Tokens are capped, so a
    long healthy period buys at most ``cap`` immediate retries.
    """

    def __init__(self, ratio: float, per_second: float = 1.0, cap: float = 10.0) -> None:
        self.ratio = ratio
        self.per_second = per_second
        self.cap = cap
        self.tokens = cap
        self._last = 0.0

    def deposit(self) -> None:
        """One request was sent."""
        tokens = self.tokens + self.ratio
        self.tokens = tokens if tokens < self.cap else self.cap

    def try_spend(self, now: float) -> bool:
        """May one retry happen now?  Spends a token if so."""
        if self._last:
            self.tokens = min(self.cap, self.tokens + (now - self._last) * self.per_second)
        self._last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class BalancedGroup:
    """An upstream group seen through one balancer (one per route/protocol)."""

    def __init__(self, group: UpstreamGroup, balancer_name: str) -> None:
        self.group = group
        self.balancer_name = balancer_name
        self.balancer: IBalancer = make_balancer(balancer_name)
        self._seen: Tuple[Tuple[str, int], ...] = ()
        self.refresh()

    def refresh(self) -> None:
        """Tell the balancer about membership if it changed."""
        seen = tuple((b.id, b.config.weight) for b in self.group.backends)
        if seen != self._seen or not seen:
            self._seen = seen
            self.balancer.update(self.group.backends)

    def pick(self, client_key: str, exclude: Iterable[Backend] = ()) -> Optional[Backend]:
        """Choose a backend for one request, or ``None`` when none can take it."""
        if self.group.panic:
            return self._pick_in_panic(client_key, exclude)
        if exclude:
            excluded = set(exclude)
            candidates = [b for b in self.group.backends if b.available and b not in excluded]
        else:
            candidates = [b for b in self.group.backends if b.available]
        if not candidates:
            return None
        return self.balancer.pick(candidates, client_key)

    def _pick_in_panic(self, client_key: str, exclude: Iterable[Backend]) -> Optional[Backend]:
        """:meth:`pick` ignoring passive verdicts (active ones still count)."""
        excluded = set(exclude)
        candidates = [b for b in self.group.backends if b.available_in_panic and b not in excluded]
        if not candidates:
            return None
        return self.balancer.pick(candidates, client_key)

    def can_wait(self, exclude: Iterable[Backend] = ()) -> bool:
        """Would some backend take the request once it has a free slot?

        Asked when :meth:`pick` found none: ``True`` means every backend that
        may serve is at ``max_conn`` (the request may queue), ``False`` that
        none may serve at all (503 at once).
        """
        excluded = set(exclude)
        panic = self.group.panic
        return any(b.eligible(panic) and b not in excluded for b in self.group.backends)


def build_groups(
    backends: Mapping[str, Sequence[BackendConfig]],
    previous: Optional[Mapping[str, UpstreamGroup]] = None,
) -> Dict[str, UpstreamGroup]:
    """Build (or update in place) the groups for a backends config section."""
    groups: Dict[str, UpstreamGroup] = {}
    for name, configs in backends.items():
        group = (previous or {}).get(name) or UpstreamGroup(name)
        group.apply(configs)
        groups[name] = group
    return groups
