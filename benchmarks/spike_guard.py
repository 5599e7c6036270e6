"""Gradient spikes on a small MLP: AdamW, gradient clipping, a hard historical clip, the guard.

A two-layer MLP (64-128-10, tanh) learns scikit-learn's ``load_digits`` with AdamW
(learning rate 3e-3, batch 64). At chosen steps one layer's gradient is replaced by a
*spike*: the gradient of a batch with permuted labels (a wrong direction, as a corrupted
batch gives), scaled to 100 and 10,000 times the norm of that layer's true gradient.
Arms, all AdamW with the same hyperparameters:

- ``adamw``: nothing else;
- ``adamw+clip``: ``optax.clip_by_global_norm(1.0)`` on the gradient, before AdamW;
- ``hist-clip``: a hard clip of the *update* at mean + 2σ of the last 128 update norms
  (Levanter's ``clip_update_by_historical_norm``, written here; global norm);
- ``guard k=K``: AdamW then ``relax_optax.scale_by_relative_speed_limit(K)``
  (``per_param``, default decay and warm-up), for K in 1.5, 2, 3, 5.

Metrics per arm (mean over seeds): the final training loss (mean of the last 50 steps'
full-training-set loss), the test accuracy, and for each spike its *height* (the highest
full-set loss in the 50 steps after it, divided by the loss just before) and the *steps to
recover* (until the loss is back within 5 % of the loss just before; the window's length
if never). The PNG shows one seed's loss and update-norm curves.

Run from the repository root::

  python -m benchmarks.spike_guard            # 1500 steps, 3 seeds (about a minute)
  python -m benchmarks.spike_guard --quick    # 300 steps, 1 seed (the test runs this)
  python -m benchmarks.spike_guard --commit-results   # update benchmarks/results/

Writes ``spike_guard.{json,png}`` under ``benchmarks/results/scratch/``, or with
``--commit-results`` under ``benchmarks/results/`` (what the documentation shows).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import relax_optax
from benchmarks._common import (
  add_output_args,
  digits,
  historical_clip,
  output_path,
  pyplot,
  run_metadata,
  run_start,
  write_json,
)

SPIKE_LAYER = "w1"  # the first layer's kernel receives the spikes
KS = (1.5, 2.0, 3.0, 5.0)


# ----------------------------------------------------------------------------- data, model


def load_data(seed: int = 0):
  x, y = digits(seed)
  n_test = len(x) // 5
  return (x[n_test:], y[n_test:]), (x[:n_test], y[:n_test])


def init_params(key: jax.Array, hidden: int = 128) -> dict[str, jax.Array]:
  k1, k2 = jax.random.split(key)
  return {
    "w1": jax.random.normal(k1, (64, hidden)) / 8.0,
    "b1": jnp.zeros(hidden),
    "w2": jax.random.normal(k2, (hidden, 10)) / math.sqrt(hidden),
    "b2": jnp.zeros(10),
  }


def loss_fn(params, x, y):
  h = jnp.tanh(x @ params["w1"] + params["b1"][None])
  logits = h @ params["w2"] + params["b2"][None]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def accuracy(params, x, y):
  h = jnp.tanh(x @ params["w1"] + params["b1"][None])
  return jnp.mean(jnp.argmax(h @ params["w2"] + params["b2"][None], -1) == y)


# ----------------------------------------------------------------------------- arms


def arms(lr: float) -> dict[str, optax.GradientTransformation]:
  adamw = lambda: optax.adamw(lr, weight_decay=1e-4)
  out = {
    "adamw": adamw(),
    "adamw+clip": optax.chain(optax.clip_by_global_norm(1.0), adamw()),
    "hist-clip": optax.chain(adamw(), historical_clip()),
  }
  for k in KS:
    out[f"guard k={k:g}"] = optax.chain(adamw(), relax_optax.scale_by_relative_speed_limit(k))
  return out


# ----------------------------------------------------------------------------- training


def make_run(tx, train, test, steps: int, batch: int, spikes: dict[int, float]):
  """A jitted function of the seed: the whole run under ``lax.scan``."""
  xtr, ytr = jnp.asarray(train[0]), jnp.asarray(train[1])
  xte, yte = jnp.asarray(test[0]), jnp.asarray(test[1])
  spike_steps = jnp.asarray(sorted(spikes), jnp.int32)
  spike_sizes = jnp.asarray([spikes[s] for s in sorted(spikes)], jnp.float32)

  def run(seed):
    key = jax.random.PRNGKey(seed)
    key, init_key = jax.random.split(key)
    params = init_params(init_key)
    state = tx.init(params)

    def step(carry, t):
      params, state, key = carry
      key, k_batch, k_perm = jax.random.split(key, 3)
      idx = jax.random.randint(k_batch, (batch,), 0, xtr.shape[0])
      x, y = xtr[idx], ytr[idx]
      grads = jax.grad(loss_fn)(params, x, y)
      # The spike: a permuted-label batch's gradient, scaled to size x the true one.
      is_spike = spike_steps == t
      size = jnp.sum(jnp.where(is_spike, spike_sizes, 0.0))
      bad = jax.grad(loss_fn)(params, x, jax.random.permutation(k_perm, y))
      g, b = grads[SPIKE_LAYER], bad[SPIKE_LAYER]
      spiked = b * (size * jnp.linalg.norm(g) / jnp.maximum(jnp.linalg.norm(b), 1e-30))
      grads = {**grads, SPIKE_LAYER: jnp.where(size > 0, spiked, g)}
      updates, state = tx.update(grads, state, params)
      params = optax.apply_updates(params, updates)
      metrics = {
        "loss": loss_fn(params, xtr, ytr),
        "update_norm": optax.tree.norm(updates),
        "update_norm_w1": jnp.linalg.norm(updates[SPIKE_LAYER]),
      }
      return (params, state, key), metrics

    (params, _, _), metrics = jax.lax.scan(step, (params, state, key), jnp.arange(steps))
    return metrics, accuracy(params, xte, yte)

  return jax.jit(jax.vmap(run))


def spike_metrics(loss: np.ndarray, step: int, window: int = 50) -> tuple[float, int]:
  """Height (max loss in the window after / loss before) and steps to recover.

  ``loss[t]`` is the loss after step ``t``'s update; the spike at ``step`` peaks then
  or a few steps later (momentum carries it), and it has recovered at the first step
  after the peak whose loss is within 5 % of the loss before it (0 if it never rose
  above that).
  """
  before = float(loss[step - 1])
  after = loss[step : step + window]
  height = float(after.max() / before)
  if height <= 1.05:
    return height, 0
  peak = int(after.argmax())
  back = np.nonzero(after[peak:] <= 1.05 * before)[0]
  return height, peak + int(back[0]) + 1 if len(back) else window


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=1500)
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--lr", type=float, default=3e-3)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--quick", action="store_true", help="300 steps, 1 seed")
  add_output_args(parser, "spike_guard", directory=True)
  args = parser.parse_args(argv)
  if args.quick:
    args.steps, args.seeds = 300, 1
  # Spikes at 40 % and 70 % of the run: x100, then x10,000.
  spikes = {int(0.4 * args.steps): 100.0, int(0.7 * args.steps): 10_000.0}
  train, test = load_data()
  seeds = jnp.arange(args.seeds)
  results: dict[str, Any] = {}
  curves: dict[str, dict[str, list[float]]] = {}
  run_started = run_start()
  start = time.perf_counter()
  for name, tx in arms(args.lr).items():
    metrics, acc = make_run(tx, train, test, args.steps, args.batch, spikes)(seeds)
    loss = np.asarray(metrics["loss"], np.float64)
    per_spike = {}
    for s, size in spikes.items():
      hs = [spike_metrics(loss[i], s) for i in range(args.seeds)]
      per_spike[f"x{size:g}"] = {
        "step": s,
        "height": float(np.mean([h for h, _ in hs])),
        "recover_steps": float(np.mean([r for _, r in hs])),
      }
    results[name] = {
      "final_loss": float(loss[:, -50:].mean()),
      "final_loss_std_over_seeds": float(loss[:, -50:].mean(axis=1).std()),
      "test_accuracy": float(np.mean(acc)),
      "spikes": per_spike,
    }
    curves[name] = {  # seed 0, to 4 significant digits (the JSON stays small)
      key: [float(f"{v:.4g}") for v in np.asarray(values)]
      for key, values in (
        ("loss", loss[0]),
        ("update_norm", metrics["update_norm"][0]),
        ("update_norm_w1", metrics["update_norm_w1"][0]),
      )
    }
  elapsed = time.perf_counter() - start

  header = f"{'arm':14s} {'final loss':>11s} {'test acc':>9s}"
  for size in spikes.values():
    header += f" {'x' + format(size, 'g') + ' height':>14s} {'recover':>8s}"
  print(header)
  for name, r in results.items():
    line = f"{name:14s} {r['final_loss']:11.4f} {r['test_accuracy']:9.3f}"
    for sp in r["spikes"].values():
      line += f" {sp['height']:14.2f} {sp['recover_steps']:8.1f}"
    print(line)
  worst = max(results, key=lambda n: results[n]["spikes"]["x10000"]["height"])
  k2 = results["guard k=2"]["spikes"]["x10000"]["height"]
  print(
    f"x10,000 spike height: guard k=2 {k2:.2f}x the pre-spike loss, adamw "
    f"{results['adamw']['spikes']['x10000']['height']:.2f}x (worst arm: {worst})"
  )

  stem = output_path(args) / ("spike_guard_quick" if args.quick else "spike_guard")
  payload = {
    "config": {
      "steps": args.steps,
      "seeds": args.seeds,
      "lr": args.lr,
      "batch": args.batch,
      "spikes": {str(k): v for k, v in spikes.items()},
      "spike_layer": SPIKE_LAYER,
      "elapsed_s": elapsed,
    }
    | run_metadata(run_started),
    "results": results,
    "curves_seed0": curves,
  }
  write_json(stem.with_suffix(".json"), payload)
  plot(curves, spikes, stem.with_suffix(".png"))
  return payload


def plot(curves: dict, spikes: dict[int, float], path: Path) -> None:
  plt = pyplot()

  shown = ["adamw", "adamw+clip", "hist-clip", "guard k=2", "guard k=5"]
  fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True)
  for name in shown:
    ax1.plot(curves[name]["loss"], lw=1, label=name)
    ax2.plot(curves[name]["update_norm"], lw=0.8, label=name)
  for s, size in spikes.items():
    for ax in (ax1, ax2):
      ax.axvline(s, color="grey", ls=":", lw=0.8)
    ax1.text(s, 1.0, f" x{size:g}", transform=ax1.get_xaxis_transform(), va="top", fontsize=8)
  ax1.set_yscale("log")
  ax1.set_ylabel("training loss (full set)")
  ax2.set_yscale("log")
  ax2.set_ylabel("global update norm")
  ax2.set_xlabel("step")
  ax1.legend(fontsize=7)
  ax1.set_title("Gradient spikes in the first layer (seed 0)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


if __name__ == "__main__":
  main()
