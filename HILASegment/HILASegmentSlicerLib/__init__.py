"""The Slicer glue's own logic, with the Slicer objects passed in (SlicerNNUnet's pattern).

``HILASegment.py`` wires Qt signals to these functions; everything that decides something (which
segmentation a result goes to, which case Accept submits, which buttons are live, which segment is
which label, how a stale setting is recovered) lives here so it runs under pytest with stand-in
MRML objects. Nothing here imports slicer, qt or vtk at module level.
"""
