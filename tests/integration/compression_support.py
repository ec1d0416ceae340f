"""Helpers of the compression and upstream-rules end-to-end tests.

* :func:`ensure_curl` finds curl with gzip and brotli decoding, installing
  Debian's package if it is missing (a missing one is a failure).
* :func:`curl` fetches one URL with curl and returns what it got: status,
  headers (lower-cased names) and the body as curl wrote it (decoded with
  ``compressed=True``, as sent otherwise).
* :func:`compression_counts` reads ``speedproxy_compression_total`` from
  ``/metrics``.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from speedproxy.testing import ProxyProcess

from debian_support import ensure_program
from workers_support import metrics

TIMEOUT = 20.0


def _curl_codings(path: str) -> List[str]:
    done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=TIMEOUT)
    features = ""
    for line in done.stdout.splitlines():
        if line.startswith("Features:"):
            features = line.lower()
    return [name for name in ("libz", "brotli") if name in features]


def ensure_curl() -> str:
    """The curl binary, able to decode gzip and brotli (Debian's ``curl``, installed if missing)."""
    return ensure_program(
        "curl", "curl", "the compression end-to-end tests (gzip and brotli)", lambda path: len(_curl_codings(path)) == 2
    )


@dataclass
class Fetched:
    status: int
    headers: Dict[str, str]
    body: bytes

    def header(self, name: str) -> Optional[str]:
        return self.headers.get(name.lower())


def curl(
    binary: str,
    url: str,
    *,
    compressed: bool = True,
    accept_encoding: Optional[str] = None,
    headers: Sequence[Tuple[str, str]] = (),
    method: str = "GET",
) -> Fetched:
    """One request with curl; ``accept_encoding`` replaces what ``--compressed`` offers."""
    with tempfile.TemporaryDirectory(prefix="curl-") as directory:
        head_path = Path(directory) / "head"
        body_path = Path(directory) / "body"
        argv = [binary, "-sS", "--max-time", str(TIMEOUT), "-D", str(head_path), "-o", str(body_path)]
        if method == "HEAD":
            argv.append("-I")
        elif method != "GET":
            argv += ["-X", method]
        if compressed:
            argv.append("--compressed")
        if accept_encoding is not None:
            argv += ["-H", f"Accept-Encoding: {accept_encoding}"]
        for name, value in headers:
            argv += ["-H", f"{name}: {value}"]
        argv.append(url)
        done = subprocess.run(argv, capture_output=True, timeout=TIMEOUT + 5)
        assert done.returncode == 0, f"curl failed ({done.returncode}): {done.stderr.decode(errors='replace')}"
        lines = head_path.read_bytes().decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields: Dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                key = name.strip().lower()
                fields[key] = fields[key] + ", " + value.strip() if key in fields else value.strip()
        body = body_path.read_bytes() if body_path.exists() else b""
        return Fetched(status, fields, body)


def compression_counts(proxy: ProxyProcess, route: str) -> Dict[str, float]:
    """``{event: count}`` of ``speedproxy_compression_total`` for ``route``."""
    samples = metrics(proxy).get("speedproxy_compression", [])
    return {
        labels["event"]: value
        for name, labels, value in samples
        if name == "speedproxy_compression_total" and labels.get("route") == route
    }
