"""Learning rate 1.0 on a deep ReLU MLP: which optimizers stay finite, and learn?

The task is teacher-student regression: a random deep ReLU "teacher" maps
Gaussian inputs to targets (scaled to unit variance), and a deeper ReLU
"student" MLP (12 layers) learns it from a training set, judged on held-out
validation data. Predicting the training mean (the trivial predictor) gives a
loss of about 1, so a run *learns* only if it ends well below that.

Every optimizer runs at learning rate 1.0 (far too large for Adam):
``optax.adam``; Adam with the gradient clipped by global norm; Adam with its
update clipped elementwise (``optax.clip``) and by global norm (the hard-clip
analogues of ``per_component`` and ``global``); ``relativistic_adam`` in each
mode with the default ``lorentz`` formula, and with ``formula="reference"``
(what relativistic-adam 1.0.0 computes). For comparison, Adam is also tuned
over a small learning-rate grid and its best run is reported.

Prints a summary table (explosion step, final train and validation loss); with
``--out STEM`` also writes a five-panel PNG (train loss, validation loss, gradient
norm, update norm, parameter norm) and a JSON of every curve. The recorded results
the documentation shows are written by ``python -m benchmarks.high_lr``.

Run from the repository root::

  python -m examples.high_lr_demo            # ~2 minutes on one CPU core
  python -m examples.high_lr_demo --steps 300 --seeds 1 --out /tmp/high_lr   # a quick look
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

import relax_optax
from benchmarks._common import MLP, pyplot, tree_norm, write_json

# ---------------------------------------------------------------------------
# The task and the model.
# ---------------------------------------------------------------------------


class Task(NamedTuple):
  """Training and validation data; targets have unit variance on the train set."""

  x_train: jax.Array
  y_train: jax.Array
  x_val: jax.Array
  y_val: jax.Array
  trivial_loss: float  # validation MSE of predicting the training mean.


def teacher_student_task(
  seed: int = 0,
  *,
  d_in: int = 16,
  d_out: int = 4,
  n_train: int = 4096,
  n_val: int = 1024,
  teacher_depth: int = 4,
  teacher_width: int = 32,
  noise: float = 0.05,
) -> Task:
  """Targets from a random deep ReLU teacher (He init), plus a little noise."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n_train + n_val, d_in)).astype(np.float32)
  h = x
  dims = [d_in] + [teacher_width] * (teacher_depth - 1) + [d_out]
  for i, (a, b) in enumerate(itertools.pairwise(dims)):
    w = rng.normal(scale=np.sqrt(2.0 / a), size=(a, b)).astype(np.float32)
    h = h @ w
    if i < len(dims) - 2:
      h = np.maximum(h, 0.0)
  y = h + noise * h.std() * rng.normal(size=h.shape).astype(np.float32)
  mean, std = y[:n_train].mean(0), y[:n_train].std(0)
  y = (y - mean) / std
  trivial = float(np.mean((y[n_train:] - y[:n_train].mean(0)) ** 2))
  return Task(
    jnp.asarray(x[:n_train]),
    jnp.asarray(y[:n_train]),
    jnp.asarray(x[n_train:]),
    jnp.asarray(y[n_train:]),
    trivial,
  )


def init_students(seeds: list[int], d_in: int, d_out: int, *, width: int, depth: int):
  """The graph definition and the parameters of one student per seed, stacked."""
  states = []
  for s in seeds:
    graphdef, state = nnx.split(MLP(d_in, width, d_out, depth, rngs=nnx.Rngs(s)))
    states.append(state)
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
  return graphdef, stacked


# ---------------------------------------------------------------------------
# Optimizers.
# ---------------------------------------------------------------------------


