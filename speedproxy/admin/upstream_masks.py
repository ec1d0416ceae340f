"""Upstream credentials in the admin API: masked when shown, kept when sent back masked.

``GET /api/v1/config`` (and the TMDB proxy's ``/config``) show each value of
``upstreams.<name>.add_query`` and ``set_headers`` that is written in the
file as :data:`~speedproxy.admin.changes.MASK`; a ``${env:...}`` or
``${file:...}`` reference is shown as is (it names where the secret is,
not the secret).  A ``PUT`` that sends the mask back keeps the current value.
"""

from __future__ import annotations

from typing import Any, Dict

from speedproxy.admin.json_resource import bad_request
from speedproxy.config.model import Config
from speedproxy.config.substitutions import is_reference

_KEYS = (("add_query", "add_query_sources"), ("set_headers", "set_headers_sources"))


def mask_upstreams(data: Dict[str, Any]) -> None:
    """Mask written-in credential values of ``data["upstreams"]`` in place."""
    from speedproxy.admin.changes import MASK

    for rules in (data.get("upstreams") or {}).values():
        for key, _ in _KEYS:
            values = rules.get(key)
            if isinstance(values, dict):
                for name, value in values.items():
                    if not (isinstance(value, str) and is_reference(value)):
                        values[name] = MASK


def unmask_upstreams(data: Dict[str, Any], current: Config) -> None:
    """Replace each masked value of a ``PUT`` body by the current one (as written)."""
    from speedproxy.admin.changes import MASK

    upstreams = data.get("upstreams")
    if not isinstance(upstreams, dict):
        return
    for group, rules in upstreams.items():
        if not isinstance(rules, dict):
            continue
        known = current.upstreams.get(group)
        for key, sources in _KEYS:
            values = rules.get(key)
            if not isinstance(values, dict):
                continue
            for name, value in values.items():
                if value != MASK:
                    continue
                was = dict(getattr(known, sources, ())) if known is not None else {}
                if name not in was:
                    raise bad_request(
                        "no value is set for this key, so the mask cannot stand for it",
                        f"upstreams.{group}.{key}.{name}",
                    )
                values[name] = was[name]
