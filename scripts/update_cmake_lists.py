#!/usr/bin/env python3
"""Regenerate the file lists in HILASegment/CMakeLists.txt from what is on disk.

slicerMacroBuildScriptedModule installs only the files it is told about, so a Python file or a
resource missing from the list works from source and breaks in the packaged extension. This
script rewrites the two lists between their markers; ``--check`` only reports (exit 1 when stale).

usage: python scripts/update_cmake_lists.py [--check]
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "HILASegment"
CMAKE = MODULE / "CMakeLists.txt"
SKIP_PARTS = {"__pycache__", "Testing", ".pytest_cache"}
SKIP_SUFFIXES = {".pyc", ".pyo"}


def _tracked(path: Path) -> bool:
    rel = path.relative_to(MODULE)
    return not (set(rel.parts) & SKIP_PARTS) and path.suffix not in SKIP_SUFFIXES and not path.name.startswith(".") \
        and not any(p.endswith(".egg-info") for p in rel.parts)


def python_scripts() -> list:
    """Every .py of the module (HILASegment.py, the HILASegmentLib engine and the HILASegmentSlicerLib glue), sorted."""
    files = [MODULE / "HILASegment.py"] + sorted((MODULE / "HILASegmentLib").rglob("*.py")) \
        + sorted((MODULE / "HILASegmentSlicerLib").rglob("*.py"))
    return [p.relative_to(MODULE).as_posix() for p in files if p.exists() and _tracked(p)]


def resources() -> list:
    """Every resource file: Resources/** and the package's data files (presets, ...), sorted."""
    out = []
    for base in (MODULE / "Resources", MODULE / "HILASegmentLib"):
        for p in sorted(base.rglob("*")):
            if p.is_file() and _tracked(p) and p.suffix != ".py":
                out.append(p.relative_to(MODULE).as_posix())
    return out


def render(text: str, scripts: list, res: list) -> str:
    def block(name: str, items: list, body: str) -> str:
        pattern = re.compile(rf"(set\({name}\n)(.*?)(  \))", re.S)
        if not pattern.search(body):
            raise SystemExit(f"{CMAKE}: no set({name} ... ) block to update")
        return pattern.sub(lambda m: m.group(1) + "".join(f"  {i}\n" for i in items) + m.group(3), body, count=1)

    return block("MODULE_PYTHON_RESOURCES", res, block("MODULE_PYTHON_SCRIPTS", scripts, text))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="report a stale list and exit 1 instead of rewriting it")
    args = ap.parse_args(argv)
    old = CMAKE.read_text(encoding="utf-8")
    new = render(old, python_scripts(), resources())
    if new == old:
        print(f"{CMAKE.relative_to(ROOT)}: up to date ({len(python_scripts())} scripts, {len(resources())} resources)")
        return 0
    if args.check:
        print(f"{CMAKE.relative_to(ROOT)}: stale; run python scripts/update_cmake_lists.py", file=sys.stderr)
        return 1
    CMAKE.write_text(new, encoding="utf-8")
    print(f"{CMAKE.relative_to(ROOT)}: updated ({len(python_scripts())} scripts, {len(resources())} resources)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
