#!/usr/bin/env python3
"""The layer table of HILASegment, and the check that every import keeps to it: no cycle, nothing imported upward.

    python scripts/check_imports.py [--inside]            # the module folder: engine, Slicer library, module file
    python scripts/check_imports.py PACKAGE_DIR [--inside]  # cycles of one package only (no layer table)

Every import counts: top level, inside functions (they hide layering, they do not fix it) and ``if TYPE_CHECKING:``
ones (an annotation is still an arrow a reader follows). Prints the strongly connected groups of modules that import
each other and every import that reaches a higher layer than its own module's (:data:`LAYERS`); exit 1 if any.
``--inside`` also lists every import inside a function with the comment that gives its reason (heavy or optional
imports are the only ones that belong there; one without a comment is marked). ``Testing/test_layers.py`` runs this
check in ``make test``.
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "HILASegment"

#: The layers, lowest first. A module may import its own layer and the layers below it, never one above; the most
#: specific prefix names a module's layer. A new package gets its row here (the check refuses a module without one).
LAYERS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("ground", ("HILASegmentLib", "HILASegmentLib.ground")),  # errors, durable writes, paths, progress, colours...
    ("formats", ("HILASegmentLib.formats",)),                 # volumes, .seg.nrrd, segmentations, label files
    ("dicom", ("HILASegmentLib.dicom",)),                     # SEG, RTSTRUCT, the series they refer to, DICOMweb
    ("models", ("HILASegmentLib.models",)),                   # model cards, ONNX metadata, catalog, model input
    ("inference", ("HILASegmentLib.inference",)),             # the Segmenter, its likely-error map, the assistant
    ("quality", ("HILASegmentLib.quality",)),                 # effort, review ranking, learned quality model
    ("workspace", ("HILASegmentLib.workspace",)),             # the ledger and its immutable files
    ("training", ("HILASegmentLib.training",)),               # the trainer (torch only here)
    ("simulate", ("HILASegmentLib.simulate",)),               # the simulated loop
    ("cli", ("HILASegmentLib.cli", "HILASegmentLib.__main__")),  # the `hila` commands
    ("Slicer library", ("HILASegmentSlicerLib",)),            # the glue's logic, Slicer objects passed in
    ("Slicer module", ("HILASegment",)),                      # HILASegment.py: wiring only
)


def modules(pkg_dir: Path) -> Dict[str, Path]:
    """Dotted module name -> file, for every .py under the package folder."""
    out = {}
    for f in sorted(pkg_dir.rglob("*.py")):
        if "__pycache__" in f.parts:
            continue
        parts = list(f.relative_to(pkg_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def module_folder(folder: Path = MODULE_DIR) -> Dict[str, Path]:
    """Every module of the Slicer module folder: the engine, the Slicer library and the module file."""
    known = {**modules(folder / "HILASegmentLib"), **modules(folder / "HILASegmentSlicerLib")}
    known["HILASegment"] = folder / "HILASegment.py"
    return known


def layer_of(mod: str, layers=LAYERS) -> Optional[int]:
    """The index in ``layers`` of a module's layer (its most specific prefix), None when no row names it."""
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(layers):
        for p in prefixes:
            if (mod == p or mod.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    return best


def upward(edges: Dict[str, Set[str]], layers=LAYERS) -> List[str]:
    """Every import that reaches a higher layer than its module's, and every module no layer names, as lines."""
    out = [f"{m}: in no layer of the table" for m in sorted(edges) if layer_of(m, layers) is None]
    for m in sorted(edges):
        lm = layer_of(m, layers)
        for t in sorted(edges[m]):
            lt = layer_of(t, layers)
            if lm is not None and lt is not None and lt > lm:
                out.append(f"{m} ({layers[lm][0]}) imports {t} ({layers[lt][0]}): up a layer")
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
        in_function = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                       for n in ast.walk(f)}
        imports = sorted((n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))), key=lambda n: n.lineno)
        for node in imports:
            for t in targets(mod, path.name == "__init__.py", node, known):
                # every import is an edge, a package's __init__ importing its own submodules and a submodule
                # importing its package's __init__ included: a loop through an __init__ is a loop too
                if t != mod:
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
    ap.add_argument("package", nargs="?", default=None, help="one package folder: its cycles only (default: the "
                    "whole module folder against the layer table)")
    ap.add_argument("--inside", action="store_true", help="list imports inside functions with their reasons")
    a = ap.parse_args(argv)
    known = modules(Path(a.package)) if a.package else module_folder()
    edges, inside = graph(known)
    found = cycles(edges)
    up = [] if a.package else upward(edges)
    if a.inside:
        for mod, line, stmt, reason in inside:
            print(f"{mod}:{line}: {stmt}  # {reason or 'NO REASON GIVEN'}")
        print(f"{len(inside)} import(s) inside functions, {sum(1 for *_, r in inside if not r)} without a reason")
    for group in found:
        print("cycle: " + " <-> ".join(group))
    for line in up:
        print(line)
    print(f"{len(known)} modules, {sum(len(e) for e in edges.values())} import edges, "
          f"{len(found)} cycle(s)" + ("" if a.package else f", {len(up)} upward import(s)"))
    return 1 if found or up else 0


if __name__ == "__main__":
    sys.exit(main())
