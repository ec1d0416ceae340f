"""YAML text and JSON data turned into located values: each value keeps the line it came from.

The YAML is composed into nodes (never ``yaml.load``-ed), so every value
keeps its line for the messages; merge keys (``<<: *anchor``) work, bad
tags and recursive aliases are reported.  Plain (unquoted) scalars keep the
text they were written as (``raw``), so a string setting given ``off`` or
``1`` takes it as written.  Data from the admin API (JSON) becomes the same
tree, without lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Set

import yaml

from speedproxy.config.problems import ConfigError, Problems, join
from speedproxy.config.units import describe_value

__all__ = ["Val", "from_python", "from_yaml", "plain"]


@dataclass
class Val:
    """A value (``dict`` of ``Val``, ``list`` of ``Val`` or a scalar) and its line."""

    value: Any
    line: Optional[int]
    #: The text of a plain (unquoted) YAML scalar, else ``None``.
    raw: Optional[str] = None
    #: Already reported as unreadable (bad tag, recursive alias): skip checks.
    invalid: bool = False


_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_TAG + name for name in ("null", "bool", "int", "float", "str")}
_CONSTRUCTOR = yaml.constructor.SafeConstructor()


def from_yaml(problems: Problems, text: str, filename: str) -> Val:
    """The located tree of YAML *text*; problems of single values go to *problems*.

    :raises ConfigError: if *text* is not YAML at all (``FILE:LINE: invalid YAML: ...``).
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = filename if mark is None else f"{filename}:{mark.line + 1}"
        message = exc.problem or exc.context or "syntax error"
        if exc.context and exc.problem and exc.context_mark is not None:
            message += f" ({exc.context} on line {exc.context_mark.line + 1})"
        raise ConfigError([f"{where}: invalid YAML: {message}"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([f"{filename}: invalid YAML: {exc}"]) from exc
    if node is None:
        return Val(None, 1)
    return _from_node(problems, node, "", node.start_mark.line + 1, set())


def _from_node(problems: Problems, node: yaml.Node, path: str, line: int, active: Set[int]) -> Val:
    """Convert a composed YAML node to a :class:`Val` tree, resolving scalars safely."""
    if isinstance(node, yaml.ScalarNode):
        if node.tag in _SCALAR_TAGS:
            try:
                value = _CONSTRUCTOR.yaml_constructors[node.tag](_CONSTRUCTOR, node)
            except (ValueError, yaml.YAMLError):
                problems.add(line, path, f"cannot read {node.value!r} as {node.tag[len(_TAG):]}")
                return Val(node.value, line, invalid=True)
        elif node.tag == _TAG + "timestamp":
            value = node.value
        else:
            problems.add(line, path, f"unsupported YAML tag {node.tag!r}")
            return Val(node.value, line, invalid=True)
        return Val(value, line, node.value if node.style is None else None)
    if id(node) in active:
        problems.add(line, path, "recursive alias")
        return Val(None, line, invalid=True)
    active.add(id(node))
    try:
        if isinstance(node, yaml.SequenceNode):
            items = [
                _from_node(problems, item, f"{path}[{index}]", item.start_mark.line + 1, active)
                for index, item in enumerate(node.value)
            ]
            return Val(items, line)
        return Val(_from_mapping_node(problems, node, path, active), line)
    finally:
        active.discard(id(node))


def _from_mapping_node(problems: Problems, node: yaml.MappingNode, path: str, active: Set[int]) -> Dict[str, Val]:
    result: Dict[str, Val] = {}
    key_lines: Dict[str, int] = {}
    merged: List[Val] = []
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        if key_node.tag == _TAG + "merge":
            merged.append(_from_node(problems, value_node, path, line, active))
            continue
        if not isinstance(key_node, yaml.ScalarNode):
            problems.add(line, path, "mapping keys must be plain strings")
            continue
        key = key_node.value
        sub = join(path, key)
        if key in result:
            problems.add(line, sub, f"duplicate key '{key}' (first defined on line {key_lines[key]})")
            continue
        key_lines[key] = line
        result[key] = _from_node(problems, value_node, sub, line, active)
    for source in merged:  # explicit keys win, then earlier merged mappings
        for mapping in source.value if isinstance(source.value, list) else [source]:
            if not isinstance(mapping.value, dict):
                problems.add(mapping.line, path, "'<<' can only merge mappings")
                continue
            for key, value in mapping.value.items():
                result.setdefault(key, value)
    return result


def from_python(problems: Problems, value: Any, path: str) -> Val:
    """Convert plain Python data (from JSON) to a :class:`Val` tree without lines."""
    if isinstance(value, Mapping):
        result: Dict[str, Val] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                problems.add(None, path, f"mapping keys must be strings, got {describe_value(key)}")
                continue
            result[key] = from_python(problems, item, join(path, key))
        return Val(result, None)
    if isinstance(value, (list, tuple)):
        return Val([from_python(problems, item, f"{path}[{i}]") for i, item in enumerate(value)], None)
    return Val(value, None)


def plain(val: Val) -> Any:
    """A located value as plain Python data (for a filter's ``check_options``)."""
    if isinstance(val.value, dict):
        return {key: plain(item) for key, item in val.value.items()}
    if isinstance(val.value, list):
        return [plain(item) for item in val.value]
    return val.value
