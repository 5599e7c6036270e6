"""Small-transformer stability: does the speed limit stabilise, or rename the step size?

Trains a byte-level decoder-only transformer (``benchmarks/lm_model.py``: Flax
NNX, pre-LayerNorm, no biases, causal attention) on the Python standard
library's own sources, with the recipe of Wortsman et al. (2023), "Small-scale
proxies for large-scale Transformer training instabilities": Adam with
b1 = 0.9, b2 = 0.95, eps = 1e-8, gradient clipping at global norm 1, linear
warm-up then cosine decay, independent weight decay 1e-4 (not multiplied by
the learning rate; applied identically to every arm, outside the optimizer).

Arms (every one an ``optax.chain`` of Optax parts or of this library):

- ``adamw``; ``adamw+qk_norm`` (qk-layernorm); ``adamw+z_loss`` (1e-4);
  ``adamw+long_warmup`` (4x the warm-up);
- ``adafactor_clip``: Adam's update clipped per tensor to RMS 1
  (``optax.clip_by_block_rms(1.0)``, Shazeer and Stern 2018);
- ``stable_adamw``: StableAdamW (Wortsman et al. 2023b, "Stable and low-precision
  training for large-scale vision-language models"), written below as
  :func:`scale_by_stable_adamw`;
- ``clip_update_norm``: Adam's update (after the learning rate) clipped by
  global norm c; ``normalize_update``: ``optax.normalize_by_update_norm``, the
  step every global cap becomes at a very high learning rate;
- ``relativistic_adam`` in modes ``global``, ``per_param``, ``per_component``
  (formula ``lorentz``) and ``per_param`` with ``formula="reference"``;
- optional (``--arms "relativistic global, scheduled c"``): ``global`` with c
  following the learning rate's warm-up and cosine decay.

Units of c. A cap on a group of n entries (n = all parameters for the global
caps, the mean tensor size for ``per_param``, 1 for ``per_component``) is set
as ``c = c_entry · sqrt(n)``, so that ``c_entry`` is the RMS step per entry at
which the cap binds, in the units of Adam's learning rate (Adam moves each
entry by at most about lr; measured, by about lr/10 on average here). The c grid
is the LR grid divided by 10, over the same three decades. ``normalize_update``'s
step (its global norm) is ``lr · sqrt(N) / 10``, so that its LR grid covers the
same per-entry steps as the caps' c grid.

Measurements, per (arm, learning rate, seed):

- LR sensitivity (Wortsman et al.): over the LR grid, the mean of
  ``min(final validation loss, L0) - best`` with ``L0 = ln(vocabulary)`` the
  uniform predictor's loss (``benchmarks/lr_sensitivity.py``'s metric); mean
  and range over seeds;
- the decisive test: for every capped arm, the same sensitivity over the c
  grid at a fixed high learning rate (default 1), next to its sensitivity in
  LR, and the fraction of (step, group) pairs where the cap binds;
- best validation loss, the largest attention logit and output-logit RMS over
  training, update RMS per step, the first non-finite step.

A second domain, scikit-learn's bundled ``load_digits`` (8x8 images, 10
classes) with a deep ReLU MLP without normalisation (``examples/high_lr_demo``'s
``MLP``), runs the same arms (less qk-layernorm) and grids.

``--full`` adds a second transformer, width 128 and depth 3 (``--full-size D DEPTH``;
4 heads, 664,448 parameters against the default's 135,488), after the default one.
It was width 128 and depth 4 (2x in both) until it had to be run: one arm of that size
costs 4.3x the default's, so the whole ``--full`` would have taken about 76 minutes on
one core, with no margin in the 75 minutes the run had; width 128 and depth 3 costs
3.2x (measured, one arm, before the run). Every domain records its wall time
(``seconds``) and the load average around it, so the default size's time comes out of
the same run.

``--step-time`` instead times the end-to-end train step of ``relativistic_adamw``
vs ``optax.adamw`` on the default transformer (about 1.5 minutes).
``--spikes`` instead induces instabilities on the default transformer (gradient
spikes x100 and x10,000 into one layer; b2 = 0.999 with that layer's gradients
rescaled x100 mid-run; 3x and 10x AdamW's best LR) and compares AdamW, gradient
clipping, a Levanter-style hard historical clip, StableAdamW, fixed-c
``relativistic_adam`` and the relative speed limit at k in {1.5, 2, 3, 5}
(``lm_stability_spikes.{json,png,txt}``; about 4 minutes).
``--tables RESULTS.json [--replot]`` prints the Markdown tables of a finished run
(and redraws its PNGs and .txt).

Writes ``lm_stability.{json,png,txt}``, ``lm_stability_logits.png`` and
``lm_stability_tables.md`` under ``benchmarks/results`` (``--step-time``:
``lm_stability_step_time.json``).

Run::

  python -m benchmarks.lm_stability             # default: one model size; ~14 min (see below)
  python -m benchmarks.lm_stability --full      # adds d 128, depth 3: 55 min (see below)
  python -m benchmarks.lm_stability --quick     # a tiny grid, under a minute (the CI test)
  python -m benchmarks.lm_stability --step-time # step time vs optax.adamw, ~1-2 minutes
  python -m benchmarks.lm_stability --spikes    # induced instabilities vs guards, ~4 minutes

Measured times (``lm_stability_full.json``), on one core of the 2 (``taskset -c 1``, XLA
single-threaded) while the other core ran compile-time benchmarks (load average
1.2-2.4): ``--full`` 3,295 s (55 min): the default transformer 761 s, the d 128 depth 3
transformer 2,475 s, digits 53 s; so the default run (its transformer and digits) takes
about 14 minutes there (814 s plus start-up and plots). The committed default run took
26 min on both cores under a load of 3-9.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

import relax_optax
from benchmarks import lm_model
from benchmarks._common import lr_sensitivity as sensitivity
from examples.high_lr_demo import MLP

RESULTS = Path(__file__).resolve().parent / "results"
LRS = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]
C_ENTRY = [0.1 * lr for lr in LRS]  # the c grid (per-entry units), at --c-lr
B1, B2, EPS, WEIGHT_DECAY, Z_LOSS = 0.9, 0.95, 1e-8, 1e-4, 1e-4


# ---------------------------------------------------------------------------
# StableAdamW, as a small Optax transformation.
# ---------------------------------------------------------------------------


def scale_by_stable_adamw(
  b1: float = B1, b2: float = B2, eps: float = EPS
) -> optax.GradientTransformation:
  """Adam's direction, divided per tensor by ``max(1, RMS_t)``.

  StableAdamW (Wortsman et al. 2023b, Algorithm 2) scales each tensor's learning
  rate by ``1 / max(1, RMS_t)`` with ``RMS_t = sqrt(mean(g² / max(v̂, eps²)))``,
  ``v̂`` the bias-corrected second moment including ``g``: Adafactor's update
  clipping, measured on the gradient against its own second moment. The state
  is ``optax.scale_by_adam``'s.

  References:
    Wortsman et al., 2023, "Stable and low-precision training for large-scale
    vision-language models" (arXiv 2304.13013).
  """
  adam = optax.scale_by_adam(b1, b2, eps)

  def update_fn(updates, state, params=None):
    direction, state = adam.update(updates, state, params)
    # nu's bias correction uses the incremented count, as in scale_by_adam.
    correction = 1 - b2 ** state.count.astype(jnp.float32)

    def stabilise(u, g, nu):
      # max(v̂, eps²) keeps the ratio finite where the second moment is zero.
      rms = jnp.sqrt(jnp.mean(jnp.square(g) / jnp.maximum(nu / correction, eps**2)))
      return u / jnp.maximum(1.0, rms)

    return jax.tree.map(stabilise, direction, updates, state.nu), state

  return optax.GradientTransformation(adam.init, update_fn)


# ---------------------------------------------------------------------------
# The arms.
# ---------------------------------------------------------------------------


class Arm(NamedTuple):
  """One compared optimizer or intervention.

  ``make(learning_rate, c)`` returns the update transformation after gradient
  clipping (``learning_rate`` is a schedule, ``c`` the cap in parameter units);
  ``cap`` names how the cap binds (see :func:`binding`), None for no c.
  """

  name: str
  make: Callable[[Callable, jax.Array], optax.GradientTransformation]
  cap: str | None = None
  qk_norm: bool = False
  z_loss: float = 0.0
  warmup_factor: float = 1.0
  scheduled_c: bool = False  # c follows the LR's warm-up and cosine decay: c · s(t)
  extra: bool = False  # not in the list: runs only when named in --arms


def _adam(lr, *after):
  return optax.chain(optax.scale_by_adam(B1, B2, EPS), optax.scale_by_learning_rate(lr), *after)


def _relativistic(mode: str, formula: str = "lorentz"):
  return lambda lr, c: relax_optax.relativistic_adam(
    lr, B1, B2, EPS, speed_limit=c, mode=mode, formula=formula
  )


def arms(domain: str, n_params: int) -> list[Arm]:
  """Every arm; the transformer-only ones (qk-layernorm) only for ``domain="lm"``."""
  sqrt_n = float(np.sqrt(n_params))
  out = [
    Arm("adamw", lambda lr, c: _adam(lr)),
    Arm("adamw+qk_norm", lambda lr, c: _adam(lr), qk_norm=True),
    Arm("adamw+z_loss", lambda lr, c: _adam(lr), z_loss=Z_LOSS),
    Arm("adamw+long_warmup", lambda lr, c: _adam(lr), warmup_factor=4.0),
    Arm(
      "adafactor_clip",
      lambda lr, c: optax.chain(
        optax.scale_by_adam(B1, B2, EPS),
        optax.clip_by_block_rms(1.0),
        optax.scale_by_learning_rate(lr),
      ),
    ),
    Arm(
      "stable_adamw",
      lambda lr, c: optax.chain(scale_by_stable_adamw(), optax.scale_by_learning_rate(lr)),
    ),
    Arm(
      "clip_update_norm", lambda lr, c: _adam(lr, optax.clip_by_global_norm(c)), cap="hard_global"
    ),
    Arm(
      "normalize_update",
      lambda lr, c: optax.chain(
        optax.scale_by_adam(B1, B2, EPS),
        optax.normalize_by_update_norm(1.0),
        optax.scale_by_learning_rate(lambda t: lr(t) * 0.1 * sqrt_n),
      ),
    ),
    Arm("relativistic global", _relativistic("global"), cap="global"),
    Arm("relativistic per_param", _relativistic("per_param"), cap="per_param"),
    Arm("relativistic per_component", _relativistic("per_component"), cap="per_component"),
    Arm(
      "relativistic per_param reference",
      _relativistic("per_param", "reference"),
      cap="per_param_reference",
    ),
    Arm(
      "relativistic global, scheduled c",
      _relativistic("global"),
      cap="global",
      scheduled_c=True,
      extra=True,
    ),
  ]
  return [a for a in out if domain == "lm" or not a.qk_norm]


def selected(domain: str, names: list[str] | None, n_params: int = 1) -> list[Arm]:
  """The arms a run trains: ``adamw`` (the reference of every comparison) and ``names``
  if given, else every arm of the issue's list."""
  return [
    a for a in arms(domain, n_params) if (a.name in [*names, "adamw"] if names else not a.extra)
  ]


