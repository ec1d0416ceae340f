"""The ``local_response`` hook of the filter seam: filters see (and add to) local answers."""

from __future__ import annotations

from typing import List

from speedproxy.filters import Filter, FilterChain, LocalResponse


class Base(Filter):
    pass


class Decorating(Filter):
    def __init__(self, name: str, log: List[str]) -> None:
        self.name = name
        self.log = log

    def local_response(self, request, response) -> None:
        self.log.append(self.name)
        response.headers.append((b"X-" + self.name.encode(), b"1"))


def test_only_filters_with_the_hook_are_called_last_to_first() -> None:
    log: List[str] = []
    chain = FilterChain([Decorating("a", log), Base(), Decorating("b", log)])
    assert chain.decorates
    response = LocalResponse(200)
    chain.local_response(object(), response)
    assert log == ["b", "a"]
    assert response.headers == [(b"X-b", b"1"), (b"X-a", b"1")]
    assert not FilterChain([Base()]).decorates


def test_a_local_answer_through_the_proxy_is_decorated_once() -> None:
    from speedproxy.testing import InMemoryProxy

    log: List[str] = []

    class Answering(Filter):
        def request(self, request):
            return LocalResponse(403, [("Content-Type", "text/plain")], b"no\n")

    proxy = InMemoryProxy()
    route = proxy.core.routes[0]
    route.filters = FilterChain([Decorating("a", log), Answering()])
    client = proxy.client()
    client.send(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
    response = client.response()
    assert response.status == 403 and response.header(b"x-a") == b"1"
    assert log == ["a"]
