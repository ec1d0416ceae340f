"""Config changes made through the admin API, validated exactly like the file.

Every change (a whole new config, or one backend added, updated or removed)
is expressed as a mapping laid out like the YAML file and validated by
:func:`speedproxy.config.config_from_mapping`; problems become a 400 answer
naming the wrong field.  Nothing here touches a running process: the result
is a new :class:`~speedproxy.config.Config` for ``update_config``.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import tempfile
from typing import Any, Dict, Mapping, Optional, Tuple

import yaml

from speedproxy.admin.auth import security_problem
from speedproxy.admin.json_resource import APIError, bad_request, not_found
from speedproxy.config import Config, ConfigError, config_from_mapping, config_to_mapping

#: What ``GET /api/v1/config`` shows instead of a secret; sending it back in
#: a ``PUT`` keeps the secret as it is.
MASK = "********"

#: Backend fields ``PUT /api/v1/backends/update`` may change.
UPDATABLE = ("weight", "max_conn", "active", "health_check", "name")

_PATH = re.compile(r'^(?:[A-Za-z0-9_\-.\[\]]|\["(?:[^"\\]|\\.)*"\])+$')
_BACKEND_PATH = re.compile(r'^backends(?:\.[A-Za-z0-9_\-]+|\[".*?"\])\[\d+\]\.?(.*)$')


def masked_mapping(config: Config) -> Dict[str, Any]:
    """The config laid out like the file, with secrets masked."""
    data = config_to_mapping(config)
    if data["admin"].get("api_key"):
        data["admin"]["api_key"] = MASK
    for members in data.get("backends", {}).values():
        for entry in members:
            mask_backend(entry)
    from speedproxy.admin.upstream_masks import mask_upstreams

    mask_upstreams(data)
    from speedproxy.admin.edge_masks import mask_signing_secrets

    mask_signing_secrets(data)
    _mask_urls(data)
    return data


#: URLs whose userinfo password is masked: (section, key).
_URL_SECRETS = (("cluster", "redis"), ("accounting", "collector"))


def _mask_urls(data: Dict[str, Any]) -> None:
    from speedproxy.cluster.address import mask_url_password

    for section, key in _URL_SECRETS:
        block = data.get(section)
        if isinstance(block, dict) and isinstance(block.get(key), str):
            block[key] = mask_url_password(block[key])


def _unmask_urls(data: Dict[str, Any], current: Config) -> None:
    """A URL sent back as it was shown (its password masked) keeps its current password."""
    from speedproxy.cluster.address import PASSWORD_MASK, mask_url_password

    for section, key in _URL_SECRETS:
        block = data.get(section)
        if not isinstance(block, dict) or not isinstance(block.get(key), str) or PASSWORD_MASK not in block[key]:
            continue
        now = getattr(getattr(current, section), key)
        if now and mask_url_password(now) == block[key]:
            block[key] = now
        elif mask_url_password(block[key]) == block[key]:
            raise bad_request(
                f"{section}.{key}: the masked password can only stand for the current one (same URL otherwise)",
                f"{section}.{key}",
            )


def mask_backend(entry: Dict[str, Any]) -> Dict[str, Any]:
    """Mask a backend's secret (``admin_api_key``, for ``cache.cascade_purge``) in place."""
    if entry.get("admin_api_key"):
        entry["admin_api_key"] = MASK
    return entry


def _unmask_backends(data: Dict[str, Any], current: Config) -> None:
    """A backend ``admin_api_key`` sent back as :data:`MASK` keeps its current key."""
    backends = data.get("backends")
    if not isinstance(backends, dict):
        return
    for upstream, members in backends.items():
        if not isinstance(members, list):
            continue
        known = {backend.id: backend for backend in current.backends.get(upstream, ())}
        for position, entry in enumerate(members):
            if isinstance(entry, dict) and entry.get("admin_api_key") == MASK:
                backend = known.get(entry.get("id"))  # type: ignore[arg-type]
                if backend is None or not getattr(backend, "admin_api_key", ""):
                    raise bad_request(
                        "no key is set for this backend, so the mask cannot stand for it",
                        f"backends.{upstream}[{position}].admin_api_key",
                    )
                entry["admin_api_key"] = backend.admin_api_key


_MISSING = re.compile(r"^missing required key '([^']+)'")


def problem_path(problem: str) -> Optional[str]:
    """The key path a config problem line names (``server.port``), if any.

    A missing required key is named by its own path.
    """
    _, _, rest = problem.partition(": ")
    path, sep, message = rest.partition(": ")
    if not (sep and _PATH.match(path)):
        return None
    missing = _MISSING.match(message)
    if missing is not None:
        return f"{path}.{missing.group(1)}"
    return path


def invalid_config(error: ConfigError, field_of: Any = None) -> APIError:
    """A 400 answer for ``error``: the first wrong field, and every problem."""
    problems = list(error.problems)
    field = None
    for problem in problems:
        path = problem_path(problem)
        if path is not None:
            field = field_of(path) if field_of is not None else path
            break
    detail = problems[0] if problems else "invalid config"
    return APIError(400, "invalid_config", detail, field, {"problems": problems})


def validate(data: Mapping[str, Any], current: Config, field_of: Any = None) -> Config:
    """Validate ``data`` like the config file; keep ``current``'s source.

    Also refuses a config that would leave a network-reachable admin API
    without a key.

    :raises APIError: 400 naming the first wrong field.
    """
    base = os.path.dirname(current.source) if current.source else None
    try:
        config = config_from_mapping(data, base_dir=base)
    except ConfigError as error:
        raise invalid_config(error, field_of) from None
    problem = security_problem(config.admin)
    if problem is not None:
        raise bad_request(problem, "admin.api_key")
    return dataclasses.replace(config, source=current.source)


