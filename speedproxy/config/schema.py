"""The one declaration of the config file's layout: each key's kind, read from the file and written back.

Every section of the file is a :class:`Section`: the model dataclass it
builds and, per key, a :class:`Kind` that holds both directions for that
key, the converter that reads and validates it and the writer that gives
it back as the file has it (``30s``, ``64KiB``, a list).  Loading
(:mod:`speedproxy.config.loader`), writing back (``persist``, workers' copy)
and ``GET /api/v1/config`` all go through these tables, so a key cannot be
read one way and written another; ``tests/unit/config/test_config_schema.py``
walks every model field against them.

A converter takes ``(problems, value, path)`` and returns the model value.
It raises ``ValueError`` for a problem with the value as a whole (reported
by the caller at the value's line), or reports nested problems itself and
raises :class:`~speedproxy.config.problems.Reported`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, Mapping, Optional, Tuple

from speedproxy.config.located import Val
from speedproxy.config.problems import Problems, Reported, join, unknown_key
from speedproxy.config.units import describe_value

__all__ = [
    "Converter",
    "Kind",
    "Section",
    "equals",
    "is_empty",
    "is_none",
    "omit_if",
    "optional_section",
    "read_fields",
    "read_record",
    "read_section",
    "section",
    "sections_under",
    "write_section",
    "written_from",
]

Converter = Callable[[Problems, Val, str], Any]
Writer = Callable[[Any], Any]


def same(value: Any) -> Any:
    """A value written back as it is (strings, numbers, booleans)."""
    return value


@dataclass(frozen=True)
class Kind:
    """How one key is read from the file and written back: both directions, declared once.

    Calling a kind reads a value (it is a converter).
    """

    read: Converter
    #: The model value as plain data laid out like the file.
    write: Writer = same
    #: Leave the key out of the written form when this is true of its value.
    omit: Optional[Callable[[Any], bool]] = None
    #: The model attribute the key is written from (default: the key itself).
    attr: Optional[str] = None
    #: The section this key holds, if it holds one (see :func:`sections_under`).
    holds: Optional["Section"] = None

    def __call__(self, problems: Problems, val: Val, path: str) -> Any:
        return self.read(problems, val, path)


@dataclass(frozen=True)
class Section:
    """A mapping of the file and the model dataclass it builds."""

    cls: type
    #: Key -> kind, in the order the keys are written back.
    fields: Mapping[str, Kind]
    #: Keys that must be given.
    required: Tuple[str, ...] = ()
    #: Model fields that are not a key of their own, and why (``name``: the
    #: key it sits under; a resolved secret: its ``${...}`` form is the key).
    derived: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A bare converter in a table is a kind written back as it is.
        kinds = {key: kind if isinstance(kind, Kind) else Kind(kind) for key, kind in self.fields.items()}
        object.__setattr__(self, "fields", kinds)


# -- omitting keys when writing back ----------------------------------------------------


def is_none(value: Any) -> bool:
    return value is None


def is_empty(value: Any) -> bool:
    """``""``, ``()``, ``False``, ``None``: nothing set."""
    return not value


def equals(default: Any) -> Callable[[Any], bool]:
    """True of values equal to *default* (a section left at its defaults)."""
    return lambda value: value == default


def omit_if(predicate: Callable[[Any], bool], kind: Kind) -> Kind:
    """*kind*, left out of the written form when *predicate* is true of the value."""
    return dataclasses.replace(kind, omit=predicate)


def written_from(attr: str, kind: Kind) -> Kind:
    """*kind*, written back from model attribute *attr* (a secret's form as written)."""
    return dataclasses.replace(kind, attr=attr)


# -- reading ------------------------------------------------------------------------------


def read_fields(
    problems: Problems,
    val: Val,
    path: str,
    fields: Mapping[str, Converter],
    required: Iterable[str] = (),
) -> Dict[str, Any]:
    """Convert the mapping *val* key by key; raise :class:`Reported` if unusable.

    Unknown keys and bad values are reported; the valid keys are returned,
    unless the value is not a mapping or a *required* key is missing or bad.
    """
    if not isinstance(val.value, dict):
        problems.add(val.line, path, f"expected a mapping, got {describe_value(val.value)}")
        raise Reported
    result: Dict[str, Any] = {}
    for key, item in val.value.items():
        sub = join(path, key)
        convert = fields.get(key)
        if convert is None:
            problems.add(item.line, sub, unknown_key(key, fields))
            continue
        if item.invalid:
            continue
        try:
            result[key] = convert(problems, item, sub)
        except ValueError as exc:
            problems.add(item.line, sub, str(exc))
        except Reported:
            pass
    complete = True
    for key in required:
        if key not in val.value:
            problems.add(val.line, path, f"missing required key '{key}'")
        complete = complete and key in result
    if not complete:
        raise Reported
    return result


def read_record(problems: Problems, val: Val, path: str, spec: Section) -> Dict[str, Any]:
    """:func:`read_fields` with *spec*'s keys and required keys."""
    return read_fields(problems, val, path, spec.fields, spec.required)


def read_section(problems: Problems, val: Optional[Val], path: str, spec: Section) -> Any:
    """Build *spec*'s dataclass from an optional mapping; its defaults where missing or bad."""
    if val is None or val.value is None:
        return spec.cls()
    try:
        return spec.cls(**read_record(problems, val, path, spec))
    except Reported:
        return spec.cls()


# -- writing back -------------------------------------------------------------------------


def write_section(spec: Section, record: Any) -> Dict[str, Any]:
    """*record* (an instance of ``spec.cls``) as plain data laid out like the file."""
    data: Dict[str, Any] = {}
    for key, kind in spec.fields.items():
        value = getattr(record, kind.attr or key)
        if kind.omit is not None and kind.omit(value):
            continue
        data[key] = kind.write(value)
    return data


# -- kinds holding a section --------------------------------------------------------------


def section(spec: Section) -> Kind:
    """A nested mapping always present in the model: its defaults when ``null`` or bad."""
    return Kind(
        read=lambda problems, val, path: read_section(problems, val, path, spec),
        write=lambda record: write_section(spec, record),
        holds=spec,
    )


def optional_section(spec: Section, read: Converter) -> Kind:
    """A nested mapping that may be off (``None``, left out when written), read by *read*."""
    return Kind(read=read, write=lambda record: write_section(spec, record), omit=is_none, holds=spec)


def sections_under(spec: Section) -> Iterator[Section]:
    """*spec* and every section it holds, each once (for walking the whole schema)."""
    seen = []
    todo = [spec]
    while todo:
        current = todo.pop(0)
        if any(current is known for known in seen):
            continue
        seen.append(current)
        yield current
        todo.extend(kind.holds for kind in current.fields.values() if kind.holds is not None)
