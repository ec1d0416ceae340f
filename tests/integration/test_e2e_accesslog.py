"""The access log: combined format plus rt= and upstream=, to twistd's log or a file."""

from __future__ import annotations

import re

from speedproxy.testing import RawClient, wait_until

LINE = re.compile(
    r'127\.0\.0\.1 - - \[\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\] '
    r'"GET /logged/(?P<n>\d+)\?q=1 HTTP/1\.1" 200 (?P<size>\d+) "https://ref\.example/page" "e2e-agent/1\.0" '
    r"rt=\d+\.\d{3} upstream=127\.0\.0\.1:(?P<port>\d+)"
)


def _request(proxy, number: int) -> int:
    with RawClient(*proxy.address) as client:
        client.request(
            "GET",
            f"/logged/{number}?q=1",
            headers=[("User-Agent", "e2e-agent/1.0"), ("Referer", "https://ref.example/page")],
        )
        response = client.read_response()
    assert response.status == 200
    return len(response.body)


def test_access_log_line_in_twistd_log(module_proxy, module_backend) -> None:
    size = _request(module_proxy, 1)
    line = module_proxy.wait_for_log('"GET /logged/1?q=1 HTTP/1.1"', timeout=5.0)
    match = LINE.search(line)
    assert match, line
    assert int(match.group("port")) == module_backend.port
    assert int(match.group("size")) == size


def test_refused_request_is_logged(module_proxy) -> None:
    mark = module_proxy.log_mark()
    with RawClient(*module_proxy.address) as client:
        client.send(b"GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
        assert client.read_response().status == 400
    module_proxy.wait_for_log(" 400 ", timeout=5.0, since=mark)


def test_access_log_off(stack, proxy_factory) -> None:
    origin = stack.backend()
    proxy = proxy_factory(origin, access_log="off")
    _request(proxy, 2)
    proxy.stop()
    assert "/logged/2" not in proxy.log_text()


def _file_proxy(stack, proxy_factory, tmp_path):
    origin = stack.backend()
    path = tmp_path / "access.log"
    proxy = proxy_factory(origin, access_log=str(path))
    return proxy, origin, path


def test_access_log_to_file(stack, proxy_factory, tmp_path) -> None:
    proxy, origin, path = _file_proxy(stack, proxy_factory, tmp_path)
    size = _request(proxy, 3)
    proxy.stop()  # lines are buffered; stopping flushes them
    text = path.read_text()
    match = LINE.search(text)
    assert match, text
    assert int(match.group("n")) == 3
    assert int(match.group("port")) == origin.port
    assert int(match.group("size")) == size
    assert "/logged/3" not in proxy.log_text()


def test_access_log_file_is_written_while_running(stack, proxy_factory, tmp_path) -> None:
    proxy, origin, path = _file_proxy(stack, proxy_factory, tmp_path)
    _request(proxy, 4)
    wait_until(lambda: path.exists() and "/logged/4" in path.read_text(), 3.0, "the access log line in the file")
