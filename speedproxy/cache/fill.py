"""Request coalescing: one origin response for a cache key, shared as it arrives.

The first request that misses a key (the *leader*) goes to the origin and
registers a :class:`Fill`; requests for the same key that come meanwhile
attach to it instead of going to the origin themselves, and are fed the
leader's response head and body as they arrive (not after it is complete).
A response that turns out not to be storable releases them to the origin,
so uncacheable keys are never serialised behind one request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Dict, List, Optional

from speedproxy.filters.messages import LocalResponse, SharedResponse
from speedproxy.proxy.http1 import ResponseHead

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.proxy.exchange import Exchange


def set_cache_status(head: ResponseHead, value: bytes) -> None:
    """Add our ``Cache-Status`` member to a response head (RFC 9211: a cache
    nearer the client appends its member to those of the caches behind it)."""
    lowered = head.lowered
    if b"cache-status" in lowered:
        index = lowered.index(b"cache-status")
        name, previous = head.headers[index]
        head.headers[index] = (name, previous + b", " + value)
        return
    head.headers.append((b"Cache-Status", value))
    lowered.append(b"cache-status")


def copy_head(head: ResponseHead) -> ResponseHead:
    """A copy of a response head for another client (its own header lists)."""
    copy = ResponseHead()
    copy.version = head.version
    copy.status = head.status
    copy.reason = head.reason
    copy.headers = list(head.headers)
    copy.lowered = list(head.lowered)
    copy.content_length = head.content_length
    copy.chunked = head.chunked
    copy.keep_alive = head.keep_alive
    copy.connection_tokens = head.connection_tokens
    copy.streaming = head.streaming
    copy.upgrade = None
    copy.speedproxy = head.speedproxy
    return copy


class Fill(SharedResponse):
    """The origin response for one key, as the leader receives it."""

    def __init__(self, table: Dict[bytes, "Fill"], key: bytes, max_replay: int) -> None:
        self.key = key
        self._table = table
        self._max_replay = max_replay
        self.followers: List["Exchange"] = []
        self.head: Optional[ResponseHead] = None
        self.no_body = False
        #: The body so far, replayed to requests that attach late.
        self.chunks: List[bytes] = []
        self.size = 0
        table[key] = self

    @property
    def registered(self) -> bool:
        return self._table.get(self.key) is self

    def _unregister(self) -> None:
        if self._table.get(self.key) is self:
            del self._table[self.key]

    # -- followers --------------------------------------------------------------

    def attach(self, exchange: "Exchange") -> None:
        self.followers.append(exchange)
        head = self.head
        if head is not None:
            exchange.response_head(copy_head(head), self.no_body)
            for chunk in self.chunks:
                if exchange.finished:
                    return
                exchange.response_body(chunk)

    def detach(self, exchange: "Exchange") -> None:
        try:
            self.followers.remove(exchange)
        except ValueError:
            pass

    def _each(self) -> List["Exchange"]:
        return [exchange for exchange in self.followers if not exchange.finished]

    # -- the leader's response ---------------------------------------------------

    def head_arrived(self, head: ResponseHead, no_body: bool, cache_status: bytes) -> None:
        """A storable response head: followers get it now, with ``cache_status``."""
        self.head = shared = copy_head(head)
        set_cache_status(shared, cache_status)
        self.no_body = no_body
        for exchange in self._each():
            exchange.response_head(copy_head(shared), no_body)

    def body_arrived(self, data: bytes) -> None:
        if self.registered:
            self.size += len(data)
            if self.size <= self._max_replay:
                self.chunks.append(data)
            else:
                self._unregister()  # too large to replay: nobody new attaches
                self.chunks = []
        for exchange in self._each():
            exchange.response_body(data)

    def completed(self) -> None:
        """The whole response arrived."""
        self._unregister()
        followers, self.followers = self._each(), []
        for exchange in followers:
            exchange.source = None
            exchange.response_done(False)
        self.chunks = []

    def release(self) -> None:
        """Not storable (or not usable for followers): they ask the origin themselves."""
        self._unregister()
        followers, self.followers = self._each(), []
        for exchange in followers:
            exchange.go_to_backend()

    def deliver(self, answer: Callable[["Exchange"], LocalResponse]) -> None:
        """Answer every follower from the cache (the stored response was revalidated)."""
        self._unregister()
        followers, self.followers = self._each(), []
        for exchange in followers:
            exchange.source = None
            exchange.respond_locally(answer(exchange))

    def failed(self) -> None:
        """The leader got no complete response."""
        self._unregister()
        followers, self.followers = self._each(), []
        for exchange in followers:
            if exchange.response_started:
                exchange.shared_response_failed()
            else:
                exchange.go_to_backend()
