"""Signing keys in the admin API: shown masked, kept when sent back masked.

``GET /api/v1/config`` shows a ``routing.<name>.signed_urls.secrets`` entry
written as the key itself as ``********`` (one written as ``${file:...}`` or
``${env:...}`` is shown as written: it names where the key is, not the
key).  In a ``PUT``, the n-th ``********`` of a route's list stands for the
n-th key of that route written as is, so a list with a new key put first
(rotation) keeps the others.
"""

from __future__ import annotations

from typing import Any, Dict, List

from speedproxy.admin.json_resource import bad_request
from speedproxy.config.substitutions import is_reference

MASK = "********"


def mask_signing_secrets(data: Dict[str, Any]) -> None:
    """Mask, in place, the literal signing keys of a config laid out like the file."""
    for route in (data.get("routing") or {}).values():
        signed = route.get("signed_urls") if isinstance(route, dict) else None
        if isinstance(signed, dict) and isinstance(signed.get("secrets"), list):
            signed["secrets"] = [
                item if not isinstance(item, str) or is_reference(item) else MASK for item in signed["secrets"]
            ]


def unmask_signing_secrets(data: Dict[str, Any], current: Any) -> None:
    """Put the current keys back for the masks of a ``PUT`` body (in place).

    :raises APIError: 400 when a mask stands for no key.
    """
    routing = data.get("routing")
    if not isinstance(routing, dict):
        return
    for name, route in routing.items():
        signed = route.get("signed_urls") if isinstance(route, dict) else None
        secrets = signed.get("secrets") if isinstance(signed, dict) else None
        if not isinstance(secrets, list) or MASK not in secrets:
            continue
        known = current.routing.get(name)
        settings = getattr(known, "signed_urls", None)
        literal: List[str] = [
            secret for source, secret in zip(settings.sources, settings.secrets) if not is_reference(source)
        ] if settings is not None else []
        out = []
        for index, item in enumerate(secrets):
            if item == MASK:
                if not literal:
                    raise bad_request(
                        "no key of this route is left for the mask to stand for",
                        f"routing.{name}.signed_urls.secrets[{index}]",
                    )
                item = literal.pop(0)
            out.append(item)
        signed["secrets"] = out
