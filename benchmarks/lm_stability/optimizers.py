"""The compared arms: every one an ``optax.chain`` of Optax parts or of this library.

- ``adamw``; ``adamw+qk_norm`` (qk-layernorm); ``adamw+z_loss`` (1e-4);
  ``adamw+long_warmup`` (4x the warm-up);
- ``adafactor_clip``: Adam's update clipped per tensor to RMS 1
  (``optax.clip_by_block_rms(1.0)``, Shazeer and Stern 2018);
- ``stable_adamw``: StableAdamW (Wortsman et al. 2023b), :func:`scale_by_stable_adamw`;
- ``clip_update_norm``: Adam's update (after the learning rate) clipped by global norm
  c; ``normalize_update``: ``optax.normalize_by_update_norm``, the step every global
  cap becomes at a very high learning rate;
- ``relativistic_adam`` in modes ``global``, ``per_param``, ``per_component`` (formula
  ``lorentz``) and ``per_param`` with ``formula="reference"``;
- on request (``--arms "relativistic global, scheduled c"``): ``global`` with c
  following the learning rate's warm-up and cosine decay;
- on request, the elementwise twins of ``per_component`` (the study of
  ``per_component.py``): ``relativistic per_component tanh``; ``adamw+clip``, Adam's
  update (after the learning rate) hard-capped entry by entry at c (``optax.clip``);
  ``adam_atan2``, Adam with ``a·atan2(m̂, b·sqrt(v̂))`` in place of ``m̂/(sqrt(v̂) + eps)``
  (Everett et al. 2024), each entry bounded by ``a·π/2`` times the learning rate by
  construction; ``lion`` (``optax.scale_by_lion``, b1 = 0.9, b2 = 0.99), a sign update.

Units of c. A cap on a group of n entries (n = all parameters for the global caps, the
mean tensor size for ``per_param``, 1 for ``per_component``) is set as
``c = c_entry · sqrt(n)``, so that ``c_entry`` is the RMS step per entry at which the
cap binds, in the units of Adam's learning rate (Adam moves each entry by at most about
lr; measured, by about lr/10 on average here). The c grid is the LR grid divided by 10,
over the same three decades. ``normalize_update``'s step (its global norm) is
``lr · sqrt(N) / 10``, so that its LR grid covers the same per-entry steps as the caps'
c grid.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import relax_optax
from benchmarks._common import tree_norm
from benchmarks.lm_stability.configs import B1, B2, EPS, Z_LOSS


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


def scale_by_adam_atan2(
  b1: float = B1, b2: float = B2, a: float = 1.27, b: float = 1.0
) -> optax.GradientTransformation:
  """Adam-atan2: ``a · atan2(m̂, b · sqrt(v̂))`` in place of Adam's ``m̂ / (sqrt(v̂) + eps)``.

  No epsilon; each entry is bounded by ``a·π/2`` and, where ``|m̂| << sqrt(v̂)``, equals
  ``(a/b) · m̂/sqrt(v̂)``, Adam's direction. The moments and their bias correction are
  ``optax.scale_by_adam``'s (its state). ``a = 1.27, b = 1`` are the defaults of the
  ``adam-atan2-pytorch`` implementation of the paper's rule.

  References:
    Everett et al., 2024, "Scaling Exponents Across Parameterizations and Optimizers"
    (arXiv 2407.05872).
  """
  adam = optax.scale_by_adam(b1, b2, eps=1.0)  # eps only affects the discarded direction

  def update_fn(updates, state, params=None):
    _, state = adam.update(updates, state, params)
    t = state.count.astype(jnp.float32)
    c1, c2 = 1 - b1**t, 1 - b2**t

    def direction(mu, nu):
      return a * jnp.arctan2(mu / c1, b * jnp.sqrt(nu / c2))

    return jax.tree.map(direction, state.mu, state.nu), state

  return optax.GradientTransformation(adam.init, update_fn)


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
  extra: bool = False  # not in the default set: runs only when named in --arms


def _adam(lr, *after):
  return optax.chain(optax.scale_by_adam(B1, B2, EPS), optax.scale_by_learning_rate(lr), *after)


def _relativistic(mode: str, formula: str = "lorentz"):
  return lambda lr, c: relax_optax.relativistic_adam(lr, c, B1, B2, EPS, mode=mode, formula=formula)


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
    Arm(
      "relativistic per_component tanh",
      _relativistic("per_component", "tanh"),
      cap="per_component_tanh",
      extra=True,
    ),
    Arm("adamw+clip", lambda lr, c: _adam(lr, optax.clip(c)), cap="hard_component", extra=True),
    Arm(
      "adam_atan2",
      lambda lr, c: optax.chain(scale_by_adam_atan2(), optax.scale_by_learning_rate(lr)),
      extra=True,
    ),
    Arm(
      "lion",
      lambda lr, c: optax.chain(optax.scale_by_lion(0.9, 0.99), optax.scale_by_learning_rate(lr)),
      extra=True,
    ),
  ]
  return [a for a in out if domain == "lm" or not a.qk_norm]


def selected(domain: str, names: list[str] | None, n_params: int = 1) -> list[Arm]:
  """The arms a run trains: ``adamw`` (the reference of every comparison) and ``names``
  if given, else every arm of the default set."""
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


def binding(cap: str | None, update, c) -> jax.Array:
  """Fraction of the cap's groups in which the cap binds, read off the capped update.

  The cap binds where the uncapped norm n exceeds c. For ``lorentz``,
  ``‖v‖ = n / sqrt(1 + (n/c)²)`` is increasing in n, so n > c exactly when
  ``‖v‖ > c/√2``; for ``tanh``, ``|v| = c·tanh(|u|/c)`` exceeds ``c·tanh(1)`` exactly
  when ``|u| > c``; for ``reference``, ``‖v‖ <= c/2`` below the limit and
  ``>= c·tanh(1) = 0.76c`` above, so the threshold 0.63c separates them; a hard
  clip binds when ``‖v‖ = c``. Groups: the whole update (global), each tensor
  (per_param, as a fraction of tensors), each entry (per_component, per_component_tanh,
  hard_component).
  """
  leaves = jax.tree.leaves(update)
  if cap is None:
    return jnp.full((), jnp.nan)
  if cap == "hard_global":
    return (tree_norm(update) >= c * (1 - 1e-3)).astype(jnp.float32)
  if cap == "global":
    return (tree_norm(update) > c / np.sqrt(2)).astype(jnp.float32)
  if cap in ("per_param", "per_param_reference"):
    threshold = c / np.sqrt(2) if cap == "per_param" else 0.63 * c
    return jnp.mean(jnp.stack([tree_norm(x) > threshold for x in leaves]).astype(jnp.float32))
  n = sum(x.size for x in leaves)
  threshold = {"per_component": c / np.sqrt(2), "per_component_tanh": c * np.tanh(1.0)}
  if cap == "hard_component":
    hit = [jnp.abs(x) >= c * (1 - 1e-3) for x in leaves]
  else:
    hit = [jnp.abs(x) > threshold[cap] for x in leaves]
  return sum(jnp.sum(h) for h in hit).astype(jnp.float32) / n