def optimizers(c: float) -> dict[str, Any]:
  """The compared optimizers, as functions of the learning rate; ``c`` is the
  speed limit (and the hard-clip thresholds on the update)."""
  txs = {
    "adam": optax.adam,
    "adam+clip_grad_norm(1)": lambda learning_rate: optax.chain(
      optax.clip_by_global_norm(1.0), optax.adam(learning_rate)
    ),
    f"adam+clip_update({c:g})": lambda learning_rate: optax.chain(
      optax.adam(learning_rate), optax.clip(c)
    ),
    f"adam+clip_update_norm({c:g})": lambda learning_rate: optax.chain(
      optax.adam(learning_rate), optax.clip_by_global_norm(c)
    ),
  }
  for mode in relax_optax.MODES:
    txs[f"relativistic {mode}"] = lambda learning_rate, mode=mode: relax_optax.relativistic_adam(
      learning_rate, speed_limit=c, mode=mode
    )
  txs["relativistic per_param reference"] = lambda learning_rate: relax_optax.relativistic_adam(
    learning_rate, speed_limit=c, mode="per_param", formula="reference"
  )
  return txs


# ---------------------------------------------------------------------------
# Training: one jitted scan of `chunk` steps, vmapped over seeds.
# ---------------------------------------------------------------------------


def make_trainer(
  graphdef,
  tx: optax.GradientTransformation,
  task: Task,
  batch: int,
  chunk: int,
  eval_every: int,
  loss: str = "mse",
):
  """``run(params, opt_state, key) -> (params, opt_state, key, metrics)`` for
  ``chunk`` steps; metrics have shape (chunk,) per seed (validation loss is
  NaN except every ``eval_every`` steps, to keep it cheap). ``loss`` is
  ``"mse"`` (regression) or ``"xent"`` (integer class labels)."""

  def loss_fn(params, x, y):
    out = nnx.merge(graphdef, params)(x)
    if loss == "xent":
      return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out, y))
    return jnp.mean((out - y) ** 2)

  def one_step(carry, i):
    params, opt_state, key = carry
    key, sub = jax.random.split(key)
    idx = jax.random.randint(sub, (batch,), 0, task.x_train.shape[0])
    loss, grads = jax.value_and_grad(loss_fn)(params, task.x_train[idx], task.y_train[idx])
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    val = jax.lax.cond(
      (i + 1) % eval_every == 0,
      lambda p: loss_fn(p, task.x_val, task.y_val),
      lambda p: jnp.full((), jnp.nan),
      params,
    )
    metrics = {
      "train_loss": loss,
      "val_loss": val,
      "grad_norm": tree_norm(grads),
      "update_norm": tree_norm(updates),
      "param_norm": tree_norm(params),
    }
    return (params, opt_state, key), metrics

  def run(params, opt_state, key, start):
    (params, opt_state, key), metrics = jax.lax.scan(
      one_step, (params, opt_state, key), start + jnp.arange(chunk)
    )
    return params, opt_state, key, metrics

  return jax.jit(jax.vmap(run, in_axes=(0, 0, 0, None)), donate_argnums=(0, 1))


def train(
  graphdef,
  params0,
  make_tx,
  lrs: list[float],
  task: Task,
  *,
  steps: int,
  batch: int,
  seeds: list[int],
  chunk: int = 100,
  eval_every: int = 25,
  bar: tqdm | None = None,
  loss: str = "mse",
) -> dict[str, np.ndarray]:
  """Trains one student per (learning rate, seed) in one vmapped, jitted scan.

  ``make_tx(learning_rate)`` builds the optimizer; the learning rate is an
  ``optax.inject_hyperparams`` hyperparameter, so all rates share one
  compilation. Returns curves of shape (len(lrs), len(seeds), steps).
  """
  n_lr, n_seed = len(lrs), len(seeds)
  tx = optax.inject_hyperparams(make_tx)(learning_rate=1.0)
  params = jax.tree.map(lambda x: jnp.tile(x, (n_lr,) + (1,) * (x.ndim - 1)), params0)
  opt_state = jax.vmap(tx.init)(params)
  opt_state.hyperparams["learning_rate"] = jnp.repeat(jnp.asarray(lrs, jnp.float32), n_seed)
  keys = jax.vmap(jax.random.key)(jnp.tile(jnp.asarray(seeds) + 1000, n_lr))
  run = make_trainer(graphdef, tx, task, batch, chunk, eval_every, loss)
  chunks = []
  for start in range(0, steps, chunk):
    params, opt_state, keys, metrics = run(params, opt_state, keys, start)
    chunks.append(jax.device_get(metrics))
    if bar is not None:
      bar.update(chunk * n_lr)
  return {
    k: np.concatenate([m[k] for m in chunks], axis=1).reshape(n_lr, n_seed, -1) for k in chunks[0]
  }


