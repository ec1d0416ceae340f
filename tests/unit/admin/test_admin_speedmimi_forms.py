"""SpeedMimi's (and the CapCut monitor's) request forms on the JSON admin API, in memory.

The nested ``backend`` object of an update, the nested ``performance``
object of a report, a backend's ``name``, and ``POST`` for the alert
thresholds; the flat forms keep working, unknown keys are still refused.
"""

from __future__ import annotations

from typing import Any

import pytest

from test_admin_site import call, control, site  # noqa: F401  (fixtures)


def test_update_with_a_nested_backend(site: Any, control: Any) -> None:
    answer = call(site, "PUT", "/api/v1/backends/update", {"upstream": "default", "backend": {"id": "a", "weight": 200}})
    assert answer.status == 200, answer.body
    assert control.config.backends["default"][0].weight == 200
    answer = call(site, "PUT", "/api/v1/backends/update",
                  {"upstream": "default", "backend_id": "a", "backend": {"name": "Backend A", "max_conn": 5}})
    assert answer.status == 200, answer.body
    assert (control.config.backends["default"][0].name, control.config.backends["default"][0].max_conn) == ("Backend A", 5)
    assert answer.json["backend"]["name"] == "Backend A"


def test_update_forms_that_are_refused(site: Any, control: Any) -> None:
    cases = [
        ({"upstream": "default", "backend": {"weight": 1}}, 400, "backend.id"),
        ({"upstream": "default", "backend": {"id": "a", "host": "x"}}, 400, "host"),
        ({"upstream": "default", "backend": {"id": "a"}}, 400, None),
        ({"upstream": "default", "backend": {"id": "a", "weight": 1}, "weight": 2}, 400, "weight"),
        ({"upstream": "default", "backend_id": "b", "backend": {"id": "a", "weight": 1}}, 400, "backend.id"),
        ({"upstream": "default", "backend": ["a"]}, 400, "backend"),
        ({"upstream": "default", "backend": {"id": "zz", "weight": 1}}, 404, "backend_id"),
    ]
    for body, status, field in cases:
        answer = call(site, "PUT", "/api/v1/backends/update", body)
        assert (answer.status, answer.json.get("field")) == (status, field), (body, answer.body)
    assert control.config_version == 1


def test_flat_update_still_works(site: Any, control: Any) -> None:
    answer = call(site, "PUT", "/api/v1/backends/update", {"upstream": "default", "backend_id": "a", "weight": 9})
    assert answer.status == 200 and control.config.backends["default"][0].weight == 9
    answer = call(site, "PUT", "/api/v1/backends/update", {"upstream": "default", "id": "a", "changes": {"weight": 8}})
    assert answer.status == 200 and control.config.backends["default"][0].weight == 8


def test_report_with_nested_performance(site: Any, control: Any) -> None:
    body = {"upstream": "default", "backend_id": "a",
            "performance": {"cpu_usage": 45.2, "memory_usage": 67.8, "load_avg_1": 2.1}}
    answer = call(site, "POST", "/api/v1/report", body)
    assert answer.status == 200, answer.body
    assert answer.json["reported_load"] == pytest.approx((0.452 * 2 + 0.678) / 3, abs=1e-4)
    assert control.loads == [("default", "a", answer.json["reported_load"])]
    with_count = dict(body, performance=dict(body["performance"], cpu_count=4))
    assert call(site, "POST", "/api/v1/report", with_count).json["reported_load"] == pytest.approx((0.452 * 2 + 0.678 + 2.1 / 4) / 4, abs=1e-4)


def test_report_forms_that_are_refused(site: Any, control: Any) -> None:
    cases = [
        ({"backend_id": "a", "performance": {"gpu": 1}}, "performance.gpu"),
        ({"backend_id": "a", "performance": 5}, "performance"),
        ({"backend_id": "a", "cpu_usage": 1, "performance": {"cpu_usage": 2}}, "cpu_usage"),
        ({"backend_id": "a", "performance": {"cpu_usage": 101}}, "cpu_usage"),
        ({"backend_id": "a", "performance": {}}, "cpu_usage"),
        ({"backend_id": "a", "extra": 1, "cpu_usage": 1}, "extra"),
    ]
    for body, field in cases:
        answer = call(site, "POST", "/api/v1/report", body)
        assert (answer.status, answer.json.get("field")) == (400, field), (body, answer.body)
    assert control.loads == []


def test_add_with_a_name_and_it_is_listed(site: Any, control: Any) -> None:
    answer = call(site, "POST", "/api/v1/backends/add",
                  {"upstream": "default", "backend": {"id": "c", "name": "Backend C", "host": "10.0.0.3", "port": 80}})
    assert answer.status == 200, answer.body
    rows = call(site, "GET", "/api/v1/backends?upstream=default").json["backends"]
    assert [(row["id"], row.get("name")) for row in rows] == [("a", None), ("c", "Backend C")]


def test_thresholds_take_post_as_put(site: Any) -> None:
    answer = call(site, "POST", "/api/v1/performance/alerts/thresholds", {"error_rate": 0.2})
    assert answer.status == 200, answer.body
    assert call(site, "GET", "/api/v1/performance/alerts/thresholds").json["thresholds"]["error_rate"] == 0.2
    answer = call(site, "POST", "/api/v1/performance/alerts/thresholds", {"nope": 1})
    assert (answer.status, answer.json["field"]) == (400, "nope")
    answer = call(site, "DELETE", "/api/v1/performance/alerts/thresholds")
    assert answer.status == 405 and answer.headers["allow"] == "GET, POST, PUT"
