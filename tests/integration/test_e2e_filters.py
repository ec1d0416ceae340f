"""Filters from another package, found through Twisted's plugin system, on the data path.

The plugin is written to a temporary directory (``twisted/plugins/acme_filters.py``)
that is put on the proxy's ``PYTHONPATH``, as an operator's package would be
installed; nothing of it is part of speedproxy.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from speedproxy.testing import (
    HTTPBackend,
    ProxyProcess,
    RawClient,
    repo_root,
    backend_entry,
    fixed_body,
    pattern_sha256,
    twistd_command,
)

PLUGIN = textwrap.dedent(
    '''
    """acme's speedproxy filters (a test plugin)."""
    import hashlib

    from twisted.internet.task import deferLater
    from zope.interface import implementer

    from speedproxy.filters import Filter, FilterOptionsError, IFilterKind, LocalResponse


    class AddTenant(Filter):
        def __init__(self, tenant):
            self.tenant = tenant

        def request(self, request):
            request.set_header("X-Tenant", self.tenant)
            if request.path.startswith("/boom"):
                raise RuntimeError("acme filter exploded")
            if request.path.startswith("/deny"):
                return LocalResponse(403, [("Content-Type", "text/plain")], b"denied by acme\\n")

        def response_head(self, request, response):
            response.set_header("X-Tenant-Served", self.tenant)


    @implementer(IFilterKind)
    class AddTenantKind:
        name = "acme.add_tenant_header"

        def check_options(self, options):
            unknown = sorted(set(options) - {"tenant"})
            if unknown:
                raise FilterOptionsError(unknown[0], "unknown option")
            tenant = options.get("tenant")
            if not isinstance(tenant, str) or not tenant:
                raise FilterOptionsError("tenant", "expected a non-empty string")
            return tenant

        def build(self, tenant, context):
            return AddTenant(tenant)


    class Digest(Filter):
        """Answers later (a Deferred), and replaces the body by its SHA-256."""

        wants_body = True
        rewrites_body = True

        def __init__(self, reactor):
            self.reactor = reactor

        def request(self, request):
            request.state["sha"] = hashlib.sha256()
            return deferLater(self.reactor, 0.01, lambda: None)

        def response_body(self, request, data):
            request.state["sha"].update(data)
            return b""

        def response_end(self, request):
            return request.state["sha"].hexdigest().encode()


    @implementer(IFilterKind)
    class DigestKind:
        name = "acme.digest"

        def check_options(self, options):
            return None

        def build(self, options, context):
            return Digest(context.reactor)


    add_tenant_header = AddTenantKind()
    digest = DigestKind()
    '''
)

BIG = 300 * 1024


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("acme")
    plugins = root / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "acme_filters.py").write_text(PLUGIN)
    return root


def plugin_env(plugin_dir: Path) -> dict:
    return {"PYTHONPATH": os.pathsep.join([str(plugin_dir), str(repo_root())])}


def filtered_config(origin: HTTPBackend) -> dict:
    return {
        "server": {"workers": 2},
        "backends": {"default": [backend_entry(origin, id="origin")]},
        "routing": {
            "tenant": {
                "path": "/",
                "upstream": "default",
                "filters": [{"name": "acme.add_tenant_header", "options": {"tenant": "blue"}}],
            },
            "digest": {"path": "/digest/", "upstream": "default", "filters": [{"name": "acme.digest"}]},
            "bare": {"path": "/bare/", "upstream": "default"},
        },
    }


@pytest.fixture(scope="module")
def site(module_stack, plugin_dir):
    origin = module_stack.backend(name="filters-origin")
    origin.route("/digest/big", fixed_body(BIG))
    origin.route("/bare/big", fixed_body(BIG))
    directory = module_stack._directory_for("filters-proxy")
    proxy = ProxyProcess(filtered_config(origin), directory=directory, env=plugin_env(plugin_dir))
    module_stack.proxies.append(proxy)
    proxy.start()
    return proxy, origin


def get(proxy: ProxyProcess, path: str, method: str = "GET"):
    with RawClient(*proxy.address, timeout=10.0) as client:
        client.request(method, path)
        return client.read_response(head_only=method == "HEAD")


def test_request_and_response_hooks_run_in_every_worker(site) -> None:
    proxy, origin = site
    for attempt in range(8):  # keep-alive off: new connections, spread over both workers
        origin.reset()
        response = get(proxy, f"/hello/{attempt}")
        assert response.status == 200
        assert response.header("X-Tenant-Served") == "blue"
        assert origin.last_request.header("X-Tenant") == "blue"


def test_a_filter_answers_locally(site) -> None:
    proxy, origin = site
    origin.reset()
    response = get(proxy, "/deny/x")
    assert response.status == 403
    assert response.body == b"denied by acme\n"
    assert response.header("Content-Type") == "text/plain"
    assert response.header("X-Request-Id")
    assert origin.heads == []
    head = get(proxy, "/deny/x", method="HEAD")
    assert head.status == 403 and head.header("Content-Length") == str(len(b"denied by acme\n"))


def test_a_filter_that_raises_is_contained(site) -> None:
    proxy, origin = site
    pids = proxy.worker_pids()
    origin.reset()
    mark = proxy.log_mark()
    response = get(proxy, "/boom")
    assert response.status == 500
    assert response.json()["error"] == "filter_error"
    assert origin.heads == []
    proxy.wait_for_log("acme filter exploded", since=mark)
    # The worker lives and serves the next request.
    assert get(proxy, "/after-boom").status == 200
    assert proxy.worker_pids() == pids


def test_a_body_filter_sees_every_byte_and_answers_later(site) -> None:
    proxy, _ = site
    response = get(proxy, "/digest/big")
    assert response.status == 200
    assert response.body == pattern_sha256(BIG).encode()
    # The body changed length: it is sent chunked, never with the origin's length.
    assert response.header("Content-Length") is None


def test_a_route_without_filters_is_untouched(site) -> None:
    proxy, origin = site
    origin.reset()
    response = get(proxy, "/bare/big")
    assert response.status == 200 and len(response.body) == BIG
    assert response.header("Content-Length") == str(BIG)
    assert response.header("X-Tenant-Served") is None
    assert origin.last_request.header("X-Tenant") is None


def _check(plugin_dir: Path, tmp_path: Path, routing: dict) -> subprocess.CompletedProcess:
    path = tmp_path / "speedproxy.yaml"
    config = {"backends": {"default": [{"id": "a", "host": "127.0.0.1", "port": 9}]}, "routing": routing}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = dict(os.environ, **plugin_env(plugin_dir))
    argv = twistd_command() + ["-n", "--pidfile=", "-l", "-", "speedproxy", "--config", str(path), "--check"]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, cwd=str(tmp_path))


def test_check_accepts_a_plugin_filter(plugin_dir, tmp_path) -> None:
    result = _check(plugin_dir, tmp_path, {"r": {"path": "/", "filters": [{"name": "acme.add_tenant_header", "options": {"tenant": "x"}}]}})
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "filters,message",
    [
        ([{"name": "acme.nope"}], "routing.r.filters[0].name: unknown filter 'acme.nope' (known: "),
        ([{"name": "acme.add_tenant_header", "options": {"tenant": 3}}], "routing.r.filters[0].options.tenant: expected a non-empty string"),
        ([{"name": "acme.add_tenant_header", "options": {"tenant": "x", "colour": 1}}], "routing.r.filters[0].options.colour: unknown option"),
        ([{"options": {}}], "routing.r.filters[0]: missing required key 'name'"),
    ],
)
def test_check_names_what_is_wrong_with_a_filter(plugin_dir, tmp_path, filters, message) -> None:
    result = _check(plugin_dir, tmp_path, {"r": {"path": "/", "filters": filters}})
    assert result.returncode == 1
    assert "speedproxy.yaml:" in result.stderr and message in result.stderr, result.stderr


def test_the_readme_example_works_as_written(module_stack, tmp_path) -> None:
    readme = (repo_root() / "README.rst").read_text()
    start = readme.index("acme/twisted/plugins/acme_filters.py``::")
    block = readme[start:].split("::\n", 1)[1].split("\nand in the config::", 1)[0]
    plugins = tmp_path / "readme" / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "acme_readme.py").write_text(textwrap.dedent(block))
    origin = module_stack.backend(name="readme-origin")
    config = {
        "backends": {"default": [backend_entry(origin, id="origin")]},
        "routing": {"api": {"path": "/api/", "upstream": "default", "filters": [{"name": "acme.add_tenant_header", "options": {"tenant": "blue"}}]}},
    }
    proxy = ProxyProcess(config, directory=tmp_path / "proxy", env=plugin_env(tmp_path / "readme"))
    module_stack.proxies.append(proxy)
    proxy.start()
    assert get(proxy, "/api/x").status == 200
    assert origin.last_request.header("X-Tenant") == "blue"
