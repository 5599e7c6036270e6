"""What the relative speed limit passes unchanged: streams of log-normal update norms.

A stream of updates (one leaf of ``--dim`` entries, a random direction each step) whose
norms are log-normal, ``n = exp(σ·z − σ²)`` with ``z`` standard normal, so that their RMS
is 1 for every shape ``σ`` (0: a constant norm; 0.3: a 30 % spread; 1.0: a heavy tail),
goes through ``relax_optax.scale_by_relative_speed_limit(k, decay=..., mode="global")``.
Over the steps from ``--start`` on (the warm-up over and the statistics settled), for
each ``σ`` and ``k``:

- ``c / (k·RMS)``: the mean limit ``c_t = sqrt(1 + k²)·sqrt(nu)`` (read from the state,
  as its docstring says) over ``k`` times the RMS of the raw norms ``‖u‖`` of those steps;
- the relative change ``1 − ‖v‖/‖u‖``: its mean, median and 99th percentile;
- ``step of 2·RMS``: the change a step of twice that RMS gets at the mean limit,
  ``1 − 1/sqrt(1 + (2·RMS/c)²)``;
- the bound ``(1/k)²/2`` that a constant stream stays within.

Every (σ, k) runs in one ``vmap`` of one ``lax.scan`` (a few seconds on CPU).

Run from the repository root::

  python -m benchmarks.relative_pass_through                   # 3000 steps (seconds)
  python -m benchmarks.relative_pass_through --commit-results  # update benchmarks/results/

Writes ``relative_pass_through.{json,png}`` under ``benchmarks/results/scratch/``, or with
``--commit-results`` under ``benchmarks/results/`` (what docs/relative_speed_limit.md
shows).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import relax_optax
from benchmarks._common import (
  add_output_args,
  output_path,
  pyplot,
  run_metadata,
  run_start,
  write_json,
)


def run_streams(
  norms: np.ndarray, ks: np.ndarray, decay: float, warmup_steps: int, dim: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """Per stream (a row of ``norms``, its own ``k``) and step: the limit ``c_t`` the step
  met and the relative change ``1 − ‖v‖/‖u‖``."""
  steps = norms.shape[1]
  d = jax.random.normal(jax.random.key(seed), (steps, dim))
  directions = d / jnp.linalg.norm(d, axis=1, keepdims=True)

  def one(stream: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array]:
    tx = relax_optax.scale_by_relative_speed_limit(
      k, decay=decay, warmup_steps=warmup_steps, mode="global"
    )

    def step(state, inputs):
      n, direction = inputs
      u = {"w": n * direction}
      c = jnp.sqrt(1 + k**2) * jnp.sqrt(state.nu)  # the limit this step meets
      v, state = tx.update(u, state)
      return state, (c, 1 - jnp.linalg.norm(v["w"]) / jnp.linalg.norm(u["w"]))

    _, (c, change) = jax.lax.scan(step, tx.init({"w": jnp.zeros(dim)}), (stream, directions))
    return c, change

  c, change = jax.jit(jax.vmap(one))(jnp.asarray(norms, jnp.float32), jnp.asarray(ks))
  return np.asarray(c, np.float64), np.asarray(change, np.float64)


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=3000)
  parser.add_argument("--start", type=int, default=1000, help="first step of the statistics")
  parser.add_argument("--decay", type=float, default=0.99)
  parser.add_argument("--warmup-steps", type=int, default=100)
  parser.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.3, 1.0])
  parser.add_argument("--ks", type=float, nargs="+", default=[1.5, 2.0, 3.0, 5.0])
  parser.add_argument("--dim", type=int, default=16, help="entries of the update")
  parser.add_argument("--seed", type=int, default=0)
  add_output_args(parser, "relative_pass_through")
  args = parser.parse_args(argv)
  if not args.warmup_steps <= args.start < args.steps:
    parser.error("need --warmup-steps <= --start < --steps")
  run_started = run_start()

  z = np.random.default_rng(args.seed).standard_normal(args.steps)
  configs = [(s, k) for s in args.sigmas for k in args.ks]
  norms = np.stack([np.exp(s * z - s**2) for s, _ in configs])  # E[n²] = 1 for every σ
  c, change = run_streams(
    norms, np.array([k for _, k in configs]), args.decay, args.warmup_steps, args.dim, args.seed
  )
  c, change, norms = c[:, args.start :], change[:, args.start :], norms[:, args.start :]

  rows = []
  for i, (s, k) in enumerate(configs):
    c_mean = float(c[i].mean())
    rms = float(np.sqrt(np.mean(norms[i] ** 2)))  # of the steps measured (1 in expectation)
    rows.append(
      {
        "sigma": s,
        "k": k,
        "c_over_k_rms": c_mean / (k * rms),
        "mean_change": float(change[i].mean()),
        "median_change": float(np.median(change[i])),
        "p99_change": float(np.percentile(change[i], 99)),
        "change_at_2rms": float(1 - 1 / np.sqrt(1 + (2 * rms / c_mean) ** 2)),
        "bound": (1 / k) ** 2 / 2,
      }
    )

  print(
    f"{'σ':>4s} {'k':>4s} {'c/(k·RMS)':>10s} {'mean':>7s} {'median':>7s} {'99th':>7s}"
    f" {'2·RMS':>7s} {'bound':>7s}"
  )
  for r in rows:
    print(
      f"{r['sigma']:4g} {r['k']:4g} {r['c_over_k_rms']:10.3f} {r['mean_change']:7.3f}"
      f" {r['median_change']:7.3f} {r['p99_change']:7.3f} {r['change_at_2rms']:7.3f}"
      f" {r['bound']:7.3f}"
    )
  worst = max(rows, key=lambda r: r["mean_change"] / r["bound"])
  print(
    f"mean change / bound (1/k)²/2 at most {worst['mean_change'] / worst['bound']:.2f}"
    f" (σ = {worst['sigma']:g}, k = {worst['k']:g})"
  )

  stem = output_path(args)
  config = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "out"}
  payload = {"config": config | run_metadata(run_started), "rows": rows}
  write_json(stem.with_suffix(".json"), payload, indent=1)
  plot(rows, stem.with_suffix(".png"))
  return payload


def plot(rows: list[dict], path: Path) -> None:
  plt = pyplot()

  fig, ax = plt.subplots(figsize=(6, 4))
  ks = sorted({r["k"] for r in rows})
  for s in sorted({r["sigma"] for r in rows}):
    mine = [r for r in rows if r["sigma"] == s]
    ax.plot([r["k"] for r in mine], [r["mean_change"] for r in mine], "o-", label=f"σ = {s:g}")
  ax.plot(ks, [(1 / k) ** 2 / 2 for k in ks], "k:", label="bound (1/k)²/2")
  ax.set_xlabel("k")
  ax.set_ylabel("mean relative change 1 − ‖v‖/‖u‖")
  ax.set_title("log-normal update norms through the relative speed limit")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


if __name__ == "__main__":
  main()
