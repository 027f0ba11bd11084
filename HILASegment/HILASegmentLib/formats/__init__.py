"""Files in and out: volumes with their exact geometry (``imageio``), ``.seg.nrrd`` (``segnrrd``, ``segfile``),
the segmentation model (``segmentation``), label maps from any accepted file (``labelio``), segment terminology,
grid checks, and weak labels drawn from clinical marks (``weak``). Imports only the ground layer.
"""
