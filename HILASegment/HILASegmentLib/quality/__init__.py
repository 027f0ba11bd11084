"""Judging predictions and corrections: how much a correction changed (``effort``), which case to review next
(``ranking``), where a prediction is likely wrong (``errormap``), the learned quality model (``learned``) and the
rule that flags suspect corrections (``suspectrule``). Sits above inference: it reads what the Segmenter returns.
"""