def cap_scale(cap: str, params: Any) -> float:
  """``sqrt(n)``, n the number of entries one cap group has (see the module doc)."""
  leaves = jax.tree.leaves(params)
  n = sum(x.size for x in leaves)
  if cap in ("hard_global", "global"):
    return float(np.sqrt(n))
  if cap in ("per_param", "per_param_reference"):
    return float(np.sqrt(n / len(leaves)))
  return 1.0


def _norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def binding(cap: str | None, update, c) -> jax.Array:
  """Fraction of the cap's groups in which the cap binds, read off the capped update.

  The cap binds where the uncapped norm n exceeds c. For ``lorentz``,
  ``‖v‖ = n / sqrt(1 + (n/c)²)`` is increasing in n, so n > c exactly when
  ``‖v‖ > c/√2``; for ``reference``, ``‖v‖ <= c/2`` below the limit and
  ``>= c·tanh(1) = 0.76c`` above, so the threshold 0.63c separates them; a hard
  clip binds when ``‖v‖ = c``. Groups: the whole update (global), each tensor
  (per_param, as a fraction of tensors), each entry (per_component).
  """
  leaves = jax.tree.leaves(update)
  if cap is None:
    return jnp.full((), jnp.nan)
  if cap == "hard_global":
    return (_norm(update) >= c * (1 - 1e-3)).astype(jnp.float32)
  if cap == "global":
    return (_norm(update) > c / np.sqrt(2)).astype(jnp.float32)
  if cap in ("per_param", "per_param_reference"):
    threshold = c / np.sqrt(2) if cap == "per_param" else 0.63 * c
    return jnp.mean(jnp.stack([_norm(x) > threshold for x in leaves]).astype(jnp.float32))
  n = sum(x.size for x in leaves)
  return sum(jnp.sum(jnp.abs(x) > c / np.sqrt(2)) for x in leaves).astype(jnp.float32) / n


# ---------------------------------------------------------------------------
# The two domains: a model constructor, a batch sampler and a loss.
# ---------------------------------------------------------------------------


class Domain(NamedTuple):
  """What a training run needs besides the optimizer."""

  name: str
  init: Callable[[int, bool], Any]  # (seed, qk_norm) -> nnx.Module
  sample: Callable[[jax.Array], tuple]  # key -> batch
  val_batch: tuple
  loss: Callable  # (model, batch, z_loss) -> (loss, aux dict)
  cap_loss: float  # the uniform predictor's loss, ln(classes): the sensitivity cap
  info: dict


def lm_domain(
  corpus: lm_model.Corpus,
  *,
  d: int,
  depth: int,
  heads: int,
  seq_len: int,
  batch: int,
  val_windows: int,
) -> Domain:
  """Byte-level language modelling on ``corpus`` (random windows of seq_len + 1 bytes)."""
  train = jnp.asarray(corpus.train)
  rng = np.random.default_rng(0)
  starts = rng.integers(0, corpus.val.size - seq_len - 1, val_windows)
  val = np.stack([corpus.val[s : s + seq_len + 1] for s in starts]).astype(np.int32)
  offsets = jnp.arange(seq_len + 1)

  def sample(key):
    s = jax.random.randint(key, (batch, 1), 0, train.size - seq_len - 1)
    w = train[s + offsets[None]].astype(jnp.int32)
    return w[:, :-1], w[:, 1:]

  def loss(model, xy, z_loss):
    logits, max_attn = model(xy[0])
    total, xent, log_z = lm_model.lm_loss(logits, xy[1], z_loss)
    rms = jnp.sqrt(jnp.mean(jnp.square(jax.lax.stop_gradient(logits))))
    return total, {
      "xent": xent,
      "max_attn_logit": max_attn,
      "out_logit_rms": rms,
      "log_z": jax.lax.stop_gradient(log_z),
    }

  def init(seed, qk_norm):
    return lm_model.Transformer(
      d=d, depth=depth, heads=heads, seq_len=seq_len, qk_norm=qk_norm, rngs=nnx.Rngs(seed)
    )

  info = {
    "d": d,
    "depth": depth,
    "heads": heads,
    "seq_len": seq_len,
    "batch": batch,
    "val_windows": val_windows,
    "corpus": corpus.info,
  }
  return Domain(
    f"lm d{d} L{depth}",
    init,
    sample,
    (val[:, :-1], val[:, 1:]),
    loss,
    float(np.log(lm_model.VOCAB)),
    info,
  )


def args_lm_domain(
  corpus: lm_model.Corpus,
  args,
  *,
  d: int | None = None,
  depth: int | None = None,
  val_windows: int | None = None,
) -> Domain:
  """:func:`lm_domain` with the command line's shape; ``d``, ``depth`` and
  ``val_windows`` override it."""
  return lm_domain(
    corpus,
    d=args.d if d is None else d,
    depth=args.depth if depth is None else depth,
    heads=args.heads,
    seq_len=args.seq_len,
    batch=args.batch,
    val_windows=args.val_windows if val_windows is None else val_windows,
  )


def digits_domain(*, width: int, depth: int, batch: int) -> Domain:
  """scikit-learn's ``load_digits``: 1,797 8x8 images, 10 classes; 500 for validation."""
  from sklearn.datasets import load_digits

  x, y = load_digits(return_X_y=True)
  perm = np.random.default_rng(0).permutation(len(y))
  x, y = (x[perm] / 16.0).astype(np.float32), y[perm].astype(np.int32)
  x_train, y_train = jnp.asarray(x[500:]), jnp.asarray(y[500:])

  def sample(key):
    idx = jax.random.randint(key, (batch,), 0, x_train.shape[0])
    return x_train[idx], y_train[idx]

  def loss(model, xy, z_loss):
    logits = model(xy[0])
    log_z = jax.nn.logsumexp(logits, axis=-1)
    xent = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, xy[1]))
    rms = jnp.sqrt(jnp.mean(jnp.square(jax.lax.stop_gradient(logits))))
    return xent + z_loss * jnp.mean(jnp.square(log_z)), {
      "xent": xent,
      "max_attn_logit": jnp.full((), jnp.nan),
      "out_logit_rms": rms,
      "log_z": jax.lax.stop_gradient(jnp.mean(log_z)),
    }

  def init(seed, qk_norm):
    del qk_norm
    return MLP(64, width, 10, depth, rngs=nnx.Rngs(seed))

  info = {
    "width": width,
    "depth": depth,
    "batch": batch,
    "n_train": int(len(y) - 500),
    "n_val": 500,
  }
  return Domain(
    f"digits MLP w{width} L{depth}",
    init,
    sample,
    (jnp.asarray(x[:500]), jnp.asarray(y[:500])),
    loss,
    float(np.log(10)),
    info,
  )


# ---------------------------------------------------------------------------
# Training: one jitted scan over steps, vmapped over (learning rate or c, seed).
# ---------------------------------------------------------------------------


