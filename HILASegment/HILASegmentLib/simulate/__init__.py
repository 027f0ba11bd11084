"""`hila simulate`: a simulated radiologist drives the real loop (workspace, infer, submit, train + gate).

cohort (which cases, which labels) -> synthesis (images from label maps) -> radiologist (corrector +
effort model) -> selection (which cases next: the product's ranking strategies + sequential) -> prepare (config, checks, RUN/cases) -> simulation (rounds,
resume, baseline) -> report (files, figure).
"""


def registrar(table: dict):
    """``register = registrar(TABLE)``; then ``@register("name")`` adds a function to TABLE under that name."""
    def register(name: str):
        def deco(fn):
            table[name] = fn
            return fn
        return deco
    return register
