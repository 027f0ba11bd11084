"""The bundled trainer: fine-tune on corrections, export ONNX, check parity, validate, gate, version.

The only part of HILASegment that imports torch, MONAI and onnx, and only when training is asked for
(``hila train``). One job per module: ``plan`` (a fresh model's recipe from the corrections),
``dataset`` (snapshot -> arrays on the model grid), ``transforms`` (patch sampling and augmentation),
``network`` (architectures, checkpoints, ONNX import), ``loop`` (optimisation), ``export`` (ONNX +
parity), ``card`` (the start weights and the candidate's card), ``gate`` (which corrections gate,
scoring with the inference engine, the promotion rule), ``run`` (one training run against a workspace).
It imports nothing from ``cli``: the command line sits above it.
"""
import os as _os

# On a shared CPU, OpenMP threads that spin while waiting for a descheduled sibling make a step up
# to 10x slower (measured here: 2 threads 0.9 s/step spinning vs 0.45 s passive with another process
# busy on one of the 2 cores). Passive waiting must be chosen before torch loads its OpenMP runtime.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
