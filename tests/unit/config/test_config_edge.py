"""Tests for the edge keys of the config (:mod:`speedproxy.config.edge`, ``allow``/``deny``)."""

from __future__ import annotations

import pytest

from speedproxy.config import ConfigError, config_from_mapping, config_to_mapping, parse_config

KEY = "a-signing-key-0123456789"


def _problems(text: str):
    with pytest.raises(ConfigError) as info:
        parse_config(text, "edge.yaml")
    return info.value.problems


def test_the_edge_keys_are_read_and_written_back() -> None:
    config = parse_config(
        f"""
server: {{allow: ["10.0.0.0/8"], deny: ["10.9.0.0/16", "2001:db8::/32"]}}
routing:
  default:
    path: /
    upstream: default
    allow: ["192.0.2.1", "2001:db8::/48"]
    cors: {{origins: ["https://Player.example.com"], methods: [get, POST], headers: [Range], expose: ["*"], max_age: 10m}}
    signed_urls: {{secrets: ["{KEY}"], param_signature: token, bind_client_ip: true}}
"""
    )
    route = config.routing["default"]
    assert config.server.deny == ("10.9.0.0/16", "2001:db8::/32")
    assert route.allow == ("192.0.2.1/32", "2001:db8::/48")
    assert route.cors.origins == ("https://player.example.com",)
    assert route.cors.methods == ("GET", "POST") and route.cors.max_age == 600.0
    assert route.signed_urls.secrets == (KEY,) and route.signed_urls.param_signature == "token"
    data = config_to_mapping(config)
    assert data["routing"]["default"]["cors"]["max_age"] == "10m"
    assert data["routing"]["default"]["signed_urls"]["secrets"] == [KEY]
    assert config_from_mapping(data) == config


def test_a_route_without_edge_keys_dumps_none() -> None:
    data = config_to_mapping(parse_config("routing: {default: {path: /, upstream: default}}"))
    assert not {"allow", "deny", "cors", "signed_urls"} & set(data["routing"]["default"])


def test_secrets_may_come_from_a_file_or_the_environment(tmp_path, monkeypatch) -> None:
    key_file = tmp_path / "url.key"
    key_file.write_text(KEY + "\n")
    monkeypatch.setenv("SPX_TEST_URL_KEY", "env-key-0123456789abcdef")
    config = parse_config(
        f"""
routing:
  default:
    path: /
    upstream: default
    signed_urls: {{secrets: ["${{file:{key_file}}}", "${{env:SPX_TEST_URL_KEY}}"]}}
"""
    )
    signed = config.routing["default"].signed_urls
    assert signed.secrets == (KEY, "env-key-0123456789abcdef")
    # Written back (and shown) as the references, never as the keys.
    dumped = config_to_mapping(config)["routing"]["default"]["signed_urls"]["secrets"]
    assert dumped == [f"${{file:{key_file}}}", "${env:SPX_TEST_URL_KEY}"]
    assert KEY not in repr(config)


def test_bad_edge_keys_are_errors_with_file_line_and_key() -> None:
    problems = _problems(
        """
server:
  allow: ["10.0.0.0/33"]
routing:
  default:
    path: /
    upstream: default
    deny: ["not-an-address"]
    alow: []
    cors:
      origins: ["https://x.example/path"]
      methods: ["G T"]
    signed_urls:
      secrets: ["short", "${file:relative/key}", "${env:SPX_SURELY_UNSET_VAR}", "${file:/nonexistent/key}", "x${env:A}"]
      param_signature: "a b"
"""
    )
    assert problems == [
        'edge.yaml:3: server.allow[0]: expected an IP address or CIDR network, got "10.0.0.0/33"',
        'edge.yaml:8: routing.default.deny[0]: expected an IP address or CIDR network, got "not-an-address"',
        "edge.yaml:9: routing.default.alow: unknown key 'alow'; did you mean 'allow'?",
        'edge.yaml:11: routing.default.cors.origins[0]: expected an origin such as "https://player.example.com" '
        '(scheme://host[:port], no path) or "*", got "https://x.example/path"',
        'edge.yaml:12: routing.default.cors.methods[0]: expected an HTTP method such as GET, got "G T"',
        "edge.yaml:14: routing.default.signed_urls.secrets[0]: a secret must be at least 16 bytes long "
        "(make one with `openssl rand -hex 32`)",
        "edge.yaml:14: routing.default.signed_urls.secrets[1]: ${file:relative/key}: the path must be absolute",
        "edge.yaml:14: routing.default.signed_urls.secrets[2]: ${env:SPX_SURELY_UNSET_VAR}: "
        "the environment variable SPX_SURELY_UNSET_VAR is not set",
        "edge.yaml:14: routing.default.signed_urls.secrets[3]: ${file:/nonexistent/key}: cannot read it: "
        "No such file or directory",
        "edge.yaml:14: routing.default.signed_urls.secrets[4]: the value has '${' at character 2 of 9 but is not "
        "a substitution: write the whole value as ${file:/absolute/path} or ${env:NAME}",
        'edge.yaml:15: routing.default.signed_urls.param_signature: expected a query parameter name '
        '(letters, digits, _ . ~ -), got "a b"',
    ]


