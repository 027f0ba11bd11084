"""`hila simulate`: a simulated radiologist drives the real loop (workspace, infer, submit, train + gate).

cohort (which cases, which labels) -> synthesis (images from label maps) -> radiologist (corrector +
effort model) -> strategies (which cases next) -> run (rounds, resume, baseline) -> report (files, figure).
"""
