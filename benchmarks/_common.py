"""What two or more benchmarks share: where results go and how they are written, run
metadata, plotting, timing, the digits data, the MLP, the historical clip, the
learning-rate sensitivity.

Run the benchmarks from the repository root as modules (``python -m
benchmarks.lr_sensitivity``), so that they can import ``benchmarks._common`` without
touching ``sys.path``.

Where results go: a run writes under ``benchmarks/results/scratch/`` (ignored by git),
so that running a benchmark leaves the tree clean; ``--commit-results`` writes under
``benchmarks/results/`` instead, the committed results that the documentation's tables
are built from; ``--out`` names any other place.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import relax_optax

RESULTS = Path(__file__).resolve().parent / "results"  # committed; the docs read these
SCRATCH = RESULTS / "scratch"  # ignored by git: where a run writes unless told otherwise


# ----------------------------------------------------------------------------- results


def add_output_args(parser: argparse.ArgumentParser, name: str, *, directory: bool = False) -> None:
  """Adds ``--out`` and ``--commit-results`` to a benchmark's command line.

  Args:
    parser: the benchmark's parser.
    name: the file stem (or, with ``directory``, nothing: the folder) the run writes.
    directory: ``--out`` names a folder rather than a file stem.
  """
  what = "folder" if directory else "path without suffix"
  parser.add_argument(
    "--out",
    type=Path,
    default=None,
    help=f"{what} to write to (default: {SCRATCH.relative_to(RESULTS.parent.parent)}/"
    f"{'' if directory else name}, or benchmarks/results/ with --commit-results)",
  )
  parser.add_argument(
    "--commit-results",
    action="store_true",
    help="write the committed results under benchmarks/results/ (what the docs show)",
  )
  parser.set_defaults(_output_name=None if directory else name)


def output_path(args: argparse.Namespace, name: str | None = None) -> Path:
  """The stem (or folder) a run writes to: ``--out``, else ``name`` (default: the one
  given to :func:`add_output_args`) in the scratch folder or the committed results."""
  if args.out is not None:
    return Path(args.out)
  base = RESULTS if args.commit_results else SCRATCH
  name = name or args._output_name
  return base / name if name else base


def json_safe(value: Any) -> Any:
  """A JSON-ready copy: non-finite floats (NaN, ±inf; not valid JSON) become null,
  NumPy scalars and arrays plain Python, tuples lists, paths strings."""
  if isinstance(value, np.ndarray):
    value = value.tolist()
  elif isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, dict):
    return {k: json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  if isinstance(value, Path):
    return str(value)
  return value


def write_json(path: Path, data: Any, *, indent: int | None = None) -> Path:
  """Writes ``data`` as strict JSON (:func:`json_safe`), creating the folder; returns path."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  text = json.dumps(json_safe(data), indent=indent, allow_nan=False)
  path.write_text(text + "\n")
  return path


def _git_commit() -> str | None:
  """The checked-out commit, with ``+dirty`` if the tree has changes; None outside git."""
  root = RESULTS.parent.parent
  try:
    head = subprocess.run(
      ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run(
      ["git", "status", "--porcelain", "--untracked-files=no"],
      cwd=root,
      capture_output=True,
      text=True,
      check=True,
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None
  return head + ("+dirty" if dirty else "")


class RunStart(NamedTuple):
  """When a run started (``time.perf_counter``) and the load average then."""

  time: float
  load: tuple[float, float, float]


def run_start() -> RunStart:
  """Call at the start of a run; pass the result to :func:`run_metadata` at its end."""
  return RunStart(time.perf_counter(), os.getloadavg())


def run_metadata(start: RunStart | None = None) -> dict[str, Any]:
  """What a result needs to be read later: commit, versions, machine, load, wall time.

  Keys: ``commit``, ``python``, ``platform``, ``jax``, ``optax``, ``relax_optax``,
  ``backend``, ``cpus`` (usable by this process), and with ``start``: ``seconds`` (wall
  time since), ``load_before`` and ``load_after`` (1, 5, 15-minute load averages).
  """
  meta: dict[str, Any] = {
    "commit": _git_commit(),
    "python": platform.python_version(),
    "platform": platform.platform(),
    "jax": jax.__version__,
    "optax": optax.__version__,
    "relax_optax": relax_optax.__version__,
    "backend": jax.default_backend(),
    "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
  }
  if start is not None:
    meta |= {
      "seconds": time.perf_counter() - start.time,
      "load_before": list(start.load),
      "load_after": list(os.getloadavg()),
    }
  return meta


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


# ----------------------------------------------------------------------------- data, models


def digits(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's bundled ``load_digits`` (1,797 8x8 images, 10 classes), shuffled.

  Returns ``(x, y)``: pixels scaled to [0, 1] (float32, shape (1797, 64)) and labels
  (int32), in the order of ``np.random.default_rng(seed).permutation``; each benchmark
  takes its own splits off the front.
  """
  from sklearn.datasets import load_digits

  x, y = load_digits(return_X_y=True)
  perm = np.random.default_rng(seed).permutation(len(y))
  return (x[perm] / 16.0).astype(np.float32), y[perm].astype(np.int32)


class MLP(nnx.Module):
  """A deep ReLU MLP (``depth`` linear layers with biases, ReLU between them)."""

  def __init__(self, d_in: int, width: int, d_out: int, depth: int, *, rngs: nnx.Rngs):
    dims = [d_in] + [width] * (depth - 1) + [d_out]
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(dims)])

  def __call__(self, x: jax.Array) -> jax.Array:
    for layer in self.layers[:-1]:
      x = jax.nn.relu(layer(x))
    return self.layers[-1](x)


def tree_norm(tree: Any) -> jax.Array:
  """The global L2 norm of a pytree (the sum of squares in the leaves' dtype)."""
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


# ----------------------------------------------------------------------------- optimizers


class HistClipState(NamedTuple):
  """A window of the last update norms (after clipping), as Levanter's."""

  norms: jax.Array  # shape=(window,), dtype=float32.
  count: jax.Array  # shape=(), dtype=int32: norms recorded.


def historical_clip(
  sigma_factor: float = 2.0, window: int = 128, min_history: int = 10
) -> optax.GradientTransformation:
  """A hard clip of the global update norm at mean + sigma_factor·σ of the last norms.

  The Levanter-style spike guard the relative speed limit is compared with: once
  ``min_history`` norms are recorded, an update whose global norm exceeds the mean plus
  ``sigma_factor`` standard deviations of the last ``window`` (clipped) norms is scaled
  down to that limit.
  """

  def init_fn(params):
    del params
    return HistClipState(jnp.zeros(window, jnp.float32), jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    del params
    norm = optax.tree.norm(updates)
    valid = jnp.arange(window) < jnp.minimum(state.count, window)
    n = jnp.maximum(valid.sum(), 1)
    mean = jnp.where(valid, state.norms, 0).sum() / n
    var = jnp.where(valid, (state.norms - mean) ** 2, 0).sum() / n
    limit = mean + sigma_factor * jnp.sqrt(var)
    active = state.count >= min_history
    # max(norm, 1e-30): a zero update is never clipped, so the division only guards 0/0.
    scale = jnp.where(active & (norm > limit), limit / jnp.maximum(norm, 1e-30), 1.0)
    updates = jax.tree.map(lambda u: u * scale, updates)
    norms = state.norms.at[state.count % window].set(norm * scale)
    return updates, HistClipState(norms, optax.safe_int32_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)
