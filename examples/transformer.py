"""A small transformer trained with AdamW, relativistic_adamw and AdamW with its update clipped.

A byte-level, decoder-only transformer in Flax NNX learns the Python standard library's own
source code (every Python installation has it on disk; nothing is downloaded), with three
optimizers at a good and at a too-high learning rate:

- ``optax.adamw``;
- ``relax_optax.relativistic_adamw`` with ``mode="global"``: the update, in parameter units,
  never longer than the speed limit ``c``;
- ``optax.adamw`` followed by ``optax.clip_by_global_norm(c)``: the same bound as a hard
  clip of the update (not of the gradient).

Run from the repository root (about 1.5 minutes on one CPU core)::

  pip install -e ".[examples]"
  python examples/transformer.py

It prints a progress bar and a summary table, and writes ``losses.png`` and
``results.json`` under ``examples/out/transformer/`` (git-ignored; ``--out`` elsewhere). The
repository's benchmark of the same question, with five more alternatives, seeds and two
model sizes, is ``benchmarks/lm_stability.py`` (docs/results/lm_stability.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sysconfig
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import relax_optax

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Config:
  """The model, the data and the training run."""

  width: int = 64
  depth: int = 2
  heads: int = 4
  context: int = 64
  batch: int = 16
  steps: int = 250
  warmup: int = 25
  weight_decay: float = 0.1
  good_lr: float = 1e-2
  high_lr: float = 0.3
  speed_limit_per_entry: float = 1e-3  # c = this · sqrt(number of parameters)
  chunk: int = 25  # steps per jitted lax.scan call (the progress bar moves per chunk)
  eval_batches: int = 8
  corpus_bytes: int = 2_000_000
  seed: int = 0


# ----------------------------------------------------------------------------- data


def stdlib_bytes(limit: int) -> tuple[np.ndarray, np.ndarray]:
  """The standard library's ``.py`` sources as bytes: 90 % for training, 10 % held out."""
  base = Path(sysconfig.get_paths()["stdlib"])
  files = sorted(p for p in base.glob("*.py") if not p.name.startswith("test"))
  data = np.frombuffer(b"\0".join(p.read_bytes() for p in files)[:limit], np.uint8)
  split = int(0.9 * data.size)
  return data[:split], data[split:]


def sample_batches(data: np.ndarray, n: int, cfg: Config, rng: np.random.Generator):
  """``n`` batches of ``cfg.batch`` windows of ``cfg.context + 1`` bytes (inputs, targets)."""
  starts = rng.integers(0, data.size - cfg.context - 1, size=(n, cfg.batch))
  windows = data[starts[..., None] + np.arange(cfg.context + 1)].astype(np.int32)
  return jnp.asarray(windows[..., :-1]), jnp.asarray(windows[..., 1:])


# ----------------------------------------------------------------------------- model


class Block(nnx.Module):
  """Pre-LayerNorm block: causal self-attention, then a 4x-wide GELU MLP."""

  def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
    self.norm1 = nnx.LayerNorm(cfg.width, use_bias=False, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(
      num_heads=cfg.heads,
      in_features=cfg.width,
      use_bias=False,
      decode=False,
      rngs=rngs,
    )
    self.norm2 = nnx.LayerNorm(cfg.width, use_bias=False, rngs=rngs)
    self.up = nnx.Linear(cfg.width, 4 * cfg.width, use_bias=False, rngs=rngs)
    self.down = nnx.Linear(4 * cfg.width, cfg.width, use_bias=False, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    x = x + self.attn(self.norm1(x), mask=mask)
    return x + self.down(jax.nn.gelu(self.up(self.norm2(x))))


class Transformer(nnx.Module):
  """A byte-level decoder: embeddings, ``depth`` blocks, a final LayerNorm, logits."""

  def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
    self.embed = nnx.Embed(256, cfg.width, rngs=rngs)
    self.position = nnx.Param(0.02 * jax.random.normal(rngs.params(), (cfg.context, cfg.width)))
    self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.depth)])
    self.norm = nnx.LayerNorm(cfg.width, use_bias=False, rngs=rngs)
    self.head = nnx.Linear(cfg.width, 256, use_bias=False, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    x = self.embed(tokens) + self.position[None, : tokens.shape[-1]]
    mask = nnx.make_causal_mask(tokens)
    for block in self.blocks:
      x = block(x, mask)
    return self.head(self.norm(x))


def loss_fn(model: Transformer, inputs: jax.Array, targets: jax.Array) -> jax.Array:
  logits = model(inputs)
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


# ----------------------------------------------------------------------------- optimizers


def optimizers(lr: float, cfg: Config, n_params: int) -> dict[str, optax.GradientTransformation]:
  """The three optimizers at one peak learning rate, all on the same warm-up + cosine."""
  schedule = optax.warmup_cosine_decay_schedule(0.0, lr, cfg.warmup, cfg.steps)
  c = cfg.speed_limit_per_entry * math.sqrt(n_params)  # a global norm, in parameter units
  wd = cfg.weight_decay
  return {
    "adamw": optax.adamw(schedule, weight_decay=wd),
    "relativistic_adamw": relax_optax.relativistic_adamw(
      schedule, speed_limit=c, mode="global", weight_decay=wd
    ),
    "adamw + update clip": optax.chain(
      optax.adamw(schedule, weight_decay=wd), optax.clip_by_global_norm(c)
    ),
  }


# ----------------------------------------------------------------------------- training


def train(
  tx: optax.GradientTransformation, cfg: Config, train_data: np.ndarray, val_data: np.ndarray, bar
) -> dict:
  """Trains one model from ``cfg.seed``; returns the training-loss curve and the val loss."""
  model = Transformer(cfg, rngs=nnx.Rngs(cfg.seed))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))

  @jax.jit
  def run_chunk(state, inputs, targets):
    def one_step(state, batch):
      model, optimizer = nnx.merge(graphdef, state)
      loss, grads = nnx.value_and_grad(loss_fn)(model, *batch)
      optimizer.update(model, grads)
      return nnx.state((model, optimizer)), loss

    return jax.lax.scan(one_step, state, (inputs, targets))

  rng = np.random.default_rng(cfg.seed)  # the same batches for every optimizer
  losses = []
  for _ in range(0, cfg.steps, cfg.chunk):
    state, chunk_losses = run_chunk(state, *sample_batches(train_data, cfg.chunk, cfg, rng))
    losses += np.asarray(chunk_losses).tolist()
    bar.update(cfg.chunk)
    bar.set_postfix(loss=f"{losses[-1]:.3f}")
  model, _ = nnx.merge(graphdef, state)
  inputs, targets = sample_batches(val_data, cfg.eval_batches, cfg, np.random.default_rng(1))
  val = float(jnp.mean(jax.vmap(lambda x, y: loss_fn(model, x, y))(inputs, targets)))
  return {"train_loss": losses, "val_loss": val}


