"""The study's two domains: what a training run needs besides the optimizer.

- Byte-level language modelling on the Python standard library's own ``.py`` sources,
  which every Python installation has on disk: sorted by path, test packages and
  ``site-packages`` excluded, split into training and validation by file (every
  ``val_every``-th file is validation), bytes joined with a NUL separator. Training
  batches are random windows of ``seq_len + 1`` bytes; validation is a fixed set of
  windows.
- scikit-learn's bundled digits (``benchmarks._common.digits``), 500 images held out
  for validation, with a deep ReLU MLP without normalisation.
"""

from __future__ import annotations

import hashlib
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks._common import MLP, digits
from benchmarks.lm_stability import models
from benchmarks.lm_stability.configs import Config

SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


class Corpus(NamedTuple):
  """Training and validation bytes (uint8) and where they came from."""

  train: np.ndarray
  val: np.ndarray
  info: dict


def stdlib_corpus(val_every: int = 10, root: str | None = None) -> Corpus:
  """The standard library's ``.py`` files, split by file (every ``val_every``-th
  file, in sorted order, is validation)."""
  base = Path(root or sysconfig.get_paths()["stdlib"])
  files = sorted(
    f
    for f in base.rglob("*.py")
    if not SKIP_DIRS & set(f.relative_to(base).parts[:-1]) and not f.name.startswith("test_")
  )
  parts: tuple[list[bytes], list[bytes]] = ([], [])
  for i, f in enumerate(files):
    parts[i % val_every == val_every - 1].append(f.read_bytes())
  train, val = (np.frombuffer(b"\0".join(p), np.uint8) for p in parts)
  digest = hashlib.sha256(train.tobytes() + val.tobytes()).hexdigest()[:16]
  info = {
    "root": str(base),
    "files": len(files),
    "train_bytes": int(train.size),
    "val_bytes": int(val.size),
    "sha256_16": digest,
  }
  return Corpus(train, val, info)


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
  corpus: Corpus,
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
    total, xent, log_z = models.lm_loss(logits, xy[1], z_loss)
    rms = jnp.sqrt(jnp.mean(jnp.square(jax.lax.stop_gradient(logits))))
    return total, {
      "xent": xent,
      "max_attn_logit": max_attn,
      "out_logit_rms": rms,
      "log_z": jax.lax.stop_gradient(log_z),
    }

  def init(seed, qk_norm):
    return models.Transformer(
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
    float(np.log(models.VOCAB)),
    info,
  )


def config_lm_domain(
  corpus: Corpus,
  config: Config,
  *,
  d: int | None = None,
  depth: int | None = None,
  val_windows: int | None = None,
) -> Domain:
  """:func:`lm_domain` with the config's shape; ``d``, ``depth`` and ``val_windows``
  override it."""
  return lm_domain(
    corpus,
    d=config.d if d is None else d,
    depth=config.depth if depth is None else depth,
    heads=config.heads,
    seq_len=config.seq_len,
    batch=config.batch,
    val_windows=config.val_windows if val_windows is None else val_windows,
  )


def digits_domain(*, width: int, depth: int, batch: int) -> Domain:
  """scikit-learn's ``load_digits``: 1,797 8x8 images, 10 classes; 500 for validation."""
  x, y = digits(0)
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
