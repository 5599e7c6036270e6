"""Benchmarks: scripts that print tables and write one JSON (and its PNG) per run.

Run them from the repository root as modules, e.g. ``python -m benchmarks.lr_sensitivity``.
A run writes under ``benchmarks/results/scratch/`` (ignored by git); ``--commit-results``
updates the committed results under ``benchmarks/results/`` that the documentation's
tables are built from. What several benchmarks share is in ``benchmarks/_common.py``.
"""
