"""``speedproxy.proxy.exchange.sized_head``: a held-back chunked head re-framed with its length
(a body filter's tail that is the whole body leaves with ``Content-Length``)."""

from __future__ import annotations

import pytest

from speedproxy.proxy.exchange import sized_head
from speedproxy.proxy.forwarding import client_response_head

HEADERS = [(b"Content-Type", b"application/json"), (b"X-Note", b"Transfer-Encoding: chunked")]


@pytest.mark.parametrize("keep_alive", [True, False])
def test_a_chunked_head_gets_the_length_instead(keep_alive: bool) -> None:
    def head(framing: bytes) -> bytes:
        return client_response_head(
            b"HTTP/1.1", 200, b"OK", HEADERS, (), request_id=b"r1", server_tag=b"Via: 1.1 speedproxy\r\n",
            framing=framing, keep_alive=keep_alive,
        )

    chunked = head(b"Transfer-Encoding: chunked\r\n")
    assert sized_head(chunked, 194) == head(b"Content-Length: 194\r\n")


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Note: Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        b"",
    ],
)
def test_a_head_not_framed_as_chunked_is_left(head: bytes) -> None:
    assert sized_head(head, 3) is None