def make_runner(
  domain: Domain,
  arm: Arm,
  graphdef,
  c_scale: float,
  *,
  steps: int,
  warmup: int,
  eval_every: int,
  chunk: int,
):
  """``init(params, lr, c_entry) -> opt_state`` and ``run(carry, lr, c_entry, start)``,
  both vmapped over runs; ``run`` advances ``chunk`` steps."""
  factor = optax.warmup_cosine_decay_schedule(
    0.0, 1.0, int(warmup * arm.warmup_factor), steps, end_value=0.0
  )

  def cap_at(c_entry, t):
    return c_entry * c_scale * (factor(t) if arm.scheduled_c else 1.0)

  def tx_for(lr, c_entry):
    c = c_entry * c_scale
    inner = arm.make(lambda t: lr * factor(t), (lambda t: c * factor(t)) if arm.scheduled_c else c)
    return optax.chain(optax.clip_by_global_norm(1.0), inner)

  def loss_fn(params, batch):
    return domain.loss(nnx.merge(graphdef, params), batch, arm.z_loss)

  def init(params, lr, c_entry):
    return tx_for(lr, c_entry).init(params)

  def run(carry, lr, c_entry, start):
    tx = tx_for(lr, c_entry)

    def step(carry, t):
      params, opt_state, key = carry
      key, sub = jax.random.split(key)
      (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, domain.sample(sub))
      updates, opt_state = tx.update(grads, opt_state, params)
      n = sum(x.size for x in jax.tree.leaves(updates))
      metrics = {
        "train_loss": aux["xent"],
        "max_attn_logit": aux["max_attn_logit"],
        "out_logit_rms": aux["out_logit_rms"],
        "log_z": aux["log_z"],
        "update_rms": _norm(updates) / np.sqrt(n),
        "bind": binding(arm.cap, updates, cap_at(c_entry, t)),
      }
      # Independent weight decay (Wortsman et al.): not multiplied by the learning rate.
      decay = WEIGHT_DECAY * factor(t)
      params = jax.tree.map(lambda p, u: p + u - decay * p, params, updates)
      metrics["val_loss"] = jax.lax.cond(
        (t + 1) % eval_every == 0,
        lambda p: loss_fn(p, domain.val_batch)[1]["xent"],
        lambda p: jnp.full((), jnp.nan),
        params,
      )
      return (params, opt_state, key), metrics

    return jax.lax.scan(step, carry, start + jnp.arange(chunk))

  init = jax.jit(jax.vmap(init))
  run = jax.jit(jax.vmap(run, in_axes=(0, 0, 0, None)), donate_argnums=(0,))
  return init, run


def train_arm(
  domain: Domain,
  arm: Arm,
  params0: dict,
  lrs,
  c_entries,
  seeds,
  *,
  steps: int,
  warmup: int,
  eval_every: int,
  bar: tqdm,
) -> dict[str, np.ndarray]:
  """Trains every (lr, c_entry) pair for every seed: curves of shape (pairs, seeds, steps)."""
  graphdef, stacked = params0[arm.qk_norm]
  n_pairs, n_seeds = len(lrs), len(seeds)
  params = jax.tree.map(lambda x: jnp.tile(x, (n_pairs,) + (1,) * (x.ndim - 1)), stacked)
  lr = jnp.repeat(jnp.asarray(lrs, jnp.float32), n_seeds)
  c_entry = jnp.repeat(jnp.asarray(c_entries, jnp.float32), n_seeds)
  # The data order depends on the seed only: every arm and LR sees the same batches.
  keys = jax.vmap(jax.random.key)(jnp.tile(jnp.asarray(seeds) + 1000, n_pairs))
  c_scale = cap_scale(arm.cap, stacked) if arm.cap else 1.0
  chunk = min(steps, 50)
  init, run = make_runner(
    domain, arm, graphdef, c_scale, steps=steps, warmup=warmup, eval_every=eval_every, chunk=chunk
  )
  carry = (params, init(params, lr, c_entry), keys)
  chunks = []
  for start in range(0, steps, chunk):
    carry, metrics = run(carry, lr, c_entry, start)
    chunks.append(jax.device_get(metrics))
    bar.update(chunk * n_pairs * n_seeds)
  return {
    k: np.concatenate([m[k] for m in chunks], axis=1).reshape(n_pairs, n_seeds, -1)
    for k in chunks[0]
  }


def init_params(domain: Domain, seeds: list[int]) -> dict[bool, tuple]:
  """(graphdef, params stacked over seeds) without and with qk-layernorm."""
  out = {}
  for qk in (False, True):
    states = []
    for s in seeds:
      graphdef, state = nnx.split(domain.init(s, qk), nnx.Param)
      states.append(state)
    out[qk] = (graphdef, jax.tree.map(lambda *xs: jnp.stack(xs), *states))
  return out


# ---------------------------------------------------------------------------
# Summaries.
# ---------------------------------------------------------------------------


def summarise(cv: dict[str, np.ndarray], eval_every: int) -> dict:
  """Per (grid point, seed) scalars from curves of shape (points, seeds, steps)."""
  evaluated = cv["val_loss"][..., eval_every - 1 :: eval_every]
  finite = np.isfinite(cv["train_loss"])
  first_bad = np.where(finite.all(-1), -1, np.argmax(~finite, -1) + 1)

  def finite_max(x):
    return np.nanmax(np.where(np.isfinite(x), x, np.nan), -1) if x.size else x

  with warnings.catch_warnings():  # all-NaN slices (diverged runs) give NaN, as meant
    warnings.simplefilter("ignore", RuntimeWarning)
    return {
      "final_val": evaluated[..., -1].tolist(),
      "best_val": np.nanmin(np.where(np.isfinite(evaluated), evaluated, np.nan), -1).tolist(),
      "nonfinite_step": first_bad.tolist(),
      "max_attn_logit": finite_max(cv["max_attn_logit"]).tolist(),
      "max_out_logit_rms": finite_max(cv["out_logit_rms"]).tolist(),
      "final_out_logit_rms": cv["out_logit_rms"][..., -1].tolist(),
      "mean_update_rms": np.nanmean(cv["update_rms"], -1).tolist(),
      "bind_fraction": np.nanmean(cv["bind"], -1).tolist()
      if np.isfinite(cv["bind"]).any()
      else None,
    }


def curves_for_json(cv: dict[str, np.ndarray], every: int, eval_every: int) -> dict:
  """Seed-0 curves every ``every`` steps (validation at its evaluation points)."""
  out = {
    k: np.round(v[:, 0, every - 1 :: every], 5).tolist()
    for k, v in cv.items()
    if k not in ("val_loss", "bind")
  }
  out["val_loss"] = np.round(cv["val_loss"][:, 0, eval_every - 1 :: eval_every], 5).tolist()
  return out


def sens(final: list, cap_loss: float) -> np.ndarray:
  """LR (or c) sensitivity per seed, ``lr_sensitivity.sensitivity`` with L0 = cap_loss."""
  final = np.asarray(final, float)
  return sensitivity(final, np.full(final.shape[1], cap_loss))


def run_domain(domain: Domain, args, seeds: list[int], bar: tqdm) -> dict:
  params0 = init_params(domain, seeds)
  n_params = int(sum(x[0].size for x in jax.tree.leaves(params0[False][1])))
  out = {
    "domain": domain.name,
    "info": domain.info | {"n_params": n_params},
    "cap_loss": domain.cap_loss,
    "lrs": args.lrs,
    "c_entry": args.c_entry,
    "c_lr": args.c_lr,
    "c_default_entry": args.speed_limit,
    "arms": {},
  }
  t_domain, load0 = time.perf_counter(), os.getloadavg()
  for arm in selected(domain.name.split()[0], args.arms, n_params):
    bar.set_description(f"{domain.name}: {arm.name}"[:40])
    t0 = time.perf_counter()
    kw = {
      "steps": args.steps if domain.name.startswith("lm") else args.digits_steps,
      "warmup": args.warmup if domain.name.startswith("lm") else args.digits_warmup,
      "eval_every": args.eval_every,
      "bar": bar,
    }
    # One vmapped program per arm: the LR sweep and, for a capped arm, the c sweep.
    pairs = [(lr, args.speed_limit) for lr in args.lrs]
    if arm.cap:
      pairs += [(args.c_lr, c) for c in args.c_entry]
    cv = train_arm(domain, arm, params0, *zip(*pairs, strict=True), seeds, **kw)
    n = len(args.lrs)
    lr_cv = {k: v[:n] for k, v in cv.items()}
    res = {
      "c_scale": cap_scale(arm.cap, params0[False][1]) if arm.cap else None,
      "lr_sweep": summarise(lr_cv, args.eval_every),
      "lr_curves_seed0": curves_for_json(lr_cv, 10, args.eval_every),
    }
    res["lr_sensitivity"] = sens(res["lr_sweep"]["final_val"], domain.cap_loss).tolist()
    if arm.cap:
      c_cv = {k: v[n:] for k, v in cv.items()}
      res["c_sweep"] = summarise(c_cv, args.eval_every)
      res["c_curves_seed0"] = curves_for_json(c_cv, 10, args.eval_every)
      res["c_sensitivity"] = sens(res["c_sweep"]["final_val"], domain.cap_loss).tolist()
    res["seconds"] = time.perf_counter() - t0
    out["arms"][arm.name] = res
  # Wall time of the whole domain (every arm, compilation included) and the load around it.
  out |= {
    "seconds": time.perf_counter() - t_domain,
    "load_before": load0,
    "load_after": os.getloadavg(),
  }
  return out


