"""``${file:/path}`` and ``${env:NAME}`` in secret config values.

A secret (a signing key, an upstream credential) should not have to sit in
the config file itself: a value written as ``${file:/etc/speedproxy/url.key}``
is the content of that file (trailing newlines and spaces dropped), one
written as ``${env:URL_KEY}`` the value of that environment variable.  Only
fields that say so accept these forms; elsewhere ``${...}`` is plain text.

The form as written is what the config keeps to show and to write back
(``GET /api/v1/config``, a persisted change): the secret itself never
leaves the process that read it.  The master and every worker each resolve
it (workers get the config laid out like the file), so a ``${file:}`` path
must be absolute.
"""

from __future__ import annotations

import os
import re
from typing import Mapping, Optional

__all__ = ["SubstitutionError", "is_reference", "resolve"]

_REFERENCE = re.compile(r"\$\{(file|env):([^}]*)\}")
#: Largest secret file read (a key is a few dozen bytes; this is not a data file).
MAX_FILE = 64 * 1024


class SubstitutionError(ValueError):
    """A ``${...}`` reference cannot be resolved; the message says why."""


def is_reference(text: str) -> bool:
    """Is ``text`` a ``${file:...}`` or ``${env:...}`` reference (as a whole)?"""
    return _REFERENCE.fullmatch(text) is not None


def resolve(text: str, environ: Optional[Mapping[str, str]] = None) -> str:
    """The value ``text`` stands for: itself, a file's content or a variable's value.

    :raises SubstitutionError: for an unknown ``${...}`` form, a relative or
        unreadable file, an unset variable, or an empty result.
    """
    if "${" not in text:
        return text
    match = _REFERENCE.fullmatch(text)
    if match is None:
        # The value may be a literal secret that happens to hold "${": say where, never what.
        raise SubstitutionError(
            f"the value has '${{' at character {text.index('${') + 1} of {len(text)} but is not a substitution: "
            "write the whole value as ${file:/absolute/path} or ${env:NAME}"
        )
    kind, name = match.group(1), match.group(2).strip()
    if kind == "env":
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise SubstitutionError("${env:...}: what follows env: is not an environment variable name")
        value = (os.environ if environ is None else environ).get(name)
        if value is None:
            raise SubstitutionError(f"${{env:{name}}}: the environment variable {name} is not set")
    else:
        if not os.path.isabs(name):
            raise SubstitutionError(f"${{file:{name}}}: the path must be absolute")
        try:
            with open(name, "rb") as stream:
                data = stream.read(MAX_FILE + 1)
        except OSError as error:
            raise SubstitutionError(f"${{file:{name}}}: cannot read it: {error.strerror or error}") from None
        if len(data) > MAX_FILE:
            raise SubstitutionError(f"${{file:{name}}}: larger than {MAX_FILE} bytes, not a secret")
        try:
            value = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SubstitutionError(f"${{file:{name}}}: not UTF-8 text") from None
    value = value.rstrip("\r\n\t ")
    if not value:
        raise SubstitutionError(f"${{{kind}:{name}}} is empty")
    return value
