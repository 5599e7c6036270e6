"""RGD on a neural network: a deep ReLU MLP on scikit-learn's digits.

A check of whether the paper's result carries over to a small network:
``relax_optax.rgd`` (simple form, global norm) against SGD with momentum
(``optax.sgd``), Adam (``optax.adam``) and ``relax_optax.relativistic_adam``,
each tuned with the **same budget**: a seeded random search of ``--budget``
candidates (log-uniform learning rates and speed limits, uniform momentum),
one training run each, selected by the final validation loss. The selected
configuration is then retrained from ``--seeds`` fresh initialisations and
batch orders, and its test accuracy reported.

Data: ``sklearn.datasets.load_digits`` (1797 8×8 images, 10 classes; bundled
with scikit-learn, no download), pixels scaled to [0, 1], split 1000 train /
397 validation / 400 test. Model: 64-128-128-128-10 ReLU MLP (He-normal init),
cross-entropy, mini-batches of 64, ``--steps`` steps. Every candidate and seed
runs at once (``jax.vmap`` over a ``lax.scan`` of the training steps).

Needs the ``bench`` extra (``pip install -e ".[bench]"``). Writes ``rgd_nn.json`` and
``rgd_nn.png`` under ``benchmarks/results/scratch/``, or with ``--commit-results``
under ``benchmarks/results/`` (what the documentation shows).

Run::

  python -m benchmarks.rgd_nn           # about 2 minutes on 2 CPU cores
  python -m benchmarks.rgd_nn --quick   # a few seconds
  python -m benchmarks.rgd_nn --commit-results
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import relax_optax
from benchmarks._common import (
  add_output_args,
  digits,
  output_path,
  run_metadata,
  run_start,
  write_json,
)

SIZES = (64, 128, 128, 128, 10)
BATCH = 64
EVAL_EVERY = 25

# name -> {hyperparameter: (low, high, log?)}; each method gets the same number
# of candidates whatever the number of its hyperparameters.
SPACES = {
  "SGD-momentum": {"lr": (1e-3, 1.0, True), "mu": (0.5, 0.99, False)},
  "Adam": {"lr": (1e-4, 1e-1, True)},
  "relativistic_adam": {"lr": (1e-4, 1e-1, True), "c": (1e-3, 1.0, True)},
  "RGD": {"lr": (1e-3, 1.0, True), "mu": (0.5, 0.99, False), "c": (1e-2, 10.0, True)},
}


def make_tx(name: str, h: dict) -> optax.GradientTransformation:
  if name == "SGD-momentum":
    return optax.sgd(h["lr"], momentum=h["mu"])
  if name == "Adam":
    return optax.adam(h["lr"])
  if name == "relativistic_adam":
    return relax_optax.relativistic_adam(h["lr"], speed_limit=h["c"])
  return relax_optax.rgd(h["lr"], momentum=h["mu"], speed_limit=h["c"])


def load_data(seed: int = 0) -> dict[str, jax.Array]:
  x, y = digits(seed)
  parts = {"train": slice(0, 1000), "val": slice(1000, 1397), "test": slice(1397, None)}
  out = {}
  for k, s in parts.items():
    out[f"x_{k}"], out[f"y_{k}"] = jnp.asarray(x[s]), jnp.asarray(y[s])
  return out


def init_params(key: jax.Array) -> list[dict[str, jax.Array]]:
  keys = jax.random.split(key, len(SIZES) - 1)
  return [
    {"w": jax.random.normal(k, (m, n)) * jnp.sqrt(2.0 / m), "b": jnp.zeros(n)}
    for k, m, n in zip(keys, SIZES[:-1], SIZES[1:], strict=True)
  ]


def forward(params, x):
  for layer in params[:-1]:
    x = jax.nn.relu(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


def loss_fn(params, x, y):
  logits = forward(params, x)
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def accuracy(params, x, y):
  return jnp.mean(jnp.argmax(forward(params, x), -1) == y)


def train(name: str, h: dict, seed: jax.Array, data: dict, steps: int) -> dict:
  """One run; returns validation-loss curve and final metrics (all finite-safe)."""
  tx = make_tx(name, h)
  k_init, k_batch = jax.random.split(jax.random.PRNGKey(seed))
  params = init_params(k_init)
  n = data["x_train"].shape[0]
  idx = jax.random.randint(k_batch, (steps, BATCH), 0, n)

  def step(carry, batch):
    params, state = carry
    x, y = data["x_train"][batch], data["y_train"][batch]
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), loss

  def block(carry, batches):
    carry, losses = jax.lax.scan(step, carry, batches)
    x = relax_optax.rgd_eval_params(carry[1], carry[0])
    return carry, (jnp.mean(losses), loss_fn(x, data["x_val"], data["y_val"]))

  blocks = idx.reshape(steps // EVAL_EVERY, EVAL_EVERY, BATCH)
  (params, state), (train_curve, val_curve) = jax.lax.scan(block, (params, tx.init(params)), blocks)
  x = relax_optax.rgd_eval_params(state, params)
  return {
    "train_loss": train_curve,
    "val_loss": val_curve,
    "final_val_loss": loss_fn(x, data["x_val"], data["y_val"]),
    "val_acc": accuracy(x, data["x_val"], data["y_val"]),
    "test_acc": accuracy(x, data["x_test"], data["y_test"]),
  }


def sample(space: dict, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
  out = {}
  for k, (lo, hi, log) in space.items():
    u = rng.uniform(np.log(lo), np.log(hi), n) if log else rng.uniform(lo, hi, n)
    out[k] = (np.exp(u) if log else u).astype(np.float32)
  return out


def _bad_to_inf(x):
  x = np.asarray(x, np.float64)
  return np.where(np.isfinite(x), x, np.inf)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="4 candidates, 100 steps")
  parser.add_argument("--budget", type=int, default=24, help="candidates per method")
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--seeds", type=int, default=5, help="retraining seeds of the best")
  add_output_args(parser, "rgd_nn", directory=True)
  args = parser.parse_args(argv)
  budget, steps = (4, 100) if args.quick else (args.budget, args.steps)
  steps -= steps % EVAL_EVERY

  data = load_data()
  run_started = run_start()
  start = time.perf_counter()
  results = {"methods": {}}
  rng = np.random.default_rng(0)
  with tqdm(total=2 * len(SPACES), unit="batch of runs") as bar:
    for name, space in SPACES.items():
      bar.set_description(name)
      cand = sample(space, budget, rng)
      run = jax.jit(jax.vmap(lambda h, s, name=name: train(name, h, s, data, steps)))
      tuning = jax.device_get(run(cand, jnp.full(budget, 1000)))  # one tuning seed
      val = _bad_to_inf(tuning["final_val_loss"])
      best_i = int(np.argmin(val))
      best = {k: float(v[best_i]) for k, v in cand.items()}
      bar.update(1)
      seeds = jnp.arange(args.seeds)
      hs = {k: jnp.full(args.seeds, v, jnp.float32) for k, v in best.items()}
      final = jax.device_get(run(hs, seeds))
      bar.update(1)
      results["methods"][name] = {
        "space": {k: list(v) for k, v in space.items()},
        "best": best,
        "tuning": {
          "candidates": {k: v.tolist() for k, v in cand.items()},
          "final_val_loss": np.asarray(tuning["final_val_loss"], float).tolist(),
          "val_acc": np.asarray(tuning["val_acc"], float).tolist(),
          "diverged_or_nan": int(np.sum(~np.isfinite(np.asarray(tuning["final_val_loss"])))),
        },
        "seeds": {
          "test_acc": np.asarray(final["test_acc"], float).tolist(),
          "val_acc": np.asarray(final["val_acc"], float).tolist(),
          "final_val_loss": np.asarray(final["final_val_loss"], float).tolist(),
          "val_curve_mean": np.mean(np.asarray(final["val_loss"], float), 0).tolist(),
          "train_curve_mean": np.mean(np.asarray(final["train_loss"], float), 0).tolist(),
        },
      }
  elapsed = time.perf_counter() - start
  results["config"] = {
    "quick": args.quick,
    "budget": budget,
    "steps": steps,
    "batch": BATCH,
    "model": "MLP " + "-".join(map(str, SIZES)) + " ReLU",
    "search": "seeded random search (log-uniform lr and c), same budget per method",
    "selection": "final validation loss, one run per candidate",
    "retrain_seeds": args.seeds,
    "command": "python -m benchmarks.rgd_nn "
    + " ".join(argv if argv is not None else sys.argv[1:]),
  }

  lines = [
    f"{'method':<18} {'best hyperparameters':<34} {'test acc (mean ± sd)':>21}"
    f" {'val loss':>9} {'tuning: median val loss':>24} {'diverged':>9}"
  ]
  for name, r in results["methods"].items():
    hp = ", ".join(f"{k}={v:.3g}" for k, v in r["best"].items())
    acc = np.asarray(r["seeds"]["test_acc"])
    med = np.median(_bad_to_inf(r["tuning"]["final_val_loss"]))
    lines.append(
      f"{name:<18} {hp:<34} {100 * acc.mean():>14.2f} ± {100 * acc.std():4.2f}"
      f" {np.mean(r['seeds']['final_val_loss']):>9.3f} {med:>24.3f}"
      f" {r['tuning']['diverged_or_nan']:>5}/{budget}"
    )
  accs = {n: np.mean(r["seeds"]["test_acc"]) for n, r in results["methods"].items()}
  top = max(accs, key=accs.get)
  lines.append(
    f"RGD test accuracy {100 * accs['RGD']:.2f}% vs best {top} {100 * accs[top]:.2f}%"
    f" (difference {100 * (accs['RGD'] - accs[top]):+.2f} points)"
  )
  text = "\n".join(lines)
  print(text)
  print(f"({elapsed:.0f} s)")
  results["summary"] = {"test_acc_mean": accs, "best": top}
  results["config"] |= run_metadata(run_started)
  stem = output_path(args) / ("rgd_nn_quick" if args.quick else "rgd_nn")
  write_json(stem.with_suffix(".json"), results, indent=1)
  plot(results, stem.with_suffix(".png"))
  return results


def plot(results: dict, path: Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  steps = results["config"]["steps"]
  for name, r in results["methods"].items():
    curve = r["seeds"]["val_curve_mean"]
    ks = np.arange(1, len(curve) + 1) * EVAL_EVERY
    ax1.plot(ks, curve, label=name)
    lr = np.asarray(r["tuning"]["candidates"]["lr"])
    val = np.asarray(r["tuning"]["final_val_loss"], float)
    val = np.where(np.isfinite(val), np.minimum(val, 10), 10)
    ax2.scatter(lr, val, label=name, s=14)
  ax1.set(xlabel="step", ylabel="validation loss", yscale="log", xlim=(0, steps))
  ax1.set_title("best configuration, mean of retraining seeds", fontsize=10)
  ax2.set(xlabel="learning rate", ylabel="final validation loss (capped at 10)", xscale="log")
  ax2.set_yscale("log")
  ax2.set_title("every tuning candidate", fontsize=10)
  ax1.legend(fontsize=8)
  ax2.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


if __name__ == "__main__":
  main()
