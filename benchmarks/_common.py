"""Small helpers shared by the benchmarks: results folder, plotting, timing, sensitivity.

Run the benchmarks from the repository root as modules (``python -m
benchmarks.lr_sensitivity``), so that they can import ``benchmarks._common`` and
``examples.*`` without touching ``sys.path``.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"  # where every benchmark writes


# ----------------------------------------------------------------------------- plotting


def pyplot() -> Any:
  """``matplotlib.pyplot`` on the non-interactive Agg backend (imported on first use)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def steps_axis(ax: Any) -> None:
  """Labels a step-count x axis as 30k, 1.5M, ..."""
  ax.xaxis.set_major_formatter(lambda v, _: f"{v / 1e6:g}M" if v >= 1e6 else f"{v / 1e3:g}k")


# ----------------------------------------------------------------------------- timing


def median_call_time_s(
  call: Callable[[], Any], *, repeats: int, min_time_s: float, max_calls: int = 100_000
) -> float:
  """Median wall time of one blocking ``call()``, after three warm-up calls.

  Times each call separately (``jax.block_until_ready`` included) until at least
  ``repeats`` calls and ``min_time_s`` seconds in all have passed, then takes the
  median: on a shared machine, calls interrupted by other processes are outliers that a
  median ignores and a mean would not.
  """
  import jax

  for _ in range(3):  # warm-up: compile, first dispatch, caches.
    jax.block_until_ready(call())
  times: list[float] = []
  deadline = time.perf_counter() + min_time_s
  while len(times) < max_calls and (len(times) < repeats or time.perf_counter() < deadline):
    start = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def us_per_step(run: Callable[[], Any], steps: int, repeats: int) -> dict[str, list[float]]:
  """Wall and CPU microseconds per step of ``run()`` (which runs ``steps`` steps).

  CPU time is this process's own (``time.process_time``), which other processes on the
  same core do not inflate; one entry per repeat.
  """
  wall, cpu = [], []
  for _ in range(repeats):
    t, c = time.perf_counter(), time.process_time()
    run()
    wall.append((time.perf_counter() - t) / steps * 1e6)
    cpu.append((time.process_time() - c) / steps * 1e6)
  return {"wall": wall, "cpu": cpu}


# ----------------------------------------------------------------------------- metrics


def lr_sensitivity(final: np.ndarray, init: np.ndarray) -> np.ndarray:
  """Learning-rate sensitivity of Wortsman et al. (2023), per seed.

  Over a learning-rate sweep, the mean of ``min(loss(lr), loss_init) - min_lr
  loss(lr)``: a diverged run (non-finite loss) counts as ``loss_init``. Lower is less
  sensitive.

  Args:
    final: final losses, shape (learning rates, seeds).
    init: losses at initialisation, shape (seeds,).

  Returns:
    The sensitivity of each seed, shape (seeds,).

  References:
    Wortsman et al., 2023. Small-scale proxies for large-scale Transformer training
    instabilities. arXiv:2309.14322.
  """
  capped = np.minimum(np.where(np.isfinite(final), final, np.inf), init[None])
  best = capped.min(axis=0)
  return (capped - best[None]).mean(axis=0)


def json_safe(value: Any) -> Any:
  """NaN (not valid JSON) becomes null, recursively."""
  if isinstance(value, float) and math.isnan(value):
    return None
  if isinstance(value, dict):
    return {k: json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  return value
