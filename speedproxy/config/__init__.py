"""Configuration: the immutable model and the YAML loader that validates it."""

from speedproxy.config.loader import (
    ConfigError,
    config_from_mapping,
    config_to_mapping,
    load_config,
    parse_config,
)
from speedproxy.config.model import (
    BALANCER_NAMES,
    AdminConfig,
    BackendConfig,
    Config,
    HealthCheckConfig,
    ProtocolBalancers,
    RouteConfig,
    ServerConfig,
    SSLConfig,
)

__all__ = [
    "BALANCER_NAMES",
    "AdminConfig",
    "BackendConfig",
    "Config",
    "ConfigError",
    "config_from_mapping",
    "config_to_mapping",
    "HealthCheckConfig",
    "ProtocolBalancers",
    "RouteConfig",
    "SSLConfig",
    "ServerConfig",
    "load_config",
    "parse_config",
]
