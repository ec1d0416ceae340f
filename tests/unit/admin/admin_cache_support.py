"""Shared by the admin cache API tests: a control with a scripted cache fan-out."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred, succeed

from speedproxy.admin.site import admin_site
from speedproxy.config import parse_config

from test_admin_site import FakeControl, call  # noqa: F401  (re-exported)

CONFIG = """\
backends:
  default:
    - {id: a, host: 10.0.0.1, port: 80, admin_url: "http://10.0.0.1:9901", admin_api_key: up-key}
routing:
  default: {path: /, upstream: default, cache: {enabled: true}}
"""

Row = Dict[str, Any]


class FakeFanout:
    """Two workers (slots 0 and 1); ``answers[action](arguments)`` gives their rows."""

    def __init__(self) -> None:
        self.calls: List[Tuple[str, Dict[str, Any]]] = []
        self.answers: Dict[str, Callable[[Dict[str, Any]], List[Row]]] = {
            "purge": lambda a: [{"slot": 0, "pid": 10, "result": 2}, {"slot": 1, "pid": 11, "result": 1}],
            "clear": lambda a: [{"slot": 0, "pid": 10, "result": 5}, {"slot": 1, "pid": 11, "result": 4}],
            "keys": lambda a: [
                {"slot": 0, "pid": 10, "result": ["http://h/c", "http://h/a"]},
                {"slot": 1, "pid": 11, "result": ["http://h/b", "http://h/a"]},
            ],
            "search": lambda a: [{"slot": 0, "pid": 10, "result": ["http://h/movie"]}, {"slot": 1, "pid": 11, "result": []}],
            "info": lambda a: [
                {"slot": 0, "pid": 10, "result": info(entries=2, size=200, hits=3, disk_hits=1, misses=4)},
                {"slot": 1, "pid": 11, "result": info(entries=1, size=100, hits=1, disk_hits=2, misses=1)},
            ],
        }
        self.warms: List[Tuple[int, str, Deferred]] = []
        self.disk: Optional[Dict[str, Any]] = None

    def each(self, action: str, **arguments: Any) -> Deferred:
        self.calls.append((action, arguments))
        return succeed(self.answers[action](arguments))

    def slots(self) -> List[int]:
        return [0, 1]

    def warm(self, slot: int, url: str) -> Deferred:
        deferred: Deferred = Deferred()
        self.warms.append((slot, url, deferred))
        return deferred

    def disk_info(self) -> Deferred:
        return succeed(self.disk)


def info(entries: int, size: int, hits: int, disk_hits: int, misses: int) -> Dict[str, Any]:
    """A worker's ``CacheTiers.info()`` with a disk tier of 10 objects."""
    return {
        "enabled": True,
        "memory": {"entries": entries, "bytes": size, "max_bytes": 1000, "evictions": 1, "hits": hits},
        "misses": misses,
        "stores": 0,
        "disk": {"entries": 10, "bytes": 5000, "live_bytes": 4000, "max_bytes": 100000, "evictions": 2,
                 "storing": True, "errors": 0, "last_error": "", "hits": disk_hits, "generation": 1},
    }


class CacheControl(FakeControl):
    def __init__(self, text: str = CONFIG) -> None:
        super().__init__(parse_config(text))
        self.cache_fanout = FakeFanout()
        self.metrics_disk: List[Any] = []

    def metrics_text(self, cache_disk: Any = None) -> bytes:
        self.metrics_disk.append(cache_disk)
        return b"# metrics\n"


def make_site(control: CacheControl, cascade_client: Any = None) -> Any:
    site = admin_site(control, environ={})
    site.timeOut = None
    cascade = site.resource.cascade
    cascade._node_id = "node-a"
    if cascade_client is not None:
        cascade._client = cascade_client
    return site