def best_val(r: dict) -> float:
  """Best validation loss of an arm: per seed the lowest over LRs and evaluations,
  then the mean over seeds (NaN-free: a diverged run has no finite evaluation)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    return float(np.mean(np.nanmin(np.asarray(r["lr_sweep"]["best_val"], float), 0)))


def _fmt_sens(s) -> str:
  s = np.asarray(s)
  return f"{s.mean():.3f} ({s.min():.3f}..{s.max():.3f})"


def print_tables(res: dict, echo: bool = True) -> list[str]:
  """Prints the domain's tables (if ``echo``); returns its lines (for the .txt file)."""
  lines = []
  p = lines.append
  lrs, cs = res["lrs"], res["c_entry"]
  p(
    f"\n== {res['domain']} ({res['info']['n_params']} parameters): final validation loss"
    f" (median over seeds; capped at L0 = {res['cap_loss']:.3f}; 'nan' = diverged),"
    f" caps at c_entry = {res['c_default_entry']:g}"
  )
  p(
    f"{'arm':<34s}"
    + "".join(f" {lr:>7g}" for lr in lrs)
    + f"  {'LR sensitivity (range)':<23s} {'best val':>8s}"
  )
  for name, r in res["arms"].items():
    final = np.asarray(r["lr_sweep"]["final_val"], float)
    med = [np.median(row) if np.all(np.isfinite(row)) else np.nan for row in final]
    best = best_val(r)
    p(
      f"{name:<34s}"
      + "".join(f" {m:>7.3f}" for m in med)
      + f"  {_fmt_sens(r['lr_sensitivity']):<23s} {best:>8.3f}"
    )
  if any("c_sweep" in r for r in res["arms"].values()):
    p(
      f"\n-- the decisive test: final validation loss vs c_entry at lr = {res['c_lr']:g}"
      " (median over seeds), sensitivity in c next to sensitivity in LR"
    )
    p(
      f"{'arm':<34s}"
      + "".join(f" {c:>7g}" for c in cs)
      + f"  {'c sensitivity':<23s} {'LR sensitivity':<23s}"
    )
    for name, r in res["arms"].items():
      if "c_sweep" not in r:
        continue
      final = np.asarray(r["c_sweep"]["final_val"], float)
      med = [np.median(row) if np.all(np.isfinite(row)) else np.nan for row in final]
      p(
        f"{name:<34s}"
        + "".join(f" {m:>7.3f}" for m in med)
        + f"  {_fmt_sens(r['c_sensitivity']):<23s} {_fmt_sens(r['lr_sensitivity']):<23s}"
      )
    p(
      f"\n-- fraction of (step, group) pairs where the cap binds, per LR (c_entry ="
      f" {res['c_default_entry']:g}; mean over seeds)"
    )
    p(f"{'arm':<34s}" + "".join(f" {lr:>7g}" for lr in lrs))
    for name, r in res["arms"].items():
      if r["lr_sweep"]["bind_fraction"] is not None:
        b = np.mean(r["lr_sweep"]["bind_fraction"], 1)
        p(f"{name:<34s}" + "".join(f" {x:>7.2f}" for x in b))
  p(
    "\n-- instabilities: largest attention logit / output-logit RMS over training, per LR"
    " (median over seeds)"
  )
  p(f"{'arm':<34s}" + "".join(f" {lr:>11g}" for lr in lrs))
  for name, r in res["arms"].items():
    a = np.median(np.asarray(r["lr_sweep"]["max_attn_logit"], float), 1)
    o = np.median(np.asarray(r["lr_sweep"]["max_out_logit_rms"], float), 1)
    p(f"{name:<34s}" + "".join(f" {x:>5.3g}/{y:<5.3g}" for x, y in zip(a, o, strict=True)))
  if echo:
    print("\n".join(lines))
  return lines


def _med(rows) -> list[float]:
  """Median over seeds per grid point; NaN where a seed diverged."""
  rows = np.asarray(rows, float)
  return [float(np.median(r)) if np.all(np.isfinite(r)) else np.nan for r in rows]


def _cell(x: float, fmt: str = ".3f") -> str:
  return "diverged" if not np.isfinite(x) else format(x, fmt)


def _sens_cell(s) -> str:
  s = np.asarray(s, float)
  return f"{s.mean():.3f} ({s.min():.3f}–{s.max():.3f})"


def markdown_tables(data: dict) -> str:
  """The results as Markdown tables (for docs/results/lm_stability.md)."""
  out = []
  p = out.append
  for res in data["results"]:
    lrs, cs, arms_ = res["lrs"], res["c_entry"], res["arms"]
    p(f"#### {res['domain']} ({res['info']['n_params']:,} parameters)\n")
    p(
      f"Final validation loss (median over seeds, capped arms at c_entry ="
      f" {res['c_default_entry']:g}), LR sensitivity (mean, range over seeds), best"
      " validation loss (per seed the lowest over LRs and evaluations; mean over seeds):\n"
    )
    p("| arm | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | LR sensitivity | best val |")
    p("| --- |" + " ---: |" * (len(lrs) + 2))
    for name, r in arms_.items():
      best = best_val(r)
      p(
        f"| `{name}` | "
        + " | ".join(_cell(m) for m in _med(r["lr_sweep"]["final_val"]))
        + f" | {_sens_cell(r['lr_sensitivity'])} | {best:.3f} |"
      )
    p(
      f"\nThe decisive test: final validation loss vs the cap c_entry at lr = {res['c_lr']:g},"
      " sensitivity in c next to sensitivity in LR (AdamW's LR sensitivity:"
      f" {np.mean(arms_['adamw']['lr_sensitivity']):.3f}):\n"
    )
    p("| arm | " + " | ".join(f"c {c:g}" for c in cs) + " | c sensitivity | LR sensitivity |")
    p("| --- |" + " ---: |" * (len(cs) + 2))
    for name, r in arms_.items():
      if "c_sweep" in r:
        p(
          f"| `{name}` | "
          + " | ".join(_cell(m) for m in _med(r["c_sweep"]["final_val"]))
          + f" | {_sens_cell(r['c_sensitivity'])} | {_sens_cell(r['lr_sensitivity'])} |"
        )
    p(
      f"\nFraction of (step, group) pairs where the cap binds (c_entry ="
      f" {res['c_default_entry']:g}, mean over seeds), per LR, and in the c sweep:\n"
    )
    p(
      "| arm | "
      + " | ".join(f"lr {lr:g}" for lr in lrs)
      + " | "
      + " | ".join(f"c {c:g}" for c in cs)
      + " |"
    )
    p("| --- |" + " ---: |" * (len(lrs) + len(cs)))
    for name, r in arms_.items():
      if r["lr_sweep"]["bind_fraction"] is not None:
        b = np.mean(r["lr_sweep"]["bind_fraction"], 1).tolist()
        b += np.mean(r["c_sweep"]["bind_fraction"], 1).tolist()
        p(f"| `{name}` | " + " | ".join(f"{x:.2f}" for x in b) + " |")
    lm = res["domain"].startswith("lm")
    key = "max_attn_logit" if lm else "max_out_logit_rms"
    p(
      "\n"
      + (
        "Largest attention logit over training" if lm else "Largest output-logit RMS over training"
      )
      + " (median over seeds), and mean update RMS per entry, per LR:\n"
    )
    p("| arm | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |")
    p("| --- |" + " ---: |" * len(lrs))
    for name, r in arms_.items():
      a = np.median(np.asarray(r["lr_sweep"][key], float), 1)
      u = np.median(np.asarray(r["lr_sweep"]["mean_update_rms"], float), 1)
      p(
        f"| `{name}` | "
        + " | ".join(f"{x:.3g} / {y:.2g}" for x, y in zip(a, u, strict=True))
        + " |"
      )
    p("")
  lm_results = [r for r in data["results"] if r["domain"].startswith("lm")]
  if len(lm_results) > 1:
    out += size_table(lm_results)
  return "\n".join(out)


def size_table(results: list[dict]) -> list[str]:
  """Every arm's LR and c sensitivity, best loss and largest attention logit at the
  highest LR, one column group per transformer size (``--full``)."""
  lr_top = results[0]["lrs"][-1]
  out = [
    "#### Both transformer sizes\n",
    "Sensitivity in LR and in c (mean over seeds), best validation loss, largest attention"
    f" logit at lr = {lr_top:g} (median over seeds):\n",
  ]
  head = "| arm |"
  for res in results:
    name = res["domain"].removeprefix("lm ")
    head += f" {name}: LR sens. | c sens. | best val | attn. logit |"
  out += [head, "| --- |" + " ---: |" * (4 * len(results))]
  for arm in results[0]["arms"]:
    row = f"| `{arm}` |"
    for res in results:
      r = res["arms"][arm]
      c = f"{np.mean(r['c_sensitivity']):.3f}" if "c_sensitivity" in r else "–"
      logit = float(np.median(np.asarray(r["lr_sweep"]["max_attn_logit"][-1], float)))
      row += f" {np.mean(r['lr_sensitivity']):.3f} | {c} | {best_val(r):.3f} | {logit:.3g} |"
    out.append(row)
  out.append("")
  return out