# ---------------------------------------------------------------------------
# Summaries.
# ---------------------------------------------------------------------------


def nonfinite_step(train_loss: np.ndarray) -> int | None:
  """First step (1-based) whose training loss is NaN or infinite, else None."""
  bad = ~np.isfinite(train_loss)
  return int(np.argmax(bad)) + 1 if bad.any() else None


def final(x: np.ndarray, last: int) -> float:
  """Mean of the last ``last`` evaluated values (NaN if one is not finite)."""
  x = x[~np.isnan(x)][-last:]
  return float(np.mean(x)) if x.size and np.all(np.isfinite(x)) else float("nan")


def summarise(name: str, cv: dict[str, np.ndarray], trivial: float) -> dict:
  """Per-seed and median results of one optimizer at one learning rate.

  ``cv`` holds curves of shape (seeds, steps). A run *exploded* if its loss
  became non-finite or ever exceeded 100x the trivial loss; it *learned* if
  its final validation loss is below half the trivial loss.
  """
  per_seed = []
  for tl, vl in zip(cv["train_loss"], cv["val_loss"], strict=True):
    finite_tl = np.where(np.isfinite(tl), tl, np.inf)
    per_seed.append(
      {
        "nonfinite_at": nonfinite_step(tl),
        "exploded_at": (
          int(np.argmax(finite_tl > 100 * trivial)) + 1
          if np.any(finite_tl > 100 * trivial)
          else None
        ),
        "peak_train": float(np.max(finite_tl)),
        "final_train": final(tl, 50),
        "final_val": final(vl, 4),
      }
    )
  vals = np.array([p["final_val"] for p in per_seed])
  return {
    "optimizer": name,
    "nonfinite_seeds": sum(p["nonfinite_at"] is not None for p in per_seed),
    "exploded_seeds": sum(p["exploded_at"] is not None for p in per_seed),
    "first_explosion_step": min(
      (p["exploded_at"] for p in per_seed if p["exploded_at"] is not None), default=None
    ),
    "peak_train_median": float(np.median([p["peak_train"] for p in per_seed])),
    "final_train_median": float(np.median([p["final_train"] for p in per_seed])),
    "final_val_median": float(np.median(vals)),
    "final_val_min": float(np.min(vals)),
    "final_val_max": float(np.max(vals)),
    "learned": bool(np.median(vals) < 0.5 * trivial),
    "per_seed": per_seed,
  }


def print_table(rows: list[dict], trivial: float, n_seeds: int) -> None:
  print(
    f"\nTrivial predictor (training mean) validation loss: {trivial:.3f}."
    " Exploded: loss ever > 100x trivial (at step: first such step, any seed);"
    " NaN: loss became non-finite."
  )
  print(
    f"{'optimizer':<38s} {'exploded':>8s} {'at step':>7s} {'NaN':>5s} {'peak loss':>9s}"
    f" {'train':>8s} {'val':>8s} {'val range':>17s} {'learned':>7s}"
  )
  for r in rows:
    at = "-" if r["first_explosion_step"] is None else str(r["first_explosion_step"])
    rng = f"{r['final_val_min']:.3g}..{r['final_val_max']:.3g}"
    print(
      f"{r['optimizer']:<38s} {r['exploded_seeds']:>4d}/{n_seeds:<3d} {at:>7s}"
      f" {r['nonfinite_seeds']:>3d}/{n_seeds:<1d} {r['peak_train_median']:>9.3g}"
      f" {r['final_train_median']:>8.3g} {r['final_val_median']:>8.3g} {rng:>17s}"
      f" {'yes' if r['learned'] else 'no':>7s}"
    )


