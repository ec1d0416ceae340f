"""SpeedMimi's documented config and admin calls, verbatim, against a real ``twistd speedproxy``.

The test data are copies of the seed documents (see the comment at the top
of each file):

* ``data/speedmimi/config.yaml``: SpeedMimi's configuration example;
* ``data/speedmimi/admin_calls.http``: every admin call of its API section;
* ``data/capcut/performance_calls.txt``: the CapCut server's performance
  monitor calls.

``--check`` runs on the config file as it is.  To serve it next to other
processes, the test changes nothing but its three port numbers (proxy,
backend, gRPC: free ones instead of 8080, 8081, 9090) and adds the test
harness's settings (the admin API on a free port instead of the default
9901, a 2 s shutdown grace); ``server.workers`` stays unset (``auto``).
The admin calls are sent exactly as documented, with two exceptions named
where they happen: ``PUT /api/v1/config``'s body has ``{...}``
placeholders, filled with the live sections; ``reload-ssl`` needs TLS,
which the example has off, so it is also sent to a copy with
``ssl.enabled: true`` and certificates at the example's paths.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
import yaml

import trustme

from speedproxy.admin.grpc import grpc_missing
from speedproxy.testing import ProxyProcess, check_config, free_port

from admin_support import AdminClient, proxy_get

DATA = Path(__file__).parent / "data"
CONFIG = DATA / "speedmimi" / "config.yaml"
CALLS = DATA / "speedmimi" / "admin_calls.http"
CAPCUT = DATA / "capcut" / "performance_calls.txt"


def documented_calls() -> List[Tuple[str, str, Dict[str, str], Optional[str]]]:
    """``(method, target, headers, body)`` of every call in ``admin_calls.http``."""
    text = "\n".join(line for line in CALLS.read_text(encoding="utf-8").splitlines() if not line.startswith("# "))
    calls = []
    for block in text.split("###\n"):
        if not block.strip():
            continue
        head, _, body = block.partition("\n\n")
        lines = head.strip().splitlines()
        method, target = lines[0].split()
        headers = dict(line.split(": ", 1) for line in lines[1:])
        calls.append((method, target, headers, body.strip() or None))
    return calls


def capcut_calls() -> List[Tuple[str, str]]:
    calls = []
    for line in CAPCUT.read_text(encoding="utf-8").splitlines():
        match = re.match(r"- `(GET|POST|PUT|DELETE) (\S+)`", line)
        if match:
            calls.append((match.group(1), match.group(2)))
    return calls


def send(admin: AdminClient, method: str, target: str, headers: Dict[str, str], body: Optional[str]) -> Any:
    raw = body.encode("utf-8") if body is not None else None
    return admin.call(method, target, raw=raw, headers=headers)


def start(stack: Any, config: Dict[str, Any], directory: Path) -> ProxyProcess:
    process = ProxyProcess(config, directory=directory)
    stack.proxies.append(process)
    process.start()
    process.host = "127.0.0.1"  # it listens on 0.0.0.0, as the example says; talk to it on loopback
    return process


def served_config(backend_port: int) -> Dict[str, Any]:
    """The example with free ports instead of its own three."""
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    config["server"]["port"] = free_port()
    config["backends"]["default"][0]["port"] = backend_port
    config["grpc"]["port"] = free_port()
    config["server"]["workers"] = "auto"  # as in the example (the harness's default is 1)
    return config


def test_the_documents_are_copied_whole() -> None:
    """The copies hold what the seeds hold: one config, eleven calls, nine monitor calls."""
    calls = documented_calls()
    assert [(method, target) for method, target, _, _ in calls] == [
        ("GET", "/api/v1/config"),
        ("PUT", "/api/v1/config"),
        ("POST", "/api/v1/config/reload-ssl"),
        ("GET", "/api/v1/backends?upstream=default"),
        ("POST", "/api/v1/backends/add"),
        ("DELETE", "/api/v1/backends/remove?upstream=default&backend_id=backend1"),
        ("PUT", "/api/v1/backends/update"),
        ("POST", "/api/v1/backends/disconnect?upstream=default&backend_id=backend1"),
        ("GET", "/api/v1/stats/server"),
        ("GET", "/api/v1/stats/backend?upstream=default&backend_id=backend1"),
        ("POST", "/api/v1/report"),
    ]
    assert len(capcut_calls()) == 9
    # shared/ lies beside the checkout (here and in CI); the copies must match it.
    seeds = Path(__file__).resolve().parents[3] / "shared" / "seeds"
    if (seeds / "speedmimi.md").exists():
        text = (seeds / "speedmimi.md").read_text(encoding="utf-8")
        example = CONFIG.read_text(encoding="utf-8").split("Do not edit.\n", 1)[1]
        assert example in text
        for _, _, _, body in calls:
            assert body is None or body in text


def test_the_example_config_passes_check_unchanged() -> None:
    result = check_config(CONFIG)
    missing = grpc_missing()
    if missing is not None:  # PyPy, Python < 3.10: the example enables gRPC, which cannot run here
        assert result.returncode == 1 and f"grpc.enabled: {missing}" in result.stdout, result.stdout
        return
    assert result.returncode == 0, result.stdout
    assert "test is successful" in result.stdout


def test_a_key_speedproxy_does_not_know_is_still_an_error(tmp_path: Path) -> None:
    text = CONFIG.read_text(encoding="utf-8")
    wrong = tmp_path / "speedmimi.yaml"
    wrong.write_text(text.replace('      name: "Backend Server 1"\n', '      name: "Backend Server 1"\n      nmae: x\n')
                     .replace("  port: 9090\n", "  port: 9090\n  tls: true\n"), encoding="utf-8")
    result = check_config(wrong)
    assert result.returncode == 1, result.stdout
    assert re.search(r"speedmimi\.yaml:\d+: backends\.default\[0\]\.nmae: unknown key 'nmae'; did you mean 'name'\?", result.stdout)
    assert re.search(r"speedmimi\.yaml:\d+: grpc\.tls: unknown key 'tls'", result.stdout)


serving = pytest.mark.skipif(grpc_missing() is not None, reason="the example enables gRPC, which cannot run here")


@pytest.fixture
def speedmimi(stack: Any, tmp_path: Path) -> Any:
    """The example served (free ports), its backend1, and an admin client."""
    origin = stack.backend(name="backend1")
    process = start(stack, served_config(origin.port), tmp_path / "speedmimi")
    return process, origin, AdminClient.of(process)


@serving
def test_every_documented_admin_call_answers_and_acts(speedmimi: Any) -> None:
    proxy, origin, admin = speedmimi
    calls = {(method, target.split("?")[0]): (method, target, headers, body) for method, target, headers, body in documented_calls()}
    status, _, _ = proxy_get(proxy, "/hello")
    assert status == 200  # backend1 serves, through the example's route

    # GET /api/v1/config: the example's config, backend1 with its name.
    answer = send(admin, *calls[("GET", "/api/v1/config")])
    assert answer.status == 200, answer
    live = answer.json
    assert live["config"]["backends"]["default"][0]["name"] == "Backend Server 1"
    assert live["config"]["grpc"] == {"enabled": True, "host": "127.0.0.1", "port": proxy.config["grpc"]["port"]}
    version = live["config_version"]

    # PUT /api/v1/config: the documented body, its "{...}" placeholders
    # filled with the live sections (that is what the README means).
    method, target, headers, body = calls[("PUT", "/api/v1/config")]
    assert body is not None and body.count("{...}") == 3
    for section in ("server", "backends", "routing"):
        body = body.replace(f'"{section}": {{...}}', f'"{section}": ' + json.dumps(live["config"][section]))
    answer = send(admin, method, target, headers, body)
    assert answer.status == 200, answer
    assert answer.json["config_version"] == version + 1
    assert admin.get("/api/v1/config").json["config"]["backends"] == live["config"]["backends"]

    # POST /api/v1/config/reload-ssl: the example has TLS off, so there is
    # nothing to reload (409 ssl_disabled; see the TLS test below for a 200).
    answer = send(admin, *calls[("POST", "/api/v1/config/reload-ssl")])
    assert answer.status == 409, answer
    assert answer.json["error"] == "ssl_disabled"

    # GET /api/v1/backends?upstream=default: backend1, named.
    answer = send(admin, *calls[("GET", "/api/v1/backends")])
    assert answer.status == 200, answer
    (row,) = answer.json["backends"]
    assert (row["id"], row["name"], row["weight"]) == ("backend1", "Backend Server 1", 100)

    # POST /api/v1/backends/add: backend3 is in the upstream, in every worker.
    answer = send(admin, *calls[("POST", "/api/v1/backends/add")])
    assert answer.status == 200, answer
    assert answer.json["backend"]["id"] == "backend3" and answer.json["backend"]["weight"] == 50
    rows = admin.get("/api/v1/backends?upstream=default").json["backends"]
    assert [r["id"] for r in rows] == ["backend1", "backend3"]
    workers = answer.json["workers"]
    assert workers >= 1 and rows[1]["runtime"]["workers"] == workers

    # PUT /api/v1/backends/update, SpeedMimi's nested "backend" object.
    answer = send(admin, *calls[("PUT", "/api/v1/backends/update")])
    assert answer.status == 200, answer
    assert answer.json["backend"]["weight"] == 200
    assert admin.get("/api/v1/backends?upstream=default").json["backends"][0]["weight"] == 200

    # GET /api/v1/stats/server and /api/v1/stats/backend?...: backend1 and its name.
    answer = send(admin, *calls[("GET", "/api/v1/stats/server")])
    assert answer.status == 200, answer
    assert answer.json["totals"]["requests"] >= 1
    answer = send(admin, *calls[("GET", "/api/v1/stats/backend")])
    assert answer.status == 200, answer
    assert answer.json["backend"]["id"] == "backend1"
    assert answer.json["backend"]["name"] == "Backend Server 1"
    assert answer.json["backend"]["stats"]["requests"] >= 1

    # POST /api/v1/report, SpeedMimi's nested "performance" object: the load
    # reaches the workers' balancers.
    answer = send(admin, *calls[("POST", "/api/v1/report")])
    assert answer.status == 200, answer
    assert answer.json["reported_load"] == pytest.approx((0.452 * 2 + 0.678) / 3, abs=1e-3)
    row = admin.get("/api/v1/stats/backend?upstream=default&backend_id=backend1").json["backend"]
    assert row["runtime"]["reported_load"] == answer.json["reported_load"]
    assert row["last_report"]["cpu_usage"] == 45.2

    # POST /api/v1/backends/disconnect?...: every worker answers.
    answer = send(admin, *calls[("POST", "/api/v1/backends/disconnect")])
    assert answer.status == 200, answer
    assert answer.json["workers"] == workers and len(answer.json["closed_per_worker"]) == workers

    # DELETE /api/v1/backends/remove?...: last, as the calls above name backend1.
    answer = send(admin, *calls[("DELETE", "/api/v1/backends/remove")])
    assert answer.status == 200, answer
    assert answer.json["removed"]["id"] == "backend1"
    assert [r["id"] for r in admin.get("/api/v1/backends?upstream=default").json["backends"]] == ["backend3"]


@serving
def test_the_name_is_in_stats_and_metrics(speedmimi: Any) -> None:
    proxy, _, admin = speedmimi
    stats = admin.get("/stats").json
    assert [(row["id"], row["name"]) for row in stats["backends"]] == [("backend1", "Backend Server 1")]
    metrics = admin.get("/metrics").raw.decode()
    assert re.search(
        r'^speedproxy_backend_info\{(?=.*upstream="default")(?=.*backend="backend1")(?=.*name="Backend Server 1").*\} 1\.0$',
        metrics,
        re.M,
    ), metrics


@serving
def test_the_flat_forms_still_work(speedmimi: Any) -> None:
    _, _, admin = speedmimi
    answer = admin.put("/api/v1/backends/update", {"upstream": "default", "backend_id": "backend1", "weight": 70})
    assert answer.status == 200, answer
    assert answer.json["backend"]["weight"] == 70
    answer = admin.post("/api/v1/report", {"upstream": "default", "backend_id": "backend1", "cpu_usage": 50})
    assert answer.status == 200, answer
    assert answer.json["reported_load"] == 0.5


@serving
def test_nested_forms_refuse_what_they_do_not_know(speedmimi: Any) -> None:
    _, _, admin = speedmimi
    version = admin.get("/api/v1/config").json["config_version"]
    answer = admin.put("/api/v1/backends/update", {"upstream": "default", "backend": {"id": "backend1", "host": "10.0.0.9"}})
    assert (answer.status, answer.json["field"]) == (400, "host"), answer
    answer = admin.put("/api/v1/backends/update", {"upstream": "default", "backend": {"weight": 5}})
    assert (answer.status, answer.json["field"]) == (400, "backend.id"), answer
    answer = admin.put("/api/v1/backends/update", {"upstream": "default", "backend": {"id": "nope", "weight": 5}})
    assert (answer.status, answer.json["field"]) == (404, "backend_id"), answer
    answer = admin.post("/api/v1/report", {"backend_id": "backend1", "performance": {"cpu_usage": 5, "gpu_usage": 1}})
    assert (answer.status, answer.json["field"]) == (400, "performance.gpu_usage"), answer
    answer = admin.post("/api/v1/report", {"backend_id": "backend1", "cpu_usage": 5, "performance": {"cpu_usage": 6}})
    assert (answer.status, answer.json["field"]) == (400, "cpu_usage"), answer
    assert admin.get("/api/v1/config").json["config_version"] == version


@serving
def test_the_capcut_performance_calls_answer(speedmimi: Any) -> None:
    _, _, admin = speedmimi
    for method, path in capcut_calls():
        if method == "POST":
            # The monitor's verb for an update; the README names no body, so
            # one threshold of ours (GET lists them).
            answer = admin.post(path, {"error_rate": 0.25})
            assert answer.status == 200, (path, answer)
            assert answer.json["thresholds"]["error_rate"] == 0.25
            assert admin.get(path).json["thresholds"]["error_rate"] == 0.25
            answer = admin.post(path, {"no_such_threshold": 1})
            assert (answer.status, answer.json["field"]) == (400, "no_such_threshold"), answer
        else:
            answer = admin.call(method, path)
            assert answer.status == 200, (path, answer)
            assert isinstance(answer.json, dict)


@serving
def test_reload_ssl_as_documented_with_tls_on(stack: Any, tmp_path: Path) -> None:
    """The example with ``ssl.enabled: true`` and certificates at its own relative paths."""
    origin = stack.backend(name="backend1")
    directory = tmp_path / "tls"
    (directory / "certs").mkdir(parents=True)
    authority = trustme.CA()

    def write_certificate(host: str) -> None:
        issued = authority.issue_cert(host)
        issued.private_key_pem.write_to_path(str(directory / "certs" / "server.key"))
        issued.cert_chain_pems[0].write_to_path(str(directory / "certs" / "server.crt"))

    write_certificate("first.example")
    config = served_config(origin.port)
    config["ssl"]["enabled"] = True
    process = start(stack, config, directory)
    admin = AdminClient.of(process)
    (call,) = [c for c in documented_calls() if c[1] == "/api/v1/config/reload-ssl"]

    def served_names() -> List[str]:
        context = ssl.create_default_context()
        authority.configure_trust(context)
        context.check_hostname = False
        with socket.create_connection((process.host, process.port), 5) as raw:
            with context.wrap_socket(raw) as tls:
                certificate = tls.getpeercert()
        return [value for kind, value in certificate.get("subjectAltName", ()) if kind == "DNS"]

    assert served_names() == ["first.example"]
    write_certificate("second.example")
    answer = send(admin, *call)
    assert answer.status == 200, answer
    assert answer.json["reloaded"] is True
    assert served_names() == ["second.example"]