def headline(res: dict) -> str:
  """AdamW's LR sensitivity vs each relativistic arm's in LR and in c."""
  a = res["arms"]
  parts = [f"{res['domain']}: adamw LR sens. {np.mean(a['adamw']['lr_sensitivity']):.3f}"]
  for name, r in a.items():
    if name.startswith("relativistic") and "c_sensitivity" in r:
      parts.append(
        f"{name.split(' ', 1)[1]} LR {np.mean(r['lr_sensitivity']):.3f}"
        f" / c {np.mean(r['c_sensitivity']):.3f}"
      )
  return "; ".join(parts)


# ---------------------------------------------------------------------------
# Plots.
# ---------------------------------------------------------------------------


def plot(results: list[dict], path: Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  cmap = plt.get_cmap("tab20")
  n = len(results)
  fig, axes = plt.subplots(n, 4, figsize=(26, 5.5 * n), squeeze=False)
  for row, res in zip(axes, results, strict=True):
    cap = res["cap_loss"]
    names = list(res["arms"])
    for i, name in enumerate(names):
      r = res["arms"][name]
      color, style = cmap(i % 20), "-" if name.startswith("relativistic") else "--"
      for ax, key, grid in ((row[0], "lr_sweep", res["lrs"]), (row[1], "c_sweep", res["c_entry"])):
        if key not in r:
          continue
        final = np.asarray(r[key]["final_val"], float)
        capped = np.minimum(np.where(np.isfinite(final), final, np.inf), cap)
        ax.plot(grid, capped.mean(1), style, marker="o", ms=3, color=color, label=name)
        ax.fill_between(grid, capped.min(1), capped.max(1), color=color, alpha=0.12)
      a = np.asarray(r["lr_sweep"]["max_attn_logit"], float)
      if np.isfinite(a).any():
        row[3].plot(res["lrs"], np.median(a, 1), style, marker="o", ms=3, color=color)
      else:
        o = np.asarray(r["lr_sweep"]["max_out_logit_rms"], float)
        row[3].plot(res["lrs"], np.median(o, 1), style, marker="o", ms=3, color=color)
    adam = res["arms"]["adamw"]
    adam_final = np.minimum(np.asarray(adam["lr_sweep"]["final_val"], float), cap)
    row[1].plot(
      res["c_entry"],
      np.mean(np.nan_to_num(adam_final, nan=cap), 1),
      ":k",
      lw=2,
      label="adamw vs LR (LR grid on this axis: lr/10)",
    )
    for ax, xl, t in (
      (row[0], "peak learning rate", "final val loss vs LR"),
      (
        row[1],
        f"c_entry (cap per entry) at lr = {res['c_lr']:g}",
        "final val loss vs c (the decisive test)",
      ),
    ):
      ax.axhline(cap, color="k", lw=0.8, ls=":")
      ax.set_xscale("log")
      ax.set_xlabel(xl)
      ax.set_ylabel("final validation loss (capped at ln K)")
      ax.set_title(f"{res['domain']}: {t}; mean, range over seeds")
      ax.grid(alpha=0.3)
    row[0].legend(fontsize=7)
    row[1].legend(fontsize=7)
    # Sensitivity bars: in LR (all arms) and in c (capped arms).
    x = np.arange(len(names))
    s_lr = [np.mean(res["arms"][k]["lr_sensitivity"]) for k in names]
    e_lr = [np.ptp(res["arms"][k]["lr_sensitivity"]) / 2 for k in names]
    s_c = [np.mean(res["arms"][k].get("c_sensitivity", [np.nan])) for k in names]
    e_c = [np.ptp(res["arms"][k].get("c_sensitivity", [np.nan])) / 2 for k in names]
    row[2].barh(x + 0.2, s_lr, 0.4, xerr=e_lr, label="sensitivity in LR")
    row[2].barh(x - 0.2, s_c, 0.4, xerr=e_c, label=f"sensitivity in c at lr={res['c_lr']:g}")
    row[2].set_yticks(x, names, fontsize=8)
    row[2].invert_yaxis()
    row[2].set_xlabel("sensitivity (Wortsman et al.; lower = less sensitive)")
    row[2].set_title("LR and c sensitivity (mean, half-range over seeds)")
    row[2].legend(fontsize=8)
    row[2].grid(alpha=0.3, axis="x")
    lm = res["domain"].startswith("lm")
    row[3].set_xscale("log")
    row[3].set_yscale("log")
    row[3].set_xlabel("peak learning rate")
    row[3].set_title(
      "largest attention logit over training (median over seeds)"
      if lm
      else "largest output-logit RMS over training (median over seeds)"
    )
    row[3].grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=70)
  plt.close(fig)


