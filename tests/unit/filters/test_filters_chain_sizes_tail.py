"""``FilterChain.sizes_tail``: a chain whose body filter asks for it sends a body that
leaves whole at its end with its length (``Exchange.response_done``)."""

from __future__ import annotations

from speedproxy.filters.base import Filter
from speedproxy.filters.chain import FilterChain
from speedproxy.testing import InMemoryProxy


class _Rewriter(Filter):
    """Keeps the whole body and gives it back, changed, at its end."""

    wants_body = True
    rewrites_body = True

    def __init__(self, sizes_tail: bool) -> None:
        self.sizes_tail = sizes_tail

    def response_body(self, view, data):
        view.state.setdefault("body", []).append(bytes(data))
        return b""

    def response_end(self, view):
        return b"".join(view.state.pop("body", [])).upper()


def test_the_flag_is_any_body_filters() -> None:
    assert FilterChain([_Rewriter(False)]).sizes_tail is False
    assert FilterChain([_Rewriter(False), _Rewriter(True)]).sizes_tail is True
    assert FilterChain([Filter()]).sizes_tail is False


CONFIG = """\
backends:
  default:
    - {id: b1, host: 10.1.0.1, port: 8081}
routing:
  default: {path: /, upstream: default, load_balancer: round_robin}
"""


def _fetch(sizes_tail: bool):
    proxy = InMemoryProxy(CONFIG)
    for route in proxy.core.router.routes:
        route.filters = FilterChain([_Rewriter(sizes_tail)])
    client = proxy.client()
    client.send(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n")
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel")
    backend.send(b"lo")
    return client.response()


def test_a_chain_that_sizes_its_tail_sends_the_length() -> None:
    response = _fetch(True)
    assert response.body == b"HELLO"
    assert response.header(b"Content-Length") == b"5" and response.header(b"Transfer-Encoding") is None


def test_other_chains_stream_chunked_as_before() -> None:
    response = _fetch(False)
    assert response.body == b"HELLO"
    assert response.header(b"Transfer-Encoding") == b"chunked" and response.header(b"Content-Length") is None
