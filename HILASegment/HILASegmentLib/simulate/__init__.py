"""`hila simulate`: a simulated radiologist drives the real loop (workspace, infer, submit, train + gate).

cohort (which cases, which labels) -> synthesis (images from label maps) -> radiologist (corrector +
effort model) -> selection (which cases next: the product's ranking strategies + sequential) -> prepare (config, checks, RUN/cases) -> simulation (rounds,
resume, baseline) -> report (files, figure).
"""

