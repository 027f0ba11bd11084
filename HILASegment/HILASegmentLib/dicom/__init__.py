"""DICOM objects and servers: SEG (``dicomseg``), RTSTRUCT (``rtstruct``, with ``contours``), the series they
refer to (``dicomref``) and DICOMweb (``dicomweb``). Imports the ground and formats layers only.
"""
