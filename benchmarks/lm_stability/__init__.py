"""Small-transformer stability: does the speed limit stabilise, or rename the step size?

A byte-level decoder-only transformer learns the Python standard library's sources
with the recipe of Wortsman et al. (2023), "Small-scale proxies for large-scale
Transformer training instabilities", and a deep ReLU MLP learns scikit-learn's digits.
Every arm (AdamW, its published stabilisers, update caps, ``relativistic_adam`` in each
mode) is swept over the learning rate; every capped arm also over its cap c at a high
learning rate. If the speed limit only renamed the step size, its sensitivity in c
would match AdamW's sensitivity in the learning rate.

Laid out like Flax's ``examples/lm1b``:

- ``configs.py``: the recipe, the grids and model sizes, one function per experiment;
- ``data.py``: the corpus and the two domains; ``models.py``: the transformer;
- ``optimizers.py``: the arms; ``train.py``: the one trainer and its summaries;
- ``report.py``: tables and plots, from a run's JSON;
- entry points, one per experiment: ``sweep.py`` (also ``python -m
  benchmarks.lm_stability``), ``spikes.py`` (induced instabilities), ``step_time.py``
  (the train step against ``optax.adamw``), ``per_component.py`` (is ``per_component``
  a stabiliser? three sizes, a long run, its elementwise twins; the test and its
  tables in ``renaming.py``).

Run from the repository root::

  python -m benchmarks.lm_stability --quick          # the sweep on a tiny grid, < 1 min
  python -m benchmarks.lm_stability                  # the sweep, ~14 min on one core
  python -m benchmarks.lm_stability --full           # and a second size, ~55 min
  python -m benchmarks.lm_stability.spikes           # ~4 min
  python -m benchmarks.lm_stability.step_time        # ~3 min
  python -m benchmarks.lm_stability.per_component    # ~75 min on 2 cores

Every run writes one JSON (and its plots) under ``benchmarks/results/scratch/``;
``--commit-results`` writes the committed results under ``benchmarks/results/``.
"""
