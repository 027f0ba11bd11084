"""HILASegment engine: plain Python, importable without Slicer, Qt or torch."""

__version__ = "0.1.0"