def plot(results: dict, cfg: Config, path: Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True, layout="constrained")
  for ax, (lr_name, runs) in zip(axes, results.items(), strict=True):
    for name, r in runs.items():
      smooth = np.convolve(r["train_loss"], np.ones(10) / 10, mode="valid")
      ax.plot(np.arange(smooth.size) + 10, smooth, label=f"{name} (val {r['val_loss']:.3f})")
    ax.set_title(lr_name)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
  axes[0].set_ylabel("training loss (nats per byte, 10-step mean)")
  fig.suptitle(f"byte-level transformer, width {cfg.width}, depth {cfg.depth}")
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=Config.steps)
  parser.add_argument("--width", type=int, default=Config.width)
  parser.add_argument("--depth", type=int, default=Config.depth)
  parser.add_argument("--batch", type=int, default=Config.batch)
  parser.add_argument("--context", type=int, default=Config.context)
  parser.add_argument("--chunk", type=int, default=Config.chunk)
  parser.add_argument("--good-lr", type=float, default=Config.good_lr)
  parser.add_argument("--high-lr", type=float, default=Config.high_lr)
  parser.add_argument("--out", type=Path, default=ROOT / "examples" / "out" / "transformer")
  parser.add_argument("--no-plot", action="store_true")
  args = parser.parse_args(argv)
  cfg = Config(
    width=args.width,
    depth=args.depth,
    batch=args.batch,
    context=args.context,
    steps=args.steps,
    warmup=max(1, args.steps // 10),
    chunk=min(args.chunk, args.steps),
    good_lr=args.good_lr,
    high_lr=args.high_lr,
  )
  if cfg.steps % cfg.chunk:
    parser.error("--steps must be a multiple of --chunk")

  from tqdm import tqdm

  train_data, val_data = stdlib_bytes(cfg.corpus_bytes)
  n_params = sum(
    x.size for x in jax.tree.leaves(nnx.state(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param))
  )
  c = cfg.speed_limit_per_entry * math.sqrt(n_params)
  print(f"{n_params:,} parameters, {train_data.size:,} training bytes, speed limit c = {c:.3f}")
  lrs = {f"good lr {cfg.good_lr:g}": cfg.good_lr, f"too-high lr {cfg.high_lr:g}": cfg.high_lr}
  results: dict[str, dict] = {}
  t0 = time.perf_counter()
  with tqdm(total=2 * 3 * cfg.steps, unit="step", desc="training") as bar:
    for lr_name, lr in lrs.items():
      results[lr_name] = {}
      for name, tx in optimizers(lr, cfg, n_params).items():
        results[lr_name][name] = train(tx, cfg, train_data, val_data, bar)

  print(f"\n{'optimizer':<22s}" + "".join(f"{k:>24s}" for k in lrs))
  for name in results[next(iter(lrs))]:
    cells = "".join(f"{results[k][name]['val_loss']:>24.3f}" for k in lrs)
    print(f"{name:<22s}{cells}")
  print(f"(validation loss, nats per byte; {time.perf_counter() - t0:.0f} s)")
  args.out.mkdir(parents=True, exist_ok=True)
  (args.out / "results.json").write_text(
    json.dumps({"config": dataclasses.asdict(cfg), "n_params": n_params, "results": results})
  )
  if not args.no_plot:
    plot(results, cfg, args.out / "losses.png")
    print(f"wrote {args.out / 'losses.png'}")
  return results


if __name__ == "__main__":
  main()
