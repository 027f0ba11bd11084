"""The ground layer: what every other part of the engine stands on and which imports nothing of it.

One exception type (``errors``), durable writes (``durable``), progress reporting, path checks, environment
settings, the label-matching rule and colour table, overlap metrics, and the optional-package table.
"""
