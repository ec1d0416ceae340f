"""Tests for :mod:`speedproxy.filters.chain`."""

from __future__ import annotations

from types import SimpleNamespace
from typing import List

import pytest
from twisted.internet.defer import Deferred, succeed

from speedproxy.filters import Filter, FilterChain, LocalResponse
from speedproxy.filters.messages import FilterRequest


class Recording(Filter):
    def __init__(self, name: str, log: List[str], answer: object = None, wants_body: bool = False) -> None:
        self.name = name
        self.log = log
        self.answer = answer
        self.wants_body = wants_body

    def request(self, request):
        self.log.append("request " + self.name)
        return self.answer

    def response_head(self, request, response):
        self.log.append("head " + self.name)

    def response_body(self, request, data):
        self.log.append("body " + self.name)
        return data + self.name.encode()

    def response_end(self, request):
        self.log.append("end " + self.name)
        return b"<" + self.name.encode() + b">"


def test_request_hooks_run_in_order_until_one_answers() -> None:
    log: List[str] = []
    answer = LocalResponse(429)
    chain = FilterChain([Recording("a", log), Recording("b", log, answer), Recording("c", log)])
    assert chain.request(object()) is answer
    assert log == ["request a", "request b"]


def test_no_answer_goes_on_to_a_backend() -> None:
    log: List[str] = []
    assert FilterChain([Recording("a", log), Recording("b", log)]).request(object()) is None
    assert log == ["request a", "request b"]


def test_a_deferred_resumes_the_chain_after_it() -> None:
    log: List[str] = []
    later: Deferred = Deferred()
    chain = FilterChain([Recording("a", log, later), Recording("b", log), Recording("c", log, LocalResponse(403))])
    outcome = chain.request(object())
    assert isinstance(outcome, Deferred) and log == ["request a"]
    results: list = []
    outcome.addCallback(results.append)
    later.callback(None)
    assert log == ["request a", "request b", "request c"]
    assert results[0].status == 403


def test_a_deferred_may_answer() -> None:
    chain = FilterChain([Recording("a", [], succeed(LocalResponse(204))), Recording("b", [])])
    results: list = []
    chain.request(object()).addCallback(results.append)
    assert results[0].status == 204


def test_a_wrong_return_value_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="expected None, a LocalResponse or a Deferred"):
        FilterChain([Recording("a", [], answer="oops")]).request(object())


def test_response_hooks_run_last_to_first_and_only_body_filters_see_the_body() -> None:
    log: List[str] = []
    chain = FilterChain([Recording("a", log, wants_body=True), Recording("b", log), Recording("c", log, wants_body=True)])
    assert chain.wants_body
    chain.response_head(object(), object())
    view = SimpleNamespace(body_filters=chain.body_filters)
    assert chain.response_body(view, b"x") == b"xca"
    assert chain.response_end(view) == b"<c>a<a>"
    assert log == ["head c", "head b", "head a", "body c", "body a", "end c", "body a", "end a"]


class WhenAsked(Recording):
    """A body filter whose body hooks run only for the responses it asks for."""

    body_when_asked = True

    def __init__(self, name: str, log: List[str], ask: bool) -> None:
        super().__init__(name, log, wants_body=True)
        self.ask = ask

    def response_head(self, request, response):
        super().response_head(request, response)
        if self.ask:
            request.want_body(self)


def _view(chain: FilterChain) -> FilterRequest:
    exchange = SimpleNamespace(route=SimpleNamespace(filters=chain))
    return FilterRequest(exchange, chain.body_filters)  # type: ignore[arg-type]


@pytest.mark.parametrize("ask", [False, True])
def test_a_body_filter_when_asked_sees_only_the_bodies_it_asks_for(ask: bool) -> None:
    log: List[str] = []
    asking = WhenAsked("w", log, ask)
    chain = FilterChain([asking, Recording("a", log), Recording("c", log, wants_body=True)])
    assert chain.wants_body and chain.body_filters == (chain.filters[2],)
    view = _view(chain)
    chain.response_head(view, object())
    assert chain.response_body(view, b"x") == (b"xcw" if ask else b"xc")
    assert chain.response_end(view) == (b"<c>w<w>" if ask else b"<c>")
    expected_bodies = ["body c", "body w", "end c", "body w", "end w"] if ask else ["body c", "end c"]
    assert log == ["head c", "head a", "head w"] + expected_bodies


def test_a_filter_asking_for_the_body_takes_its_place_in_the_order() -> None:
    log: List[str] = []
    first, middle = Recording("f", log, wants_body=True), WhenAsked("m", log, True)
    chain = FilterChain([first, middle, Recording("l", log, wants_body=True)])
    view = _view(chain)
    chain.response_head(view, object())
    view.want_body(middle)  # (twice: still once)
    assert view.body_filters == (chain.filters[2], middle, first)
    assert chain.response_body(view, b"x") == b"xlmf"


def test_without_an_ask_and_other_body_filters_the_body_is_relayed_as_is() -> None:
    chain = FilterChain([WhenAsked("w", [], False)])
    view = _view(chain)
    chain.response_head(view, object())
    assert chain.wants_body and view.body_filters == ()  # (the exchange then skips the body hooks)


def test_a_chain_without_body_filters_does_not_want_the_body() -> None:
    assert not FilterChain([Recording("a", [])]).wants_body


class RequestOnly(Filter):
    def request(self, request):
        return None


def test_hooks_nobody_overrides_are_not_run() -> None:
    chain = FilterChain([RequestOnly(), RequestOnly()])
    assert not chain.sees_heads and not chain.finishes and not chain.decorates
    log: List[str] = []
    chain = FilterChain([RequestOnly(), Recording("a", log)])
    assert chain.sees_heads
    chain.response_head(object(), object())
    assert log == ["head a"]


def test_a_filter_not_derived_from_the_base_class_has_the_hooks_it_defines() -> None:
    log: List[str] = []

    class Plain:
        wants_body = False

        def request(self, request):
            log.append("request")

        def response_head(self, request, response):
            log.append("head")

        def finished(self, request, complete):
            log.append("finished")

    chain = FilterChain([Plain()])
    assert chain.request(object()) is None
    chain.response_head(object(), object())
    assert chain.error(object(), 502) is None  # (it has no error hook)
    chain.finished(object(), True)
    assert log == ["request", "head", "finished"] and chain.finishes and not chain.decorates


def test_a_hook_set_on_the_instance_is_run() -> None:
    log: List[str] = []
    item = RequestOnly()
    item.response_head = lambda request, response: log.append("head")  # type: ignore[method-assign]
    FilterChain([item]).response_head(object(), object())
    assert log == ["head"]


def test_a_deferred_resumes_after_the_filters_with_a_request_hook() -> None:
    log: List[str] = []
    later: Deferred = Deferred()

    class HeadOnly(Filter):
        def response_head(self, request, response):
            return None

    chain = FilterChain([HeadOnly(), Recording("a", log, later), HeadOnly(), Recording("b", log)])
    outcome = chain.request(object())
    later.callback(None)
    assert log == ["request a", "request b"] and outcome.result is None
