"""The model catalog: which models HILASegment offers, and where their files are on this machine.

Why a catalog and not a folder listing: the model selector and a new workspace need a model's
modality, licence, version and size *before* its file is present (the TAPS preset's file arrives
with the ``lavlab-taps`` package), and the files must be found wherever the engine was installed:

1. ``HILA_MODELS_DIR`` (one or more folders, ``os.pathsep``-separated): the user's own models first;
2. the module's own ``Resources/Models`` (``<module>/Resources/Models``; Slicer installs a scripted
   module's resources beside its ``.py`` files in ``qt-scripted-modules``);
3. the package's data (``HILASegmentLib/models``: ``catalog.json`` and the CT starter), which a
   Slicer install (the module CMakeLists lists it), ``pip install`` and a source checkout all carry.

No imports of the rest of the package (``modelcard`` imports this module, not the other way round).
"""
from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

__all__ = ["CatalogEntry", "PACKAGE_MODELS_DIR", "MODULE_MODELS_DIR", "model_dirs", "find_model_file",
           "entries", "get", "starter_for", "catalog_path"]

PACKAGE_MODELS_DIR = Path(__file__).resolve().parent
#: ``<module folder>/Resources/Models``: the module's own resources, in a source checkout and once installed.
MODULE_MODELS_DIR = Path(__file__).resolve().parents[2] / "Resources" / "Models"
CATALOG_NAME = "catalog.json"


@dataclass(frozen=True)
class CatalogEntry:
    """One model the selector can offer: a bundled ONNX file (``kind`` "file") or a preset ("preset")."""

    name: str
    kind: str
    modality: str
    version: str = ""
    licence: str = ""
    checksum: str = ""
    size_bytes: int = 0
    labels: Tuple[str, ...] = ()
    description: str = ""
    starter_for: Optional[str] = None
    file: Optional[str] = None
    package: Optional[str] = None
    pip: Optional[str] = None
    test_only: bool = False
    extra: Dict[str, object] = field(default_factory=dict, compare=False)

    @property
    def path(self) -> Optional[Path]:
        """The ONNX file of a "file" entry when it is on this machine (presets: see :attr:`available`)."""
        return find_model_file(Path(self.file).stem) if self.kind == "file" and self.file else None

    @property
    def available(self) -> bool:
        """Can it run now? A file entry: its file is found. A preset: its package is installed."""
        if self.kind == "preset":
            return _package_installed(self.package)
        return self.path is not None

    def display(self) -> str:
        """One line for the model selector: name, version, modality, size and licence."""
        size = f"{self.size_bytes / 2**20:.0f} MB" if self.size_bytes >= 2**20 else f"{self.size_bytes / 1024:.0f} KB"
        parts = [self.name + (f" v{self.version}" if self.version else ""), self.modality or "modality not stated",
                 size, self.licence.split(" (")[0] or "licence not stated"]
        text = " · ".join(parts)
        if not self.available:
            text += f" · needs {self.pip or self.package}" if self.kind == "preset" else " · file missing"
        return text


def _package_installed(pkg: Optional[str]) -> bool:
    try:
        return bool(pkg) and importlib.util.find_spec(pkg) is not None  # finds, does not import (run) it
    except (ImportError, ValueError):
        return False


def model_dirs() -> List[Path]:
    """The folders searched for ``<name>.onnx``, in order (see the module docstring)."""
    env = [Path(p).expanduser() for p in os.environ.get("HILA_MODELS_DIR", "").split(os.pathsep) if p.strip()]
    return env + [MODULE_MODELS_DIR, PACKAGE_MODELS_DIR]


def find_model_file(name: str) -> Optional[Path]:
    """The first ``<name>.onnx`` in :func:`model_dirs`, or None."""
    for folder in model_dirs():
        cand = folder / f"{name}.onnx"
        if cand.is_file():
            return cand
    return None


def catalog_path() -> Path:
    return PACKAGE_MODELS_DIR / CATALOG_NAME


def _load() -> List[CatalogEntry]:
    data = json.loads(catalog_path().read_text(encoding="utf-8"))
    known = {f for f in CatalogEntry.__dataclass_fields__ if f != "extra"}
    out = []
    for d in data.get("models", []):
        kw = {k: v for k, v in d.items() if k in known}
        kw["labels"] = tuple(kw.get("labels", ()))
        out.append(CatalogEntry(**kw, extra={k: v for k, v in d.items() if k not in known}))
    return out


def entries(include_tests: bool = False) -> List[CatalogEntry]:
    """The catalog's models, then any other ``*.onnx`` in ``HILA_MODELS_DIR`` (listed by name only)."""
    listed = [e for e in _load() if include_tests or not e.test_only]
    names = {e.name for e in _load()}
    for folder in model_dirs()[:-2]:
        for p in sorted(folder.glob("*.onnx")) if folder.is_dir() else []:
            if p.stem not in names:
                names.add(p.stem)
                listed.append(CatalogEntry(p.stem, "file", modality="", file=p.name, size_bytes=p.stat().st_size,
                                           description=f"from HILA_MODELS_DIR ({folder})"))
    return listed


def get(name: str) -> Optional[CatalogEntry]:
    """The catalog entry called ``name`` (test models included), or None."""
    return next((e for e in entries(include_tests=True) if e.name == name), None)


def starter_for(modality: str) -> Optional[CatalogEntry]:
    """The model a new workspace of this modality starts from (CT: the pelvic CT starter, MR: TAPS)."""
    return next((e for e in _load() if e.starter_for == str(modality).upper()), None)