def plot_logit_growth(results: list[dict], path: Path, lrs=(1e-2, 1e-1, 1.0)) -> None:
  """Largest attention logit (transformer) or output-logit RMS (MLP) vs step, seed 0."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  cmap = plt.get_cmap("tab20")
  fig, axes = plt.subplots(
    len(results), len(lrs), figsize=(6 * len(lrs), 4.5 * len(results)), squeeze=False
  )
  for row, res in zip(axes, results, strict=True):
    lm = res["domain"].startswith("lm")
    key = "max_attn_logit" if lm else "out_logit_rms"
    for ax, lr in zip(row, lrs, strict=True):
      if lr not in res["lrs"]:
        ax.axis("off")
        continue
      j = res["lrs"].index(lr)
      for i, (name, r) in enumerate(res["arms"].items()):
        y = np.asarray(r["lr_curves_seed0"][key][j], float)
        style = "-" if name.startswith("relativistic") else "--"
        ax.plot(10 * np.arange(1, y.size + 1), y, style, color=cmap(i % 20), label=name)
      ax.set_yscale("log")
      ax.set_xlabel("step")
      ax.set_title(
        f"{res['domain']}, lr = {lr:g}: "
        + ("largest attention logit" if lm else "output-logit RMS")
        + " (seed 0)"
      )
      ax.grid(alpha=0.3)
    row[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=70)
  plt.close(fig)


# ---------------------------------------------------------------------------
# Step time: relativistic_adamw vs optax.adamw on the default transformer.
# ---------------------------------------------------------------------------


def step_time(args) -> None:
  """Times the jitted train step (pure JAX, params donated) and the nnx.Optimizer step."""
  domain = args_lm_domain(lm_model.stdlib_corpus(), args, val_windows=8)
  txs = {"optax.adamw": lambda: optax.adamw(1e-3, B1, B2, EPS, weight_decay=WEIGHT_DECAY)}
  for mode in relax_optax.MODES:
    txs[f"relativistic_adamw {mode}"] = lambda mode=mode: relax_optax.relativistic_adamw(
      1e-3, B1, B2, EPS, speed_limit=0.1, mode=mode, weight_decay=WEIGHT_DECAY
    )
  batch = domain.sample(jax.random.key(0))
  load0 = os.getloadavg()
  # Other sessions' benchmarks announce themselves with /work/BUSY-<name> on the shared machine.
  busy0 = sorted(p.name for p in Path("/work").glob("BUSY-*") if p.name != "BUSY-lm")
  steps, rounds = args.time_steps, args.time_rounds
  rows = {}
  for name, make in txs.items():
    model = domain.init(0, False)
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optax.chain(optax.clip_by_global_norm(1.0), make())

    def pure_step(params, opt_state, batch, tx=tx, graphdef=graphdef):
      grads = jax.grad(lambda p: domain.loss(nnx.merge(graphdef, p), batch, 0.0)[0])(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    jitted = jax.jit(pure_step, donate_argnums=(0, 1))
    opt_state = tx.init(params)
    t0 = time.perf_counter()
    params, opt_state = jax.block_until_ready(jitted(params, opt_state, batch))
    compile_s = time.perf_counter() - t0

    nnx_model = domain.init(0, False)
    optimizer = nnx.Optimizer(nnx_model, tx, wrt=nnx.Param)

    @nnx.jit
    def nnx_step(model, optimizer, batch):
      grads = nnx.grad(lambda m: domain.loss(m, batch, 0.0)[0])(model)
      optimizer.update(model, grads)

    nnx_step(nnx_model, optimizer, batch)
    rows[name] = {
      "compile_s": compile_s,
      "pure": [],
      "nnx": [],
      "state": [params, opt_state, jitted, nnx_model, optimizer, nnx_step],
    }
  for _ in range(rounds):  # interleaved rounds, so that load changes hit every arm alike
    for r in rows.values():
      params, opt_state, jitted, nnx_model, optimizer, nnx_step = r["state"]
      t0 = time.perf_counter()
      for _ in range(steps):
        params, opt_state = jitted(params, opt_state, batch)
      jax.block_until_ready(params)
      r["pure"].append((time.perf_counter() - t0) / steps)
      t0 = time.perf_counter()
      for _ in range(steps):
        nnx_step(nnx_model, optimizer, batch)
      jax.block_until_ready(nnx.state(nnx_model))
      r["nnx"].append((time.perf_counter() - t0) / steps)
      r["state"][:2] = [params, opt_state]
  load1 = os.getloadavg()
  base = rows["optax.adamw"]
  print(
    f"\nEnd-to-end train step on {domain.name} ({domain.info['batch']}x"
    f"{domain.info['seq_len']} bytes), {rounds} interleaved rounds of {steps} steps (ms: median"
    " over rounds; ratio: median over rounds of the same round's ratio to optax.adamw);"
    f" load average {load0[0]:.2f} -> {load1[0]:.2f} on {os.cpu_count()} CPUs;"
    f" other benchmarks running: {busy0 or 'none seen'}"
  )
  print(
    f"{'optimizer':<32s} {'1st call s':>10s} {'jit step ms':>11s} {'ratio':>6s}"
    f" {'nnx step ms':>11s} {'ratio':>6s}"
  )
  out = {}
  for name, r in rows.items():
    pure, nnx_ms = np.median(r["pure"]) * 1e3, np.median(r["nnx"]) * 1e3
    rp = float(np.median(np.asarray(r["pure"]) / np.asarray(base["pure"])))
    rn = float(np.median(np.asarray(r["nnx"]) / np.asarray(base["nnx"])))
    print(
      f"{name:<32s} {r['compile_s']:>10.2f} {pure:>11.3f} {rp:>6.3f} {nnx_ms:>11.3f} {rn:>6.3f}"
    )
    out[name] = {
      "compile_s": r["compile_s"],
      "jit_step_ms": pure,
      "jit_ratio": rp,
      "nnx_step_ms": nnx_ms,
      "nnx_ratio": rn,
      "jit_rounds_ms": (np.asarray(r["pure"]) * 1e3).tolist(),
      "nnx_rounds_ms": (np.asarray(r["nnx"]) * 1e3).tolist(),
    }
  worst = max((k for k in out if k != "optax.adamw"), key=lambda k: out[k]["jit_ratio"])
  print(
    f"relativistic_adamw vs optax.adamw, jitted step: worst {worst}"
    f" {out[worst]['jit_ratio']:.3f}x (goal <= 1.03x)"
  )
  args.out.parent.mkdir(parents=True, exist_ok=True)
  path = args.out.parent / (args.out.name + "_step_time.json")
  path.write_text(
    json.dumps(
      {
        "config": {
          "model": domain.info | {"corpus": None},
          "steps": steps,
          "rounds": rounds,
          "load_before": load0,
          "load_after": load1,
          "cpus": os.cpu_count(),
          "busy": busy0,
          "jax": jax.__version__,
          "optax": optax.__version__,
        },
        "results": out,
      },
      indent=1,
    )
  )
  print(f"wrote {path}")


# ---------------------------------------------------------------------------
# --spikes: induced instabilities, and the guards against them.
# ---------------------------------------------------------------------------

SPIKE_KS = (1.5, 2.0, 3.0, 5.0)
SPIKE_LAYER = "blocks/0/attn/qkv"  # the leaf that receives the injected spikes/rescale
SPIKE_BLOCK = 5  # steps per block of the smoothed training loss
SPIKE_THRESHOLD = 1.2  # a loss spike: smoothed loss above 1.2x its running minimum


class SpikeScenario(NamedTuple):
  """One induced instability (steps as fractions of the run)."""

  name: str
  lr_factor: float = 1.0  # x AdamW's best LR
  b2: float = B2
  spikes: tuple = ()  # ((fraction of the run, size), ...): one layer's gradient x size
  rescale: float = 1.0  # the layer's gradients x rescale from rescale_at on
  rescale_at: float = 0.48


SPIKE_SCENARIOS = (
  SpikeScenario("clean"),
  SpikeScenario("grad spikes x1e2, x1e4", spikes=((0.48, 1e2), (0.68, 1e4))),
  SpikeScenario("b2=0.999, layer x100", b2=0.999, rescale=100.0),
  SpikeScenario("lr x3", lr_factor=3.0),
  SpikeScenario("lr x10", lr_factor=10.0),
)


def spike_arms(c_entry: float, c_scale: float) -> dict[str, tuple[Callable, bool]]:
  """``name -> (make(learning_rate, b2), clip gradients at 1)``; every guard sits on
  AdamW *without* the recipe's gradient clip, so that it is compared alone."""
  from benchmarks.spike_guard import historical_clip  # Levanter-style hard clip

  def adam(lr, b2, *after):
    return optax.chain(optax.scale_by_adam(B1, b2, EPS), optax.scale_by_learning_rate(lr), *after)

  out = {
    "adamw (no grad clip)": (adam, False),
    "adamw + grad clip 1": (adam, True),
    "hist clip (mean+2sd, 128)": (lambda lr, b2: adam(lr, b2, historical_clip()), False),
    "stable_adamw": (
      lambda lr, b2: optax.chain(scale_by_stable_adamw(b2=b2), optax.scale_by_learning_rate(lr)),
      False,
    ),
    f"relativistic c_entry={c_entry:g}": (
      lambda lr, b2: relax_optax.relativistic_adam(
        lr, B1, b2, EPS, speed_limit=c_entry * c_scale, mode="per_param"
      ),
      False,
    ),
  }
  for k in SPIKE_KS:
    out[f"relative k={k:g}"] = (
      lambda lr, b2, k=k: relax_optax.relativistic_adam(
        lr, B1, b2, EPS, speed_limit=relax_optax.RelativeSpeedLimit(k=k), mode="per_param"
      ),
      False,
    )
  return out


def _leaf_index(params, name: str) -> int:
  paths = [
    "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]
  ]
  hits = [i for i, p in enumerate(paths) if p.startswith(name)]
  if len(hits) != 1:
    raise ValueError(f"{name!r} matches {hits} of {paths}")
  return hits[0]


def train_spikes(
  domain, make, grad_clip, graphdef, params, runs: dict, *, steps, warmup, eval_every
):
  """Trains every run (vmapped; ``runs`` holds per-run arrays): curves (runs, steps)."""
  factor = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, steps, end_value=0.0)
  idx = _leaf_index(params, SPIKE_LAYER)

  def tx_for(lr, b2):
    inner = make(lambda t: lr * factor(t), b2)
    return optax.chain(optax.clip_by_global_norm(1.0), inner) if grad_clip else inner

  def loss_fn(p, batch):
    return domain.loss(nnx.merge(graphdef, p), batch, 0.0)

  def run(params, key, r):
    tx = tx_for(r["lr"], r["b2"])

    def step(carry, t):
      params, opt_state, key = carry
      key, sub = jax.random.split(key)
      (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, domain.sample(sub))
      leaves, treedef = jax.tree.flatten(grads)
      g = leaves[idx]
      # A spike: the layer's gradient replaced by a random direction of size x its norm.
      size = jnp.sum(jnp.where(r["spike_steps"] == t, r["spike_sizes"], 0.0))
      noise = jax.random.normal(jax.random.fold_in(sub, 1), g.shape)
      spiked = noise * (size * _norm(g) / jnp.maximum(_norm(noise), 1e-30))
      g = jnp.where(size > 0, spiked, g)
      leaves[idx] = g * jnp.where(t >= r["rescale_at"], r["rescale"], 1.0)
      updates, opt_state = tx.update(jax.tree.unflatten(treedef, leaves), opt_state, params)
      decay = WEIGHT_DECAY * factor(t)
      params = jax.tree.map(lambda p, u: p + u - decay * p, params, updates)
      metrics = {
        "train_loss": aux["xent"],
        "update_norm": _norm(updates),
        "update_norm_layer": _norm(jax.tree.leaves(updates)[idx]),
        "val_loss": jax.lax.cond(
          (t + 1) % eval_every == 0,
          lambda p: loss_fn(p, domain.val_batch)[1]["xent"],
          lambda p: jnp.full((), jnp.nan),
          params,
        ),
      }
      return (params, opt_state, key), metrics

    carry = (params, tx.init(params), key)
    return jax.lax.scan(step, carry, jnp.arange(steps))[1]

  return jax.device_get(jax.jit(jax.vmap(run))(params, runs["key"], runs["r"]))


def spike_events(loss: np.ndarray, block: int = SPIKE_BLOCK, threshold: float = SPIKE_THRESHOLD):
  """Loss spikes of one run's training-loss curve.

  The loss is averaged over blocks of ``block`` steps (one batch is noisy); a spike is a
  maximal run of blocks whose mean exceeds ``threshold`` times the lowest earlier block
  mean. Returns (number of spikes, the highest ratio to the running minimum (1 if none),
  the mean length of a spike in steps: the steps to recover; the run's end if it never
  does; 0 if none). A non-finite block counts as above the threshold.
  """
  n = loss.size // block
  means = loss[: n * block].reshape(n, block).mean(1)
  means = np.where(np.isfinite(means), means, np.inf)
  run_min = np.minimum.accumulate(np.concatenate([[np.inf], means[:-1]]))
  ratio = means / run_min
  above = ratio > threshold
  starts = np.nonzero(above & ~np.concatenate([[False], above[:-1]]))[0]
  lengths = []
  for s in starts:
    e = s
    while e < n and above[e]:
      e += 1
    lengths.append((e - s) * block)
  height = float(np.max(ratio[1:])) if n > 1 else 1.0
  return len(starts), max(height, 1.0), float(np.mean(lengths)) if lengths else 0.0


