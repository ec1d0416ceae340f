"""The config's entry points: load a file, parse YAML text, validate a mapping, write a config back.

Each problem is reported as ``FILE:LINE: dotted.key[0].path: message`` and
all problems are collected in one pass before :class:`ConfigError` is
raised.  Mappings from the admin API go through the same validation,
without line numbers.

YAML notes: plain (unquoted) scalars given for a string setting are taken as
written, so ``access_log: off`` is ``"off"`` and ``id: 1`` is ``"1"``; merge
keys (``<<: *anchor``) work; ``null`` for a whole section means its defaults.
Relative paths (``ssl.cert_file``, ``ssl.key_file``, ``admin.api_key_file``,
``server.access_log``, ``cache.disk_path``) are made absolute against the
config file's directory.

Where things are: every key is declared once, with how it is read and
written back, in the section's module (:mod:`speedproxy.config.server`,
``backends``, ``routes``, ``caching``, ``hls``, ``route_filters``, ``edge``,
``edge_limits``, ``compression``, ``upstream_rules``, ``tracing``,
``grpc_service``, ``cluster``), the whole file in
:mod:`speedproxy.config.document`; the machinery in ``schema``, ``kinds``,
``located`` (YAML with lines) and ``problems``.  A new key goes into its
section's table and the model, nowhere else.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Mapping, Optional

from speedproxy.config.document import TOP_LEVEL, build, write_config
from speedproxy.config.located import from_python, from_yaml
from speedproxy.config.model import Config
from speedproxy.config.problems import ConfigError, Problems

__all__ = ["ConfigError", "config_from_mapping", "config_to_mapping", "load_config", "parse_config"]

#: The top-level keys of the file, in the order they are written.
_TOP_LEVEL = TOP_LEVEL


def load_config(path: str) -> Config:
    """Read, validate and return the config file at *path*.

    Relative paths inside it are resolved against the file's directory and
    :attr:`Config.source` is the file's absolute path.

    :raises ConfigError: if the file cannot be read, is not YAML, or is invalid.
    """
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: cannot read config file: not UTF-8 (byte offset {exc.start})"]) from exc
    source = os.path.abspath(path)
    config = parse_config(text, path, base_dir=os.path.dirname(source))
    return dataclasses.replace(config, source=source)


def parse_config(text: str, filename: str = "<string>", *, base_dir: Optional[str] = None) -> Config:
    """Validate YAML *text* and return the config; *filename* is used in messages.

    Relative paths are resolved against *base_dir* if given, else left as is.

    :raises ConfigError: listing every problem found.
    """
    problems = Problems(filename)
    return build(problems, from_yaml(problems, text, filename), base_dir)


def config_from_mapping(
    data: Mapping[str, Any], filename: str = "<api>", *, base_dir: Optional[str] = None
) -> Config:
    """Validate plain data (e.g. a JSON body) laid out like the file and return the config.

    Problems read ``<api>: server.port: ...``.  Relative paths are resolved
    against *base_dir* if given, else left as is.

    :raises ConfigError: listing every problem found.
    """
    problems = Problems(filename)
    return build(problems, from_python(problems, data, ""), base_dir)


def config_to_mapping(config: Config) -> Dict[str, Any]:
    """Return *config* as plain JSON/YAML-friendly data laid out like the file.

    Durations and sizes use their human forms; secrets are *not* masked.
    ``config_from_mapping(config_to_mapping(c))`` equals *c* apart from ``source``.
    """
    return write_config(config)
