"""Models as files: the model card (``modelcard``), the ONNX file's metadata (``onnxfile``), the catalog of offered
models (``catalog``, with ``catalog.json`` and the shipped starter model beside it), intensity normalisation and the
model's input grid (``normalize``, ``modelgrid``). Imports ground and formats only.
"""
