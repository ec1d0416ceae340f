#!/usr/bin/env python3
"""Print the README's Layout block: every package and module of speedproxy/,
one line each, with the first line of its docstring.

    python3 tools/layout.py            # print the block
    python3 tools/layout.py --check    # exit 1 if README.rst's block differs

tests/unit/test_layout.py runs the check, so the Layout section cannot
drift from the tree.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "speedproxy"
BEGIN = ".. layout:begin"
END = ".. layout:end"
#: Generated code, listed by its package's docstring only.
SKIPPED = ("_pb2.py", "_pb2_grpc.py")
NAME_WIDTH = 28


def summary(path: Path) -> str:
    """The first line of the module's docstring (its one-line summary)."""
    try:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    except SyntaxError:
        doc = None
    if not doc:
        return "(no docstring)"
    text = " ".join(doc.strip().split("\n\n")[0].split())
    sentence = re.split(r"(?<=[.;])\s", text, maxsplit=1)[0]
    return sentence.rstrip(".;")


def lines_for(directory: Path, depth: int) -> List[str]:
    out: List[str] = []
    indent = "  " * depth
    entries = sorted(directory.iterdir(), key=lambda p: (p.is_dir(), p.name))
    for path in entries:
        if path.name.startswith((".", "__pycache__")):
            continue
        if path.is_dir():
            init = path / "__init__.py"
            if not init.exists():
                continue
            out += _entry(f"{indent}{path.name}/", summary(init))
            out += lines_for(path, depth + 1)
        elif path.suffix == ".py" and path.name != "__init__.py" and not path.name.endswith(SKIPPED):
            out += _entry(f"{indent}{path.name}", summary(path))
    return out


def _entry(name: str, text: str) -> List[str]:
    return [name.ljust(NAME_WIDTH - 1) + " " + text]


def block() -> str:
    body = ["speedproxy/"] + ["  " + line for line in lines_for(PACKAGE, 0)]
    return "::\n\n" + "\n".join("    " + line.rstrip() for line in body) + "\n"


def readme_block(readme: str) -> str:
    start = readme.index(BEGIN) + len(BEGIN)
    return readme[start : readme.index(END)].strip("\n") + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with README.rst's Layout block")
    args = parser.parse_args()
    wanted = block()
    if not args.check:
        sys.stdout.write(wanted)
        return 0
    readme = (ROOT / "README.rst").read_text(encoding="utf-8")
    if readme_block(readme) != wanted:
        sys.stderr.write("README.rst's Layout block differs from the tree: run python3 tools/layout.py\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
