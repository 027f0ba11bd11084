"""Running models: the ONNX ``Segmenter`` (``segmenter``) with its sliding windows (``windows``) and the named
prediction summary (``summary``), and the box-prompted assistant (``boxassist``). onnxruntime, numpy and SimpleITK
only; the quality layer judges the predictions afterwards.
"""
