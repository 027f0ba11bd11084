#!/usr/bin/env python3
"""Find import cycles in the engine, counting imports inside functions too (they hide layering, not fix it).

    python scripts/check_imports.py [PACKAGE_DIR] [--inside]

Prints the strongly connected groups of modules that import each other (exit 1 if any) and, with
``--inside``, every import that sits inside a function with the comment that gives its reason
(heavy or optional imports are the only ones that belong there; one without a comment is marked).
``if TYPE_CHECKING:`` imports are not counted: they never run.
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parents[1]


def modules(pkg_dir: Path) -> Dict[str, Path]:
    """Dotted module name -> file, for every .py under the package folder."""
    out = {}
    for f in sorted(pkg_dir.rglob("*.py")):
        parts = list(f.relative_to(pkg_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def targets(mod: str, is_pkg: bool, node: ast.AST, known: Dict[str, Path]) -> List[str]:
    """The package modules an import statement loads (``from . import x`` loads the module x)."""
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = mod.split(".")
            base = base[: len(base) - node.level + (1 if is_pkg else 0)]
            stem = ".".join(base + ([node.module] if node.module else []))
        else:
            stem = node.module or ""
        names = [stem] + [f"{stem}.{a.name}" for a in node.names]
    else:
        names = [a.name for a in node.names]
    return [n for n in names if n in known]


def graph(known: Dict[str, Path]):
    """Edges between modules, and the imports found inside functions as (module, line, text, reason)."""
    edges: Dict[str, Set[str]] = {m: set() for m in known}
    inside = []
    for mod, path in known.items():
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        tree = ast.parse(text)
        typing_only = {id(n) for b in ast.walk(tree) if isinstance(b, ast.If) and "TYPE_CHECKING" in ast.dump(b.test)
                       for s in b.body for n in ast.walk(s)}
        in_function = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                       for n in ast.walk(f)}
        imports = sorted((n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))), key=lambda n: n.lineno)
        for node in imports:
            if id(node) in typing_only:
                continue
            for t in targets(mod, path.name == "__init__.py", node, known):
                # a package and its own submodules are one unit (an __init__ re-exports its rooms)
                if t != mod and not mod.startswith(t + ".") and not t.startswith(mod + "."):
                    edges[mod].add(t)
            if id(node) in in_function:
                line = lines[node.lineno - 1]
                above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
                reason = line.split("#", 1)[1].strip() if "#" in line else (above[1:].strip() if above.startswith("#") else "")
                if not reason and inside and inside[-1][:2] == (mod, node.lineno - 1):
                    reason = inside[-1][3]  # one comment covers a block of imports
                inside.append((mod, node.lineno, line.strip().split("#")[0].strip(), reason))
    return edges, inside


def cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected groups of more than one module (Tarjan, iterative)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    out: List[List[str]] = []
    counter = 0
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                group = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    group.append(w)
                    if w == v:
                        break
                if len(group) > 1:
                    out.append(sorted(group))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("package", nargs="?", default=str(ROOT / "HILASegment" / "HILASegmentLib"))
    ap.add_argument("--inside", action="store_true", help="list imports inside functions with their reasons")
    a = ap.parse_args(argv)
    known = modules(Path(a.package))
    edges, inside = graph(known)
    found = cycles(edges)
    if a.inside:
        for mod, line, stmt, reason in inside:
            print(f"{mod}:{line}: {stmt}  # {reason or 'NO REASON GIVEN'}")
        print(f"{len(inside)} import(s) inside functions, {sum(1 for *_, r in inside if not r)} without a reason")
    for group in found:
        print("cycle: " + " <-> ".join(group))
    print(f"{len(known)} modules, {sum(len(e) for e in edges.values())} import edges, "
          f"{len(found)} cycle(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
