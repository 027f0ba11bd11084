"""The ground layer: what every other part of the engine stands on; it imports nothing above it.

One exception type (``errors``), durable writes (``durable``), progress reporting, path checks, environment
settings (``envvars``), the label-matching rule and colour table, overlap metrics, the packages the engine needs
and the one line said when an optional one is missing (``packages``), and the Slicer module's install planner
(``dependencies``: plain data and rules, tested without Slicer).
"""
