"""A stored response, as both tiers keep it and the hit path serves it."""

from __future__ import annotations

import json
import os
from typing import Any, List, Optional, Tuple

from speedproxy.cache.conditional import first_value
from speedproxy.cache.policy import StoredPolicy

Headers = List[Tuple[bytes, bytes]]

#: Fields never stored as part of the head that is served (set per answer).
_PER_ANSWER = frozenset(
    {b"age", b"cache-status", b"x-request-id", b"x-speedproxy", b"via", b"content-length", b"connection", b"transfer-encoding"}
)

_META_MAGIC = b"SPCACHE1\n"


class CachedObject:
    """One stored response: its head, body and freshness policy.

    :attr:`block` is the stored header lines pre-serialised (without the
    fields set per answer), so a hit costs a few concatenations.
    """

    __slots__ = (
        "key",
        "variant",
        "vary",
        "status",
        "reason",
        "headers",
        "lowered",
        "body",
        "policy",
        "block",
        "size",
        "request_time",
        "file",
        "answer_memo",
    )

    def __init__(
        self,
        key: bytes,
        variant: bytes,
        vary: Tuple[bytes, ...],
        status: int,
        reason: bytes,
        headers: Headers,
        lowered: List[bytes],
        body: bytes,
        policy: StoredPolicy,
        request_time: float,
    ) -> None:
        self.key = key
        self.variant = variant
        self.vary = vary
        self.status = status
        self.reason = reason
        self.body = body
        self.policy = policy
        self.request_time = request_time
        #: The open disk entry holding a large body (``body`` is then empty).
        self.file: Optional[Any] = None
        #: The head lines of the last whole answer, with the ages they hold for (:mod:`speedproxy.cache.hit`).
        self.answer_memo: Optional[tuple] = None
        self.set_headers(headers, lowered)

    def set_headers(self, headers: Headers, lowered: List[bytes]) -> None:
        """Replace the stored head (after a 304 freshened it)."""
        self.headers = headers
        self.lowered = lowered
        self.block = b"".join(
            b"%s: %s\r\n" % pair for pair, name in zip(headers, lowered) if name not in _PER_ANSWER
        )
        self.size = len(self.body) + len(self.block) + len(self.key) + 200
        self.answer_memo = None

    def for_hit(self, body: bytes, file: Optional[Any]) -> "CachedObject":
        """A copy of this stored head carrying ``body`` (or the open ``file``) for one hit."""
        hit = CachedObject.__new__(CachedObject)
        hit.key = self.key
        hit.variant = self.variant
        hit.vary = self.vary
        hit.status = self.status
        hit.reason = self.reason
        hit.headers = self.headers
        hit.lowered = self.lowered
        hit.body = body
        hit.policy = self.policy
        hit.block = self.block
        hit.size = self.size - len(self.body) + len(body)
        hit.request_time = self.request_time
        hit.file = file
        hit.answer_memo = None
        return hit

    @property
    def length(self) -> int:
        """The body's length, wherever it is."""
        file = self.file
        return file.length if file is not None else len(self.body)

    def read_body(self, first: int = 0, last: Optional[int] = None) -> bytes:
        """Bytes ``first..last`` (inclusive) of the body."""
        file = self.file
        if last is None:
            last = self.length - 1
        if file is None:
            return self.body[first : last + 1]
        return os.pread(file.fd, last + 1 - first, file.offset + first)

    def header(self, name: bytes) -> Optional[bytes]:
        return first_value(self.headers, self.lowered, name)

    # -- disk form ----------------------------------------------------------------

    def meta(self) -> bytes:
        """Everything but the body, for the disk tier."""
        policy = self.policy
        numbers = {
            "status": self.status,
            "reason": self.reason.decode("latin-1"),
            "vary": [name.decode("latin-1") for name in self.vary],
            "request_time": self.request_time,
            "policy": [
                policy.lifetime,
                policy.initial_age,
                policy.response_time,
                policy.no_cache,
                policy.no_stale,
                policy.swr,
                policy.sie,
            ],
        }
        head = b"".join(b"%s: %s\r\n" % pair for pair in self.headers)
        return _META_MAGIC + json.dumps(numbers).encode("ascii") + b"\n" + head

    @classmethod
    def from_meta(cls, key: bytes, variant: bytes, meta: bytes, body: bytes) -> Optional["CachedObject"]:
        """Rebuild an object from :meth:`meta`; ``None`` if it is not ours."""
        if not meta.startswith(_META_MAGIC):
            return None
        try:
            line, _, head = meta[len(_META_MAGIC):].partition(b"\n")
            numbers = json.loads(line)
            headers: Headers = []
            for field in head.split(b"\r\n"):
                if field:
                    name, _, value = field.partition(b": ")
                    headers.append((name, value))
            lifetime, initial, response_time, no_cache, no_stale, swr, sie = numbers["policy"]
            return cls(
                key,
                variant,
                tuple(name.encode("latin-1") for name in numbers["vary"]),
                int(numbers["status"]),
                numbers["reason"].encode("latin-1"),
                headers,
                [name.lower() for name, _ in headers],
                body,
                StoredPolicy(lifetime, initial, response_time, no_cache, no_stale, swr, sie),
                float(numbers["request_time"]),
            )
        except (ValueError, KeyError, TypeError):
            return None


class VaryMarker:
    """Stored under a primary key whose responses vary: the fields they vary on."""

    __slots__ = ("names",)

    def __init__(self, names: Tuple[bytes, ...]) -> None:
        self.names = names

    def meta(self) -> bytes:
        return b"SPVARY1\n" + b",".join(self.names)

    @classmethod
    def from_meta(cls, meta: bytes) -> Optional["VaryMarker"]:
        if not meta.startswith(b"SPVARY1\n"):
            return None
        names = meta[8:]
        return cls(tuple(names.split(b",")) if names else ())