def plot(curves, trivial: float, path: Path, title: str, eval_every: int = 25) -> None:
  plt = pyplot()
  panels = [
    ("train_loss", "train loss (minibatch)"),
    ("val_loss", "validation loss"),
    ("grad_norm", "gradient norm"),
    ("update_norm", "update norm"),
    ("param_norm", "parameter norm"),
  ]
  fig, axes = plt.subplots(2, 3, figsize=(17, 9))
  axes = axes.ravel()
  cmap = plt.get_cmap("tab10")
  for i, (name, cv) in enumerate(curves.items()):
    style = "-" if name.startswith("relativistic") else "--"
    for ax, (key, _) in zip(axes[:5], panels, strict=True):
      y = cv[key]
      x = np.arange(1, y.shape[1] + 1)
      if key == "val_loss":  # evaluated every `eval_every` steps only
        x, y = x[eval_every - 1 :: eval_every], y[:, eval_every - 1 :: eval_every]
      # A diverged seed (NaN or inf) counts as +inf in the median.
      y = np.median(np.where(np.isfinite(y), y, np.inf), axis=0)
      ax.plot(x, y, style, color=cmap(i % 10), lw=1.2, label=name)
  for ax, (key, label) in zip(axes[:5], panels, strict=True):
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(label)
    ax.grid(alpha=0.3)
    if key in ("train_loss", "val_loss"):
      ax.axhline(trivial, color="k", lw=0.8, ls=":", label="trivial predictor")
      ax.set_ylim(1e-2, 1e3)
  handles, labels = axes[1].get_legend_handles_labels()
  axes[5].legend(handles, labels, loc="center", fontsize=10)
  axes[5].axis("off")
  fig.suptitle(
    title + "\n(median over seeds; a curve leaves the plot where the"
    " median loss is no longer finite)"
  )
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=80)
  plt.close(fig)


def parser() -> argparse.ArgumentParser:
  """The command line (``benchmarks/high_lr.py`` adds where to write the results)."""
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--lr", type=float, default=1.0)
  p.add_argument("--speed-limit", type=float, default=0.1)
  p.add_argument("--steps", type=int, default=1500)
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--depth", type=int, default=12)
  p.add_argument("--width", type=int, default=64)
  p.add_argument(
    "--tuned-lrs",
    type=float,
    nargs="*",
    default=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2],
    help="learning rates of the tuned-Adam reference",
  )
  return p


