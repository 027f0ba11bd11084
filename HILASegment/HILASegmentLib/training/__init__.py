"""The bundled trainer: fine-tune on corrections, export ONNX, check parity, validate, gate, version.

The only part of HILASegment that imports torch, MONAI and onnx, and only when training is asked for
(``hila train`` / ``python -m HILASegmentLib.training``). One job per module: ``dataset`` (snapshot ->
arrays on the model grid), ``transforms`` (patch sampling and augmentation), ``network`` (architectures,
checkpoints, ONNX import), ``loop`` (optimisation), ``export`` (ONNX + parity), ``gate`` (validation
with the inference engine and the promotion rule), ``run`` (one training run against a workspace).
"""
import os as _os

# On a shared CPU, OpenMP threads that spin while waiting for a descheduled sibling make a step up
# to 10x slower (measured here: 2 threads 0.9 s/step spinning vs 0.45 s passive with another process
# busy on one of the 2 cores). Passive waiting must be chosen before torch loads its OpenMP runtime.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
