"""Backends that are speedproxies too, and their admin secrets, in the admin API."""

from __future__ import annotations

from typing import Any, Dict

from twisted.internet.defer import succeed
from twisted.internet.testing import MemoryReactorClock

from speedproxy.admin.api_backends import speedproxy_seen
from speedproxy.admin.changes import MASK, config_from_body, masked_mapping
from speedproxy.admin.tracking import inspect_core
from speedproxy.config import parse_config
from speedproxy.proxy.core import ProxyCore
from speedproxy.upstreams import Backend

from admin_cache_support import CONFIG, CacheControl, call, make_site


def test_saw_speedproxy_records_version_time_and_count() -> None:
    backend = Backend(parse_config(CONFIG).backends["default"][0])
    assert (backend.is_speedproxy, backend.version, backend.last_checked, backend.check_count) == (False, "", 0.0, 0)
    backend.saw_speedproxy("0.1.0", 100.0)
    backend.saw_speedproxy("0.2.0", 105.5)
    assert (backend.is_speedproxy, backend.version, backend.last_checked, backend.check_count) == (True, "0.2.0", 105.5, 2)


def test_the_worker_reports_it() -> None:
    core = ProxyCore(MemoryReactorClock(), parse_config(CONFIG))
    core.groups["default"].backends[0].saw_speedproxy("1.2.3", 50.0)
    report = inspect_core(core, None, slot=0, version=1, active_limit=0, slow_limit=0)
    state = report["backends"]["default"]["a"]
    assert (state["is_speedproxy"], state["speedproxy_version"], state["last_checked"], state["check_count"]) == (
        True, "1.2.3", 50.0, 1
    )


def _state(seen: bool, version: str = "", checked: float = 0.0, count: int = 0) -> Dict[str, Any]:
    return {"is_speedproxy": seen, "speedproxy_version": version, "last_checked": checked, "check_count": count}


def test_workers_views_are_merged() -> None:
    merged = speedproxy_seen([_state(True, "1.0", 10.0, 3), _state(False), _state(True, "1.1", 20.0, 2)])
    assert merged == {"is_speedproxy": True, "version": "1.1", "last_checked": 20.0, "check_count": 5}
    assert speedproxy_seen([_state(False), {}]) == {
        "is_speedproxy": False, "version": None, "last_checked": None, "check_count": 0
    }


def test_upstream_lists_the_tmdb_fields() -> None:
    control = CacheControl()

    def inspect_workers(active_limit: int = 0, slow_limit: int = 0) -> Any:
        state = {"healthy": True, "available": True, "in_flight": 0, "requests": 0, "failures": 0,
                 "ewma_response_ms": 0.0, "reported_load": 0.0}
        return succeed([
            {"slot": 0, "serving": True, "backends": {"default": {"a": dict(state, **_state(True, "0.1.0", 7.0, 4))}}},
            {"slot": 1, "serving": True, "backends": {"default": {"a": dict(state, **_state(False))}}},
        ])

    control.inspect_workers = inspect_workers  # type: ignore[assignment]
    site = make_site(control)
    (backend,) = call(site, "GET", "/upstream").json["upstreams"]["default"]["backends"]
    assert (backend["is_speedproxy"], backend["version"], backend["last_checked"], backend["check_count"]) == (
        True, "0.1.0", 7.0, 4
    )
    listing = call(site, "GET", "/api/v1/backends?upstream=default").json["backends"][0]
    assert listing["runtime"]["is_speedproxy"] is True
    assert listing["admin_api_key"] == MASK  # never shown


def test_backend_admin_keys_are_masked_and_kept_when_sent_back() -> None:
    current = parse_config(CONFIG)
    shown = masked_mapping(current)
    assert shown["backends"]["default"][0]["admin_api_key"] == MASK
    assert shown["backends"]["default"][0]["admin_url"] == "http://10.0.0.1:9901"
    again = config_from_body(shown, current)
    assert again.backends["default"][0].admin_api_key == "up-key"
    shown["backends"]["default"][0]["admin_api_key"] = "new-key"
    assert config_from_body(shown, current).backends["default"][0].admin_api_key == "new-key"


def test_a_mask_without_a_key_is_refused() -> None:
    from speedproxy.admin.json_resource import APIError

    current = parse_config(CONFIG)
    data = masked_mapping(current)
    data["backends"]["default"].append({"id": "new", "host": "h", "port": 1, "admin_api_key": MASK})
    try:
        config_from_body(data, current)
    except APIError as error:
        assert (error.status, error.field) == (400, "backends.default[1].admin_api_key")
    else:  # pragma: no cover
        raise AssertionError("the mask was taken as a key")


def test_the_config_answer_masks_backend_keys() -> None:
    site = make_site(CacheControl())
    answer = call(site, "GET", "/api/v1/config").json
    assert answer["config"]["backends"]["default"][0]["admin_api_key"] == MASK