def run(args: argparse.Namespace) -> dict[str, Any]:
  """Trains every optimizer, prints the table; returns the results and the curves."""
  task = teacher_student_task(0)
  seeds = list(range(args.seeds))
  graphdef, params0 = init_students(
    seeds, task.x_train.shape[1], task.y_train.shape[1], width=args.width, depth=args.depth
  )
  n_params = sum(x[0].size for x in jax.tree.leaves(params0))
  txs = optimizers(args.speed_limit)
  print(
    f"student: {args.depth}-layer ReLU MLP, width {args.width}, {n_params} parameters;"
    f" {args.seeds} seeds, {args.steps} steps of batch {args.batch}; lr={args.lr:g},"
    f" speed limit c={args.speed_limit:g}"
  )
  curves = {}
  t0 = time.perf_counter()
  total = args.steps * (len(txs) + len(args.tuned_lrs))
  with tqdm(total=total, unit="step", smoothing=0.1) as bar:
    for name, make_tx in txs.items():
      bar.set_description(name[:28])
      curves[name] = jax.tree.map(
        lambda x: x[0],
        train(
          graphdef,
          params0,
          make_tx,
          [args.lr],
          task,
          steps=args.steps,
          batch=args.batch,
          seeds=seeds,
          bar=bar,
        ),
      )
    bar.set_description("tuned adam")
    tuned = train(
      graphdef,
      params0,
      optax.adam,
      args.tuned_lrs,
      task,
      steps=args.steps,
      batch=args.batch,
      seeds=seeds,
      bar=bar,
    )
    for i, lr in enumerate(args.tuned_lrs):
      curves[f"adam lr={lr:g}"] = jax.tree.map(lambda x, i=i: x[i], tuned)
  elapsed = time.perf_counter() - t0

  rows = [summarise(name, cv, task.trivial_loss) for name, cv in curves.items()]
  main_rows = [r for r in rows if r["optimizer"] in txs]
  tuned_rows = [r for r in rows if r["optimizer"] not in txs]
  best = min(tuned_rows, key=lambda r: np.nan_to_num(r["final_val_median"], nan=np.inf))
  print_table(
    [*main_rows, dict(best, optimizer=f"(tuned) {best['optimizer']}")],
    task.trivial_loss,
    args.seeds,
  )
  rel = [r for r in main_rows if r["optimizer"].startswith("relativistic")]
  best_rel = min(rel, key=lambda r: np.nan_to_num(r["final_val_median"], nan=np.inf))
  base = [r for r in main_rows if not r["optimizer"].startswith("relativistic")]
  best_base = min(base, key=lambda r: np.nan_to_num(r["final_val_median"], nan=np.inf))
  print(
    f"\nAt lr={args.lr:g} ({elapsed:.0f} s): best relativistic_adam"
    f" [{best_rel['optimizer']}] val {best_rel['final_val_median']:.3g} | best baseline"
    f" [{best_base['optimizer']}] val {best_base['final_val_median']:.3g} | tuned Adam"
    f" [{best['optimizer']}] val {best['final_val_median']:.3g} | trivial predictor"
    f" {task.trivial_loss:.3g}"
  )
  every = 10  # keep the JSON small: every 10th step of each curve
  config = {k: v for k, v in vars(args).items() if k not in ("out", "commit_results")}
  config = {k: v for k, v in config.items() if not k.startswith("_")}
  return {
    "config": config
    | {"n_params": n_params, "trivial_loss": task.trivial_loss, "seconds": elapsed},
    "summary": rows,
    "curves_every_10_steps_seed0": {
      k: {
        m: np.round(v[0, every - 1 :: every], 5).tolist() for m, v in cv.items() if m != "val_loss"
      }
      | {"val_loss_every_25": np.round(cv["val_loss"][0, 24::25], 5).tolist()}
      for k, cv in curves.items()
    },
    "plotted": {k: curves[k] for k in [*txs, best["optimizer"]]},
  }


def write(results: dict[str, Any], args: argparse.Namespace, stem: Path) -> None:
  """Writes ``stem.json`` (every summary and curve) and ``stem.png``."""
  cfg = results["config"]
  plot(
    results["plotted"],
    cfg["trivial_loss"],
    stem.with_suffix(".png"),
    f"{args.depth}-layer ReLU MLP, teacher-student regression, lr={args.lr:g}",
  )
  write_json(stem.with_suffix(".json"), {k: v for k, v in results.items() if k != "plotted"})
  print(f"wrote {stem.with_suffix('.png')} and .json")


def main(argv=None) -> dict[str, Any]:
  p = parser()
  p.add_argument("--out", type=Path, default=None, help="also write OUT.json and OUT.png")
  args = p.parse_args(argv)
  results = run(args)
  if args.out is not None:
    write(results, args, args.out)
  return results


if __name__ == "__main__":
  main()
