"""Adam's update recomputed from its new moments, for the group norms only.

``relativistic_adam`` is ``optax.chain(adam, scale_by_learning_rate,
scale_by_relativistic)``. In that chain the update ``u`` feeds both the group
norm and the step, and XLA does not duplicate Adam's division for two
consumers, so it writes ``u`` to memory (a scratch buffer as large as the
parameters; on CPU the chain's step costs 3-6x Adam's, measured by
``benchmarks/step_overhead.py``). Here the norms get their own expression of
``u``, algebraically equal to Optax's and written differently:

  ``u = ρ · n / (sqrt(d·ν + r) + e)``

with the scalars ``ρ, d, r, e`` folded out of the bias corrections, ``n`` the
first moment (Nesterov: a combination of it and the gradient) and ``ν`` the
second moment (AMSGrad: its running maximum). ``u`` itself, Optax's own
expression, is then read once, by the step, and fuses into the parameter
update: the step is Adam's passes plus one reduction over the moments.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from relax_optax._groups import NormSource, cast, isolate
from relax_optax._validation import concrete_float


class AdamSpec(NamedTuple):
  """Which Adam produced the moments, and its hyperparameters.

  ``kind`` is ``"adam"`` (``optax.scale_by_adam``), ``"amsgrad"``
  (``optax.scale_by_amsgrad``) or ``"step_size"`` (relativistic-adam's bias
  correction of the step size, with or without AMSGrad).
  """

  kind: str
  b1: Any
  b2: Any
  eps: Any
  eps_root: Any
  nesterov: bool
  amsgrad: bool


def _inverse_correction(decay: Any, count: jax.Array) -> jax.Array:
  """``1 / (1 - decay^count)``, rounded exactly as Optax's bias correction.

  ``1 - b^t`` loses digits to cancellation, so a recomputation that rounded
  ``b^t`` differently would move the norm by up to 1e-5 early in training.
  """
  return optax.tree.bias_correction(jnp.ones((), jnp.float32), decay, count)


# Leaves from this many entries (128 KiB in float32) get their norm's scalars
# behind a barrier (_groups.isolate). What the barrier saves grows with the
# leaf (the norms' reduction over 8 leaves, benchmarks/step_overhead.py's
# shared_scalars(shape=...): 1.09x on 0.04 ms at 64 x 64, 1.3x at 256 x 256,
# 1.55x at 1024 x 1024; the whole step at 1e7 parameters in 256 leaves of
# 39k entries: 1.57x optax.adam with it, 1.67x without), while its compile
# time is paid per leaf whatever the size: below this size it is not worth it.
ISOLATE_MIN_SIZE = 2**15


def _is_python_zero(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and x == 0


def _wide(x: jax.Array) -> jax.Array:
  """``x`` in at least float32 (complex stays complex)."""
  return cast(x, jnp.promote_types(x.dtype, jnp.float32))


def _one_minus_power(b: jax.typing.ArrayLike, t: jax.Array) -> jax.Array:
  """``1 - b**t`` in float32 without cancellation, for ``b`` in [0, 1), ``t >= 1``.

  ``1 - b**t`` with ``b`` rounded to float32 cancels: measured over
  ``t <= 20000`` it is off by 2e-5 (relative) for ``b = 0.999`` and 1.5e-3 for
  ``b = 0.99999``; ``-expm1(t·log b)``, with ``log b`` taken in float64 when
  ``b`` is a Python number, stays within 4e-7. ``log 0 = -inf`` gives 1.
  """
  x = concrete_float(b)
  if x is None:
    log_b = jnp.log(jnp.asarray(b, jnp.float32))
  else:
    log_b = jnp.float32(math.log(x) if x > 0 else -math.inf)
  return -jnp.expm1(t * log_b)


def _affine(v: jax.Array, d: Any, r: Any) -> jax.Array:
  """``d·v + r``, leaving out a Python 1 or 0 (fewer instructions per leaf:
  XLA keeps ``0·x`` and ``x + 0·y``, which are NaN for infinite ``x``)."""
  if not (isinstance(d, float) and d == 1.0):
    v = d * v
  if not (isinstance(r, (int, float)) and r == 0):
    v = v + r
  return v


def step_size_correction(
  b1: jax.typing.ArrayLike, b2: jax.typing.ArrayLike, count: jax.Array
) -> jax.Array:
  """``sqrt(1 - b2^t) / (1 - b1^t)`` at the incremented count ``t``."""
  t = count.astype(jnp.float32)
  return jnp.sqrt(_one_minus_power(b2, t)) / _one_minus_power(b1, t)


def norm_sources(
  spec: AdamSpec, grads: list[jax.Array], state: Any, scale: jax.Array
) -> list[NormSource] | None:
  """``scale · u`` leaf by leaf, from Adam's new state; ``None`` if not covered.

  Args:
    spec: what computed the moments.
    grads: the gradients Adam received, as array leaves.
    state: Adam's new state (``ScaleByAdamState`` or ``ScaleByAmsgradState``).
    scale: the scalar the learning rate multiplied ``u`` by (``-lr``).

  Returns:
    One :data:`NormSource` per leaf of ``grads``, or ``None`` when the state's
    leaves do not line up with ``grads``.
  """
  mus = jax.tree.leaves(state.mu)
  nus = jax.tree.leaves(state.nu_max if spec.amsgrad else state.nu)
  if not (len(mus) == len(nus) == len(grads)) or any(
    m.shape != g.shape for m, g in zip(mus, grads, strict=True)
  ):
    return None
  b1, b2, eps, eps_root = spec.b1, spec.b2, spec.eps, spec.eps_root
  count = state.count
  alpha = beta = None
  if spec.kind == "adam":
    # m̂ / (sqrt(ν̂ + r) + e) with m̂ = m·i1, ν̂ = ν·i2 (i = 1/(1 - b^t))
    #   = (i1/sqrt(i2)) · m / (sqrt(ν + r/i2) + e/sqrt(i2)).
    i1, i2 = _inverse_correction(b1, count), _inverse_correction(b2, count)
    root_i2 = jnp.sqrt(i2)
    r = 0 if _is_python_zero(eps_root) else eps_root / i2
    rho, d, e = i1 / root_i2, 1.0, eps / root_i2
    if spec.nesterov:
      # m̂ = b1·m·i1(t+1) + (1 - b1)·g·i1(t).
      alpha = b1 * _inverse_correction(b1, optax.safe_increment(count))
      beta = (1 - b1) * i1
      rho = 1 / root_i2
  else:
    # "amsgrad": m̂ / (sqrt(max ν̂ + r) + e); "step_size": k · m / (sqrt(ν + r) + e).
    # Optax's own expression holds sqrt(ν + r) too, and XLA would merge the
    # two into one buffer-backed value: scaling ν by 4 and e by 2 (exact in
    # floating point) keeps the expressions apart and the values equal.
    k = (
      _inverse_correction(b1, count)
      if spec.kind == "amsgrad"
      else (step_size_correction(b1, b2, count))
    )
    r = 0 if _is_python_zero(eps_root) else 4 * eps_root
    rho, d, e = 2 * k, 4.0, 2 * eps
  scalars = {
    "factor": jnp.asarray(rho * scale, jnp.float32),
    "e": jnp.asarray(e, jnp.float32),
    **({} if _is_python_zero(r) else {"r": jnp.asarray(r, jnp.float32)}),
    **({} if alpha is None else {"alpha": alpha, "beta": beta}),
  }

  big = jnp.finfo(jnp.float32).max
  ks: dict[int, tuple[jax.Array, jax.Array]] = {}

  def k_for(inv_c: jax.Array) -> jax.Array:
    """``ρ·(-lr)/c``, once per distinct limit (one object for a shared limit).

    Clipped to the largest float: a ``k`` that overflows means every non-zero
    entry is far beyond the limit (the bound clamps it), and a finite ``k``
    keeps ``0·k = 0`` for zero moments.
    """
    if id(inv_c) not in ks:
      ks[id(inv_c)] = (inv_c, jnp.clip(scalars["factor"] * inv_c, -big, big))
    return ks[id(inv_c)][1]

  def source(m: jax.Array, v: jax.Array, g: jax.Array) -> NormSource:
    def in_units_of_c(inv_c: jax.Array, bound: jax.Array) -> tuple[jax.Array, jax.Array]:
      x = {**scalars, "k": k_for(inv_c), "bound": bound}
      m_, v_, g_ = m, v, g
      if m.size >= ISOLATE_MIN_SIZE:
        # Its own barrier around every scalar the reduction reads and the
        # arrays it reads them with (see _groups.isolate).
        x, m_, v_, g_ = isolate((x, m, v, g))
      n = _wide(m_)
      if "alpha" in x:
        n = x["alpha"] * n + x["beta"] * _wide(g_)
      return x["k"] * n / (jnp.sqrt(_affine(_wide(v_), d, x.get("r", 0))) + x["e"]), x["bound"]

    return in_units_of_c

  return [source(m, v, g) for m, v, g in zip(mus, nus, grads, strict=True)]