def spikes(args) -> None:
  """The ``--spikes`` scenario: induced instabilities vs AdamW, clipping and the guards."""
  best = json.loads((RESULTS / "lm_stability.json").read_text())["results"][0]
  assert best["domain"].startswith("lm")
  lrs = best["lrs"]
  adam_final = np.median(np.asarray(best["arms"]["adamw"]["lr_sweep"]["final_val"], float), 1)
  best_lr = float(lrs[int(np.nanargmin(adam_final))])
  rel = best["arms"]["relativistic per_param"]
  rel_final = np.median(np.asarray(rel["c_sweep"]["final_val"], float), 1)
  best_c = float(best["c_entry"][int(np.nanargmin(rel_final))])
  domain = args_lm_domain(lm_model.stdlib_corpus(), args)
  seeds = list(range(args.seeds))
  steps = args.steps
  states = [nnx.split(domain.init(s, False), nnx.Param) for s in seeds]
  graphdef = states[0][0]
  n_params = int(sum(x.size for x in jax.tree.leaves(states[0][1])))
  c_scale = cap_scale("per_param", states[0][1])
  # Runs: (scenario, seed), scenario-major.
  rs = []
  for sc in SPIKE_SCENARIOS:
    sp = list(sc.spikes) + [(2.0, 0.0)] * (2 - len(sc.spikes))
    for _ in seeds:
      rs.append(
        {
          "lr": best_lr * sc.lr_factor,
          "b2": sc.b2,
          "spike_steps": [int(f * steps) for f, _ in sp],
          "spike_sizes": [s for _, s in sp],
          "rescale": sc.rescale,
          "rescale_at": int(sc.rescale_at * steps),
        }
      )
  r_arr = {
    k: jnp.asarray([r[k] for r in rs], jnp.int32 if "steps" in k or k.endswith("_at") else None)
    for k in rs[0]
  }
  r_arr = {k: v.astype(jnp.float32) if v.dtype == jnp.float64 else v for k, v in r_arr.items()}
  # The data order depends on the seed only: every arm and scenario sees the same batches.
  keys = jax.vmap(jax.random.key)(jnp.tile(jnp.asarray(seeds) + 1000, len(SPIKE_SCENARIOS)))
  params = jax.tree.map(lambda *xs: jnp.stack(xs * len(SPIKE_SCENARIOS)), *[s[1] for s in states])
  runs = {"key": keys, "r": r_arr}
  arm_list = spike_arms(best_c, c_scale)
  print(
    f"--spikes on {domain.name} ({n_params} parameters), {steps} steps, {len(seeds)} seeds;"
    f" AdamW's best LR {best_lr:g} and relativistic per_param's best c_entry {best_c:g}"
    f" (from {RESULTS / 'lm_stability.json'}); spikes into {SPIKE_LAYER}"
  )
  t0, load0 = time.perf_counter(), os.getloadavg()
  out = {}
  for name, (make, clip) in tqdm(arm_list.items(), unit="arm"):
    t1 = time.perf_counter()
    cv = train_spikes(
      domain,
      make,
      clip,
      graphdef,
      params,
      runs,
      steps=steps,
      warmup=args.warmup,
      eval_every=args.eval_every,
    )
    res = {"seconds": time.perf_counter() - t1, "scenarios": {}}
    for i, sc in enumerate(SPIKE_SCENARIOS):
      sl = slice(i * len(seeds), (i + 1) * len(seeds))
      tl = np.asarray(cv["train_loss"][sl], np.float64)
      ev = [spike_events(x) for x in tl]
      val = np.asarray(cv["val_loss"][sl], np.float64)[:, args.eval_every - 1 :: args.eval_every]
      # Update-norm peak: the largest global update norm in the 10 steps from the first
      # injection (0.48 of the run; a control in the scenarios without one) over the
      # median of the 20 steps before it.
      t_in = int(0.48 * steps)
      un = np.asarray(cv["update_norm"][sl], np.float64)
      peak = un[:, t_in : t_in + 10].max(1) / np.median(un[:, max(t_in - 20, 0) : t_in], 1)
      res["scenarios"][sc.name] = {
        "n_spikes": [e[0] for e in ev],
        "max_height": [e[1] for e in ev],
        "recover_steps": [e[2] for e in ev],
        "final_val": val[:, -1].tolist(),
        "update_norm_peak": peak.tolist(),
        "final_train": np.mean(tl[:, -25:], 1).tolist(),
        "curves_seed0": {
          k: np.round(np.asarray(cv[k][sl][0], np.float64), 5).tolist()
          for k in ("train_loss", "update_norm", "update_norm_layer")
        },
      }
    out[name] = res
  elapsed = time.perf_counter() - t0
  config = {
    "model": domain.info | {"corpus": None, "n_params": n_params},
    "steps": steps,
    "warmup": args.warmup,
    "seeds": len(seeds),
    "best_lr": best_lr,
    "best_c_entry": best_c,
    "c_scale": c_scale,
    "spike_layer": SPIKE_LAYER,
    "scenarios": [sc._asdict() for sc in SPIKE_SCENARIOS],
    "spike_definition": f"mean training loss over blocks of {SPIKE_BLOCK} steps above"
    f" {SPIKE_THRESHOLD}x the lowest earlier block mean",
    "seconds": elapsed,
    "load_before": load0,
    "load_after": os.getloadavg(),
    "cpus": os.cpu_count(),
    "jax": jax.__version__,
    "optax": optax.__version__,
  }
  data = {"config": config, "arms": out}
  lines = spike_table(data)
  print("\n".join(lines))
  stem = args.out.parent / (args.out.name + "_spikes")
  stem.parent.mkdir(parents=True, exist_ok=True)
  text = json.dumps(data)
  stem.with_suffix(".json").write_text(
    text.replace("NaN", "null").replace("-Infinity", "null").replace("Infinity", "null")
  )
  stem.with_suffix(".txt").write_text("\n".join(lines) + "\n")
  plot_spikes(data, stem.with_suffix(".png"))
  print(f"\nwrote {stem}.{{json,txt,png}} ({elapsed:.0f} s)")


def spike_table(data: dict) -> list[str]:
  """The --spikes table: per arm and scenario, final validation loss and loss spikes."""
  cfg, arms_ = data["config"], data["arms"]
  names = [sc["name"] for sc in cfg["scenarios"]]
  lines = [
    f"\n== --spikes: {cfg['steps']} steps, {cfg['seeds']} seeds, AdamW's best LR"
    f" {cfg['best_lr']:g}; spikes into {cfg['spike_layer']} at steps"
    f" {[int(f * cfg['steps']) for f, _ in cfg['scenarios'][1]['spikes']]}, rescale at"
    f" {int(cfg['scenarios'][2]['rescale_at'] * cfg['steps'])}",
    f"   loss spike: {cfg['spike_definition']}",
    "   cell: final val loss (mean over seeds) | loss spikes per run | highest loss ratio to"
    " the running minimum | steps to recover (mean spike length) | update-norm peak (largest"
    " global update norm in the 10 steps from the first injection over the median of the 20"
    " before; at the same step in the other scenarios)",
    "   'adamw (no grad clip)' is the recipe without its gradient clip; every guard is on"
    " that AdamW (no gradient clip either)",
  ]
  lines.append(f"{'arm':<28s}" + "".join(f" {n:>33s}" for n in names))
  for name, r in arms_.items():
    cells = []
    for n in names:
      s = r["scenarios"][n]
      f = np.asarray(s["final_val"], float)
      fv = f"{f.mean():.3f}" if np.all(np.isfinite(f)) else "diverged"
      cells.append(
        f"{fv} |{np.mean(s['n_spikes']):3.1f} |{np.mean(s['max_height']):5.2f}"
        f" |{np.mean(s['recover_steps']):4.0f} |{np.mean(s['update_norm_peak']):5.2f}"
      )
    lines.append(f"{name:<28s}" + "".join(f" {c:>33s}" for c in cells))
  ks = [n for n in arms_ if n.startswith("relative k=")]
  lines.append(
    "\n-- sensitivity to k (relative k in " + ", ".join(k[11:] for k in ks) + "):"
    " range over k of the final val loss and of the highest loss ratio; update-norm peak per k"
  )
  for n in names:
    f = [np.mean(arms_[k]["scenarios"][n]["final_val"]) for k in ks]
    h = [np.mean(arms_[k]["scenarios"][n]["max_height"]) for k in ks]
    u = [np.mean(arms_[k]["scenarios"][n]["update_norm_peak"]) for k in ks]
    lines.append(
      f"{n:<28s} final {min(f):.3f}..{max(f):.3f}   highest loss ratio {min(h):.2f}..{max(h):.2f}"
      f"   update-norm peak {' / '.join(f'{x:.2f}' for x in u)}"
    )
  sc = names[2]
  a = arms_["adamw (no grad clip)"]["scenarios"][sc]
  g = arms_["relative k=2"]["scenarios"][sc]
  lines.append(
    f"\n{sc}: update-norm peak, relative k=2 {np.mean(g['update_norm_peak']):.2f}x vs AdamW"
    f" {np.mean(a['update_norm_peak']):.2f}x; loss spikes {np.mean(g['n_spikes']):.1f} vs"
    f" {np.mean(a['n_spikes']):.1f}; final val loss {np.mean(g['final_val']):.3f} vs"
    f" {np.mean(a['final_val']):.3f}"
  )
  return lines


