"""The gate's default promotion rule and the trainer's start choices, defined once: ``gate.GateRule``,
``training.run.TrainOptions``, ``hila train``, ``hila simulate`` and the simulate run's key read these (why these
values: ``gate.GateRule``). Light on purpose (no numpy, no torch): the command line reads them when it builds its
parser.
"""

#: The mean per-case Dice gain a candidate must exceed to be promoted (``--gate-margin``). Negative: a
#: non-inferiority margin, a candidate is promoted unless it loses more than 0.05 Dice per gate case (why:
#: ``gate.GateRule``; measured by ``scripts/bench_gate.py --part replay``).
GATE_MARGIN = -0.05
#: The default before the non-inferiority rule (superiority by 0.01): a simulate run made under it recorded no
#: margin in its config, so it must not resume silently under today's (``simulate.prepare.SimConfig.key``).
GATE_MARGIN_BEFORE_NONINFERIORITY = 0.01
#: Gate corrections, unseen by both models, needed before ``auto`` promotes (``--gate-min-cases``).
GATE_MIN_CASES = 2

#: ``--init``: where a round's weights start (``training.candidate.initial_network``).
INITS = ("auto", "scratch", "imported", "distill", "calibrate")
#: ``--warm-start``: how ``--init auto`` starts from an imported preset (``training.candidate.warm_start``).
WARM_STARTS = ("auto", "calibrate", "distill", "none")