def config_from_body(body: Mapping[str, Any], current: Config) -> Config:
    """The new whole config of a ``PUT /api/v1/config`` body (already unwrapped).

    ``admin.api_key`` equal to :data:`MASK`, or absent while a key is set,
    keeps the current key (send ``""`` to remove it).
    """
    data = copy.deepcopy(dict(body))
    admin = data.get("admin")
    if current.admin.api_key:
        if admin is None:
            data["admin"] = admin = {}
        if isinstance(admin, dict) and admin.get("api_key", MASK) == MASK:
            admin["api_key"] = current.admin.api_key
    elif isinstance(admin, dict) and admin.get("api_key") == MASK:
        raise bad_request("admin.api_key: no key is set, so the mask cannot stand for it", "admin.api_key")
    _unmask_backends(data, current)
    from speedproxy.admin.upstream_masks import unmask_upstreams

    unmask_upstreams(data, current)
    from speedproxy.admin.edge_masks import unmask_signing_secrets

    unmask_signing_secrets(data, current)
    _unmask_urls(data, current)
    return validate(data, current)


# -- backends ------------------------------------------------------------------------------


def _backend_field(path: str) -> str:
    match = _BACKEND_PATH.match(path)
    if match is not None and match.group(1):
        return match.group(1)
    return path


def require_text(params: Mapping[str, Any], name: str) -> str:
    """A required non-empty string parameter (400 naming it otherwise)."""
    value = params.get(name)
    if value is None or value == "":
        raise bad_request(f"{name} is required", name)
    if not isinstance(value, str):
        raise bad_request(f"{name} must be a string, got {type(value).__name__}", name)
    return value


def find_backend(config: Config, upstream: str, backend_id: Optional[str]) -> Tuple[str, Optional[int]]:
    """Check ``upstream`` (and ``backend_id`` if given) exist; 404 otherwise.

    Returns the upstream name and the backend's position in its group.
    """
    if upstream not in config.backends:
        raise not_found(f"unknown upstream {upstream!r} (known: {', '.join(config.backends) or 'none'})", "upstream")
    if backend_id is None:
        return upstream, None
    for position, backend in enumerate(config.backends[upstream]):
        if backend.id == backend_id:
            return upstream, position
    raise not_found(f"upstream {upstream!r} has no backend {backend_id!r}", "backend_id")


def add_backend(config: Config, upstream: str, entry: Mapping[str, Any]) -> Config:
    """``config`` with ``entry`` (a backend laid out like the file) added.

    :raises APIError: 404 unknown upstream, 409 duplicate id, 400 bad field.
    """
    find_backend(config, upstream, None)
    if not isinstance(entry, Mapping):
        raise bad_request("the backend must be a JSON object", "backend")
    backend_id = entry.get("id")
    if isinstance(backend_id, str) and any(b.id == backend_id for b in config.backends[upstream]):
        raise APIError(409, "conflict", f"upstream {upstream!r} already has a backend {backend_id!r}", "id")
    data = config_to_mapping(config)
    data["backends"][upstream].append(dict(entry))
    return validate(data, config, _backend_field)


def update_backend(config: Config, upstream: str, backend_id: str, changes: Mapping[str, Any]) -> Config:
    """``config`` with some fields of one backend changed.

    ``health_check`` given as an object is merged over the current one
    (``null`` removes it).

    :raises APIError: 404 unknown upstream/backend, 400 bad or read-only field.
    """
    _, position = find_backend(config, upstream, backend_id)
    if not changes:
        raise bad_request(f"nothing to update: give one of {', '.join(UPDATABLE)}")
    for name in changes:
        if name not in UPDATABLE:
            raise bad_request(f"{name} cannot be updated (updatable: {', '.join(UPDATABLE)})", name)
    data = config_to_mapping(config)
    entry = data["backends"][upstream][position]
    for name, value in changes.items():
        if name == "health_check" and isinstance(value, Mapping) and isinstance(entry.get("health_check"), dict):
            merged = dict(entry["health_check"])
            merged.update(value)
            entry["health_check"] = merged
        elif name == "health_check" and value is None:
            entry.pop("health_check", None)
        else:
            entry[name] = value
    return validate(data, config, _backend_field)


def remove_backend(config: Config, upstream: str, backend_id: str) -> Config:
    """``config`` without one backend (404 when unknown)."""
    _, position = find_backend(config, upstream, backend_id)
    data = config_to_mapping(config)
    del data["backends"][upstream][position]
    return validate(data, config, _backend_field)


def backend_summary(config: Config, upstream: str, backend_id: str) -> Dict[str, Any]:
    """One backend of ``config`` laid out like the file."""
    _, position = find_backend(config, upstream, backend_id)
    return mask_backend(config_to_mapping(config)["backends"][upstream][position])


# -- writing the file back ----------------------------------------------------------------


def write_config_file(config: Config, path: str) -> str:
    """Write ``config`` to ``path`` atomically; the previous file becomes ``path.bak``.

    Comments and formatting of the old file are not kept (the backup has
    them).  Returns the backup's path (``""`` when there was no file).
    """
    path = os.path.abspath(path)
    text = (
        "# Written by the speedproxy admin API; the previous file is kept as "
        + os.path.basename(path)
        + ".bak\n"
        + yaml.safe_dump(config_to_mapping(config), sort_keys=False, default_flow_style=False)
    )
    mode = 0o640
    backup = ""
    if os.path.exists(path):
        mode = os.stat(path).st_mode & 0o7777
        backup = path + ".bak"
        with open(path, "rb") as original:
            _atomic_write(backup, original.read(), mode)
    _atomic_write(path, text.encode("utf-8"), mode)
    return backup


def _atomic_write(path: str, data: bytes, mode: int) -> None:
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=directory)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