def plot_spikes(data: dict, path: Path) -> None:
  """Seed 0 of the spiked runs: smoothed training loss and global update norm."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  cfg = data["config"]
  shown = [
    "adamw (no grad clip)",
    "adamw + grad clip 1",
    "hist clip (mean+2sd, 128)",
    "stable_adamw",
    "relative k=2",
  ]
  scs = cfg["scenarios"][1:3]
  fig, axes = plt.subplots(2, len(scs), figsize=(7 * len(scs), 7), sharex=True, squeeze=False)
  for j, sc in enumerate(scs):
    for name in shown:
      c = data["arms"][name]["scenarios"][sc["name"]]["curves_seed0"]
      y = np.asarray(c["train_loss"], float)
      n = y.size // SPIKE_BLOCK
      smooth = y[: n * SPIKE_BLOCK].reshape(n, SPIKE_BLOCK).mean(1)
      x = SPIKE_BLOCK * (np.arange(n) + 0.5)
      axes[0, j].plot(x, smooth, lw=1.2, label=name)
      axes[1, j].plot(np.asarray(c["update_norm"], float), lw=0.8, label=name)
    marks = [f for f, _ in sc["spikes"]] or [sc["rescale_at"]]
    for f in marks:
      for ax in axes[:, j]:
        ax.axvline(f * cfg["steps"], color="grey", ls=":", lw=0.8)
    axes[0, j].set_title(f"{sc['name']} (seed 0)")
    axes[0, j].set_yscale("log")
    axes[0, j].set_ylabel(f"training loss (mean of {SPIKE_BLOCK} steps)")
    axes[1, j].set_yscale("log")
    axes[1, j].set_ylabel("global update norm")
    axes[1, j].set_xlabel("step")
    axes[0, j].grid(alpha=0.3)
    axes[1, j].grid(alpha=0.3)
  axes[0, 0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


# ---------------------------------------------------------------------------


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="a tiny grid, under a minute")
  parser.add_argument("--full", action="store_true", help="add a wider, deeper transformer")
  parser.add_argument(
    "--full-size",
    type=int,
    nargs=2,
    default=[128, 3],
    metavar=("D", "DEPTH"),
    help="width and depth of --full's second transformer (default 128 3)",
  )
  parser.add_argument(
    "--step-time",
    action="store_true",
    help="only time relativistic_adamw vs optax.adamw (1-2 minutes)",
  )
  parser.add_argument(
    "--tables", type=Path, default=None, help="only print Markdown tables from a results JSON"
  )
  parser.add_argument("--replot", action="store_true", help="with --tables: redraw its PNGs")
  parser.add_argument(
    "--spikes",
    action="store_true",
    help="induced instabilities (gradient spikes, b2 = 0.999 with a rescale, high LR) vs guards",
  )
  parser.add_argument("--domains", nargs="+", default=["lm", "digits"])
  parser.add_argument(
    "--arms", nargs="*", default=None, help="a subset of arms by name (adamw always runs)"
  )
  parser.add_argument("--lrs", type=float, nargs="+", default=LRS)
  parser.add_argument("--c-entry", type=float, nargs="+", default=C_ENTRY)
  parser.add_argument("--c-lr", type=float, default=1.0, help="learning rate of the c sweep")
  parser.add_argument(
    "--speed-limit", type=float, default=1e-3, help="c_entry of the caps in the LR sweep"
  )
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=250)
  parser.add_argument("--warmup", type=int, default=25)
  parser.add_argument("--eval-every", type=int, default=50)
  parser.add_argument("--d", type=int, default=64)
  parser.add_argument("--depth", type=int, default=2)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--seq-len", type=int, default=64)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--val-windows", type=int, default=48)
  parser.add_argument("--digits-steps", type=int, default=500)
  parser.add_argument("--digits-warmup", type=int, default=50)
  parser.add_argument("--digits-width", type=int, default=64)
  parser.add_argument("--digits-depth", type=int, default=8)
  parser.add_argument("--time-steps", type=int, default=100)
  parser.add_argument("--time-rounds", type=int, default=15)
  parser.add_argument("--out", type=Path, default=RESULTS / "lm_stability")
  args = parser.parse_args(argv)
  if args.step_time:
    step_time(args)
    return
  if args.spikes:
    if args.quick:
      args.steps, args.warmup, args.eval_every, args.seeds = 40, 4, 10, 1
      args.d, args.depth, args.heads, args.seq_len, args.batch = 16, 1, 2, 16, 4
      args.val_windows = 8
      if args.out == RESULTS / "lm_stability":
        args.out = RESULTS / "lm_stability_quick"
    spikes(args)
    return
  if args.tables:
    data = json.loads(args.tables.read_text())
    print(markdown_tables(data))
    if args.replot:
      out = args.tables.with_suffix("")
      plot(data["results"], out.with_suffix(".png"))
      plot_logit_growth(data["results"], out.parent / (out.name + "_logits.png"))
      lines = [line for res in data["results"] for line in print_tables(res, echo=False)]
      lines += ["", *[headline(res) for res in data["results"]]]
      out.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    return
  if args.quick:
    args.lrs, args.c_entry, args.seeds = [1e-2, 1.0], [1e-3, 1e-1], 2
    args.steps, args.warmup, args.eval_every = 20, 4, 10
    args.digits_steps, args.digits_warmup = 20, 4
    args.d, args.depth, args.heads, args.seq_len, args.batch = 16, 1, 2, 16, 4
    args.val_windows, args.digits_width, args.digits_depth = 8, 16, 4
    args.arms = args.arms or ["adamw", "stable_adamw", "relativistic global"]
    args.full_size = [2 * args.d, 2 * args.depth]  # --quick --full: a tiny second size
    if args.out == RESULTS / "lm_stability":
      args.out = RESULTS / "lm_stability_quick"
  seeds = list(range(args.seeds))

  corpus = lm_model.stdlib_corpus()
  sizes = [(args.d, args.depth)]
  if args.full:
    sizes.append(tuple(args.full_size))
  domains = []
  if "lm" in args.domains:
    domains += [args_lm_domain(corpus, args, d=d, depth=depth) for d, depth in sizes]
  if "digits" in args.domains:
    domains.append(digits_domain(width=args.digits_width, depth=args.digits_depth, batch=128))
  n_arms = {d.name: len(selected(d.name.split()[0], args.arms)) for d in domains}
  n_cap = {
    d.name: len([a for a in selected(d.name.split()[0], args.arms) if a.cap]) for d in domains
  }
  total = sum(
    (args.steps if d.name.startswith("lm") else args.digits_steps)
    * len(seeds)
    * (n_arms[d.name] * len(args.lrs) + n_cap[d.name] * len(args.c_entry))
    for d in domains
  )
  print(
    f"corpus: {corpus.info['files']} stdlib files, {corpus.info['train_bytes']} train /"
    f" {corpus.info['val_bytes']} validation bytes; {len(seeds)} seeds;"
    f" LRs {args.lrs}; c_entry {args.c_entry} at lr {args.c_lr:g}"
  )
  t0 = time.perf_counter()
  load0 = os.getloadavg()
  results = []
  with tqdm(total=total, unit="step", smoothing=0.05) as bar:
    for domain in domains:
      results.append(run_domain(domain, args, seeds, bar))
  elapsed = time.perf_counter() - t0
  lines = []
  for res in results:
    lines += print_tables(res)

  args.out.parent.mkdir(parents=True, exist_ok=True)
  plot(results, args.out.with_suffix(".png"))
  plot_logit_growth(results, args.out.parent / (args.out.name + "_logits.png"))
  config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
  config |= {
    "seconds": elapsed,
    "load_before": load0,
    "load_after": os.getloadavg(),
    "cpus": os.cpu_count(),
    "jax": jax.__version__,
    "optax": optax.__version__,
  }
  text = json.dumps({"config": config, "results": results})
  args.out.with_suffix(".json").write_text(
    text.replace("NaN", "null").replace("-Infinity", "null").replace("Infinity", "null")
  )
  heads = [headline(res) for res in results]
  lines += ["", *heads]
  md = markdown_tables({"config": config, "results": results})
  (args.out.parent / (args.out.name + "_tables.md")).write_text(md)
  args.out.with_suffix(".txt").write_text("\n".join(lines) + "\n")
  print(f"\nwrote {args.out.with_suffix('.png')}, .json, .txt ({elapsed:.0f} s)")
  for h in heads:
    print(h)


if __name__ == "__main__":
  main()
