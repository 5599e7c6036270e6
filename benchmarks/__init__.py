"""Benchmarks: scripts that print tables and write JSON + PNG under results/.

Run them from the repository root as modules, e.g. ``python -m benchmarks.lr_sensitivity``;
they share ``benchmarks/_common.py`` and import the examples as ``examples.<name>``.
"""
