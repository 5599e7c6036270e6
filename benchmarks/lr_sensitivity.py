"""Learning-rate sensitivity of relativistic_adam and the Adam baselines.

Sweeps the learning rate from 1e-4 to 10 for the optimizers of
``examples/high_lr_demo.py`` (Adam, Adam with gradient or update clipping,
``relativistic_adam`` in each mode and with ``formula="reference"``) on two
small tasks: the demo's teacher-student regression with a deep ReLU MLP, and a
three-class spiral classification. Each (optimizer, learning rate) is trained
from the same initialisations for several seeds.

The LR-sensitivity metric is that of Wortsman et al. (2023), "Small-scale
proxies for large-scale Transformer training instabilities": over the sweep,
the mean of ``min(loss(lr), loss_init) - min_lr loss(lr)``, where ``loss`` is
the final validation loss, ``loss_init`` the loss at initialisation (a
diverged run counts as ``loss_init``) and the minimum is the optimizer's best
learning rate. Lower is less sensitive. It is computed per seed; the table
gives the mean and the range over seeds.

Writes ``lr_sensitivity.json`` and ``lr_sensitivity.png`` (final loss vs learning
rate) under ``benchmarks/results/scratch/``, or with ``--commit-results`` under
``benchmarks/results/`` (the committed results the documentation shows).

Run::

  python -m benchmarks.lr_sensitivity          # about 5 minutes on one core
  python -m benchmarks.lr_sensitivity --commit-results
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from benchmarks._common import (
  add_output_args,
  output_path,
  pyplot,
  run_metadata,
  run_start,
  write_json,
)
from benchmarks._common import lr_sensitivity as sensitivity
from examples import high_lr_demo as demo

LRS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0]


def spiral_task(
  seed: int = 0, *, classes: int = 3, n_train: int = 3000, n_val: int = 1500, noise: float = 0.25
) -> demo.Task:
  """Interleaved 2-D spirals, one per class (labels are integers)."""
  rng = np.random.default_rng(seed)
  n = n_train + n_val
  label = rng.integers(0, classes, n)
  r = rng.uniform(0.05, 1.0, n)
  theta = 3.5 * r * np.pi + 2 * np.pi * label / classes
  x = np.stack([r * np.cos(theta), r * np.sin(theta)], 1)
  x = (x + noise * 0.1 * rng.normal(size=x.shape)).astype(np.float32) * 2
  trivial = float(np.log(classes))
  return demo.Task(
    jnp.asarray(x[:n_train]),
    jnp.asarray(label[:n_train]),
    jnp.asarray(x[n_train:]),
    jnp.asarray(label[n_train:]),
    trivial,
  )


def initial_loss(graphdef, params, task: demo.Task, loss: str) -> np.ndarray:
  """Validation loss at initialisation, per seed."""

  def one(p):
    out = nnx.merge(graphdef, p)(task.x_val)
    if loss == "xent":
      return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out, task.y_val))
    return jnp.mean((out - task.y_val) ** 2)

  return np.asarray(jax.jit(jax.vmap(one))(params))


def run_task(name, task, loss, txs, lrs, seeds, args, bar) -> dict:
  depth, width = (args.reg_depth, args.reg_width) if loss == "mse" else (6, 64)
  graphdef, params0 = demo.init_students(
    seeds,
    task.x_train.shape[1],
    task.y_train.shape[1] if loss == "mse" else int(task.y_train.max()) + 1,
    width=width,
    depth=depth,
  )
  init = initial_loss(graphdef, params0, task, loss)
  out = {
    "task": name,
    "depth": depth,
    "width": width,
    "init_loss": init.tolist(),
    "trivial_loss": task.trivial_loss,
    "optimizers": {},
  }
  for opt, make_tx in txs.items():
    bar.set_description(f"{name}: {opt}"[:36])
    cv = demo.train(
      graphdef,
      params0,
      make_tx,
      lrs,
      task,
      steps=args.steps,
      batch=args.batch,
      seeds=seeds,
      bar=bar,
      loss=loss,
    )
    final = np.array([[demo.final(v, 4) for v in per_lr] for per_lr in cv["val_loss"]])
    sens = sensitivity(final, init)
    out["optimizers"][opt] = {"final_val": final.tolist(), "sensitivity": sens.tolist()}
  return out


def print_tables(res: dict, lrs: list[float]) -> None:
  print(
    f"\n== {res['task']} (final validation loss, median over seeds; initial loss"
    f" {np.median(res['init_loss']):.3g}, trivial predictor {res['trivial_loss']:.3g};"
    " 'nan' = diverged)"
  )
  print(
    f"{'optimizer':<34s}" + "".join(f" {lr:>8g}" for lr in lrs) + f"  {'sensitivity (range)':<20s}"
  )
  for opt, r in res["optimizers"].items():
    final = np.asarray(r["final_val"], float)
    med = [np.median(row) if np.all(np.isfinite(row)) else np.nan for row in final]
    s = np.asarray(r["sensitivity"])
    print(
      f"{opt:<34s}"
      + "".join(f" {m:>8.3g}" for m in med)
      + f"  {s.mean():.3f} ({s.min():.3f}..{s.max():.3f})"
    )


def plot(results: list[dict], lrs: list[float], path: Path) -> None:
  plt = pyplot()
  fig, axes = plt.subplots(1, len(results), figsize=(7 * len(results), 4.8))
  cmap = plt.get_cmap("tab10")
  for ax, res in zip(np.atleast_1d(axes), results, strict=True):
    init = float(np.median(res["init_loss"]))
    for i, (opt, r) in enumerate(res["optimizers"].items()):
      final = np.asarray(r["final_val"], float)
      capped = np.minimum(np.where(np.isfinite(final), final, np.inf), init)
      style = "-" if opt.startswith("relativistic") else "--"
      s = np.mean(r["sensitivity"])
      ax.plot(
        lrs,
        np.median(capped, 1),
        style,
        marker="o",
        ms=3,
        color=cmap(i % 10),
        label=f"{opt} (sens. {s:.2f})",
      )
      ax.fill_between(lrs, capped.min(1), capped.max(1), color=cmap(i % 10), alpha=0.1)
    ax.axhline(init, color="k", ls=":", lw=0.8, label="initial loss (cap)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("final validation loss (capped at the initial loss)")
    ax.set_title(res["task"])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(
    "Final loss vs learning rate (median and range over seeds);"
    " LR sensitivity of Wortsman et al. 2023 in the legend"
  )
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--lrs", type=float, nargs="+", default=LRS)
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=500)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--reg-depth", type=int, default=10)
  parser.add_argument("--reg-width", type=int, default=32)
  parser.add_argument("--speed-limit", type=float, default=0.1)
  add_output_args(parser, "lr_sensitivity")
  args = parser.parse_args(argv)

  seeds = list(range(args.seeds))
  txs = demo.optimizers(args.speed_limit)
  tasks = [
    ("teacher-student regression (deep ReLU MLP)", demo.teacher_student_task(0), "mse"),
    ("spiral classification (3 classes)", spiral_task(0), "xent"),
  ]
  print(
    f"{len(txs)} optimizers x {len(args.lrs)} learning rates x {args.seeds} seeds"
    f" x {len(tasks)} tasks, {args.steps} steps each; speed limit c={args.speed_limit:g}"
  )
  start = run_start()
  t0 = time.perf_counter()
  results = []
  total = len(tasks) * len(txs) * len(args.lrs) * args.steps
  with tqdm(total=total, unit="step", smoothing=0.1) as bar:
    for name, task, loss in tasks:
      results.append(run_task(name, task, loss, txs, args.lrs, seeds, args, bar))
  elapsed = time.perf_counter() - t0
  for res in results:
    print_tables(res, args.lrs)

  out = output_path(args)
  config = {k: v for k, v in vars(args).items() if not k.startswith("_")}
  write_json(out.with_suffix(".json"), {"config": config | run_metadata(start), "results": results})
  plot(results, args.lrs, out.with_suffix(".png"))
  print(f"\nwrote {out.with_suffix('.png')} and .json ({elapsed:.0f} s)")
  # Headline: the least sensitive relativistic variant vs the least sensitive baseline.
  for res in results:
    sens = {o: float(np.mean(r["sensitivity"])) for o, r in res["optimizers"].items()}
    rel = min((o for o in sens if o.startswith("relativistic")), key=sens.get)
    base = min((o for o in sens if not o.startswith("relativistic")), key=sens.get)
    print(
      f"{res['task']}: LR sensitivity {rel} {sens[rel]:.3f} vs {base} {sens[base]:.3f}"
      f" (adam {sens['adam']:.3f})"
    )


if __name__ == "__main__":
  main()
