"""The small decoder-only transformer of the study, and its loss.

The model follows Wortsman et al. (2023), "Small-scale proxies for large-scale
Transformer training instabilities": pre-LayerNorm, no biases, causal
self-attention, learned positional embeddings, an untied output projection,
and two optional interventions, qk-layernorm (a LayerNorm on the queries and
keys of each head) and the z-loss (``1e-4 · log² Z`` on the output softmax).
The digits domain uses ``benchmarks._common.MLP``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

VOCAB = 256  # bytes


class Attention(nnx.Module):
  """Causal multi-head self-attention without biases; optional qk-layernorm."""

  def __init__(self, d: int, heads: int, *, qk_norm: bool, rngs: nnx.Rngs):
    self.heads = heads
    self.qkv = nnx.Linear(d, 3 * d, use_bias=False, rngs=rngs)
    self.out = nnx.Linear(d, d, use_bias=False, rngs=rngs)
    head_dim = d // heads
    self.q_norm = nnx.LayerNorm(head_dim, use_bias=False, rngs=rngs) if qk_norm else None
    self.k_norm = nnx.LayerNorm(head_dim, use_bias=False, rngs=rngs) if qk_norm else None

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    b, t, d = x.shape
    q, k, v = jnp.split(self.qkv(x).reshape(b, t, 3 * self.heads, d // self.heads), 3, axis=2)
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    logits = jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(d // self.heads).astype(np.float32)
    causal = jnp.tril(jnp.ones((t, t), bool))[None, None]
    # The largest attention logit that the softmax sees (Wortsman et al.'s
    # "attention logit growth"); masked entries are excluded.
    max_logit = jnp.max(jnp.where(causal, jax.lax.stop_gradient(logits), -jnp.inf))
    logits = jnp.where(causal, logits, jnp.finfo(logits.dtype).min)
    y = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(logits, axis=-1), v)
    return self.out(y.reshape(b, t, d)), max_logit


class Block(nnx.Module):
  """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

  def __init__(self, d: int, heads: int, *, qk_norm: bool, rngs: nnx.Rngs):
    self.ln1 = nnx.LayerNorm(d, use_bias=False, rngs=rngs)
    self.attn = Attention(d, heads, qk_norm=qk_norm, rngs=rngs)
    self.ln2 = nnx.LayerNorm(d, use_bias=False, rngs=rngs)
    self.fc1 = nnx.Linear(d, 4 * d, use_bias=False, rngs=rngs)
    self.fc2 = nnx.Linear(4 * d, d, use_bias=False, rngs=rngs)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    a, max_logit = self.attn(self.ln1(x))
    x = x + a
    return x + self.fc2(jax.nn.gelu(self.fc1(self.ln2(x)))), max_logit


class Transformer(nnx.Module):
  """A byte-level decoder-only transformer; returns (logits, max attention logit)."""

  def __init__(
    self, *, d: int, depth: int, heads: int, seq_len: int, qk_norm: bool = False, rngs: nnx.Rngs
  ):
    self.embed = nnx.Embed(VOCAB, d, rngs=rngs)
    self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (seq_len, d)))
    self.blocks = nnx.List([Block(d, heads, qk_norm=qk_norm, rngs=rngs) for _ in range(depth)])
    self.ln_f = nnx.LayerNorm(d, use_bias=False, rngs=rngs)
    self.unembed = nnx.Linear(d, VOCAB, use_bias=False, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = self.embed(tokens) + self.pos[: tokens.shape[1]][None]
    max_logits = []
    for block in self.blocks:
      x, m = block(x)
      max_logits.append(m)
    return self.unembed(self.ln_f(x)), jnp.max(jnp.stack(max_logits))


def lm_loss(logits: jax.Array, targets: jax.Array, z_loss: float = 0.0):
  """Mean next-byte cross-entropy (nats), plus ``z_loss · mean(log² Z)``.

  Returns (loss, cross-entropy, mean log Z).
  """
  log_z = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  xent = jnp.mean(log_z - picked)
  return xent + z_loss * jnp.mean(jnp.square(log_z)), xent, jnp.mean(log_z)