@pytest.mark.parametrize(
    "cors, key",
    [
        ('{origins: ["*"], credentials: true}', "origins"),
        ('{origins: ["https://a.example"], headers: ["*"], credentials: true}', "headers"),
        ("{origins: []}", "origins"),
        ("{methods: [GET]}", ""),
    ],
)
def test_cors_refuses_a_wildcard_with_credentials_and_needs_origins(cors: str, key: str) -> None:
    problems = _problems(f"routing:\n  default:\n    path: /\n    upstream: default\n    cors: {cors}\n")
    assert len(problems) == 1
    assert problems[0].startswith("edge.yaml:5: routing.default.cors" + ("." + key if key else ""))


def test_signed_urls_query_is_signed_by_default_ignore_on_request_and_written_back() -> None:
    config = parse_config(
        "routing:\n"
        f"  default: {{path: /, upstream: default, signed_urls: {{secrets: ['{KEY}']}}}}\n"
        f"  loose: {{path: /l/, upstream: default, signed_urls: {{secrets: ['{KEY}'], query: ignore}}}}\n"
    )
    assert config.routing["default"].signed_urls.query == "signed"
    assert config.routing["loose"].signed_urls.query == "ignore"
    data = config_to_mapping(config)
    assert data["routing"]["loose"]["signed_urls"]["query"] == "ignore"
    assert config_from_mapping(data) == config


@pytest.mark.parametrize("value, shown", [("sign", '"sign"'), ("true", "true"), ("[signed]", "a list")])
def test_signed_urls_query_names_a_bad_value(value: str, shown: str) -> None:
    problems = _problems(
        f"routing:\n  default:\n    path: /\n    upstream: default\n"
        f"    signed_urls:\n      secrets: ['{KEY}']\n      query: {value}\n"
    )
    assert problems == [
        'edge.yaml:7: routing.default.signed_urls.query: expected "signed" (the signature covers every query '
        'parameter but its own) or "ignore" (it covers the path only: parameters may be added or changed), '
        f"got {shown}"
    ]


def test_signed_urls_needs_secrets_and_two_parameter_names() -> None:
    problems = _problems(
        f"routing:\n  default:\n    path: /\n    upstream: default\n"
        f"    signed_urls: {{secrets: ['{KEY}'], param_signature: x, param_expires: x}}\n"
    )
    assert problems == ["edge.yaml:5: routing.default.signed_urls.param_expires: must differ from param_signature"]
    problems = _problems("routing:\n  default:\n    path: /\n    upstream: default\n    signed_urls: {secrets: []}\n")
    assert "list at least one secret" in problems[0]


@pytest.mark.parametrize("name", ["sig", "exp"])
def test_the_session_parameter_cannot_be_a_signature_parameter(name: str) -> None:
    """A session id sent as ``?sig=`` (or ``?exp=``) would be taken off the URL as the
    signature's own parameter: every such request refused, the session never seen."""
    problems = _problems(
        "routing:\n  default:\n    path: /\n    upstream: default\n"
        f"    signed_urls: {{secrets: ['{KEY}']}}\n"
        f"    sessions: {{cookie: {name}}}\n"
    )
    assert problems == [
        f"edge.yaml:6: routing.default.sessions.cookie: '{name}' is also a parameter of signed_urls "
        "(param_signature, param_expires): give the session another name"
    ]
