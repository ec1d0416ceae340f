"""Rate limits for the frames an HTTP/2 client may send cheaply and in bulk.

Each guarded kind of frame (RST_STREAM of streams still being served, the
"rapid reset" of CVE-2023-44487; SETTINGS; PING) draws from a token bucket
per connection: ``limit`` tokens, refilled at ``limit / window`` a second.
A client that empties one is flooding and its connection is closed with
GOAWAY ``ENHANCE_YOUR_CALM`` (:mod:`speedproxy.proxy.http2`).  Browsers and
players stay far below these figures: they reset a few streams when a
viewer seeks, and send a handful of SETTINGS and PINGs per connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: (tokens, seconds to refill them all) per guarded frame kind.
RESET_LIMIT = (200, 10.0)
SETTINGS_LIMIT = (50, 10.0)
PING_LIMIT = (50, 10.0)


@dataclass
class FloodGuard:
    """A token bucket: :meth:`hit` is False once the client overdid it."""

    limit: int
    window: float
    tokens: float = field(init=False)
    last: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self.tokens = float(self.limit)

    def hit(self, now: float) -> bool:
        """Count one frame at clock time ``now``; False: over the limit."""
        elapsed = now - self.last
        self.last = now
        if elapsed > 0:
            self.tokens = min(float(self.limit), self.tokens + elapsed * self.limit / self.window)
        self.tokens -= 1.0
        return self.tokens >= 0.0


def guards(now: float) -> "tuple[FloodGuard, FloodGuard, FloodGuard]":
    """Fresh (reset, settings, ping) guards starting at ``now``."""
    made = []
    for limit, window in (RESET_LIMIT, SETTINGS_LIMIT, PING_LIMIT):
        guard = FloodGuard(limit, window)
        guard.last = now
        made.append(guard)
    return made[0], made[1], made[2]
