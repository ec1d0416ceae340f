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


def test_two_workers_share_a_file_whole_lines_none_lost_on_sigterm(stack, proxy_factory, tmp_path) -> None:
    """Buffered lines of both workers reach the file whole, and SIGTERM loses none."""
    origin = stack.backend()
    path = tmp_path / "access.log"
    proxy = proxy_factory(origin, access_log=str(path), workers=2)
    total = 60
    for number in range(total):
        _request(proxy, number)
    proxy.stop()  # SIGTERM: the workers flush on the way out
    lines = path.read_text().splitlines()
    assert len(lines) == total
    assert all(LINE.match(line) for line in lines), lines[:3]
    assert sorted(int(LINE.match(line).group("n")) for line in lines) == list(range(total))


def test_sigusr1_reopens_the_file_without_losing_a_line(stack, proxy_factory, tmp_path) -> None:
    import signal

    origin = stack.backend()
    path = tmp_path / "access.log"
    proxy = proxy_factory(origin, access_log=str(path), workers=2)
    for number in range(10):
        _request(proxy, number)
    rotated = tmp_path / "access.log.1"
    path.rename(rotated)  # logrotate moves the file...
    proxy.signal(signal.SIGUSR1)  # ...then postrotate: SIGUSR1 to the master
    wait_until(path.exists, timeout=5.0, what="a new access.log after SIGUSR1")
    for number in range(10, 20):
        _request(proxy, number)
    proxy.stop()
    old = [int(LINE.match(line).group("n")) for line in rotated.read_text().splitlines()]
    new = [int(LINE.match(line).group("n")) for line in path.read_text().splitlines()]
    assert sorted(old + new) == list(range(20))
    assert set(range(10, 20)) <= set(new)


def test_json_lines(stack, proxy_factory, tmp_path) -> None:
    import json

    origin = stack.backend()
    path = tmp_path / "access.json"
    proxy = proxy_factory(origin, access_log=str(path), access_log_format="json")
    _request(proxy, 7)
    proxy.stop()
    record = json.loads(path.read_text().splitlines()[0])
    assert record["target"] == "/logged/7?q=1" and record["status"] == 200
    assert record["host"] == "test.local" and record["user_agent"] == "e2e-agent/1.0"
    assert record["upstream"] == f"127.0.0.1:{origin.port}"
