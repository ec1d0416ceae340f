"""README.rst's Layout section lists every module of speedproxy/ (tools/layout.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_layout_matches_the_tree() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "layout.py"), "--check"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
