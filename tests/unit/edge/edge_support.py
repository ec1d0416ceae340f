"""Helpers of the edge filter tests: an in-memory proxy with edge keys, refusal counts."""

from __future__ import annotations

import json
import textwrap
from typing import Dict

from speedproxy.stats.segment import REFUSAL_REASONS, REFUSAL_WORDS
from speedproxy.testing import InMemoryProxy

BASE = """\
server:
  max_header_size: 8KiB
backends:
  default:
    - {id: b1, host: 10.1.0.1, port: 8081}
"""


def proxy_with(routing: str, server: str = "") -> InMemoryProxy:
    """An :class:`InMemoryProxy` whose config is :data:`BASE`, ``server`` keys and ``routing``."""
    text = BASE
    if server:
        text = text.replace("server:\n", "server:\n" + textwrap.indent(textwrap.dedent(server), "  "))
    return InMemoryProxy(text + "routing:\n" + textwrap.indent(textwrap.dedent(routing), "  "))


def refused(proxy: InMemoryProxy, route: str) -> Dict[str, int]:
    """This worker's refusal counts of ``route``, by reason."""
    core = proxy.core
    segment = core.shared.segment
    index = core.stats_index.routes[route]
    values = segment.read_slot(core.shared.slot)
    base = segment.layout.refused_base + index * REFUSAL_WORDS
    return {reason: values[base + i] for i, reason in enumerate(REFUSAL_REASONS)}


def error_of(response) -> str:
    return json.loads(response.body)["error"]
