"""The speed factor: ``v = u · f(q)`` with ``q = (‖u‖/c)²``, for each formula.

This is the only place where the formulas are written; modes only decide over
which group of entries ``‖u‖`` is taken (:mod:`relax_optax._groups`).
"""

from __future__ import annotations

import math
import typing
from typing import Literal

import jax
import jax.numpy as jnp

Formula = Literal["lorentz", "tanh", "reference"]
FORMULAS: tuple[str, ...] = typing.get_args(Formula)

# Below this q, tanh(ρ)/ρ is evaluated by its Taylor series 1 - q/3 + 2q²/15
# (truncation error 17q³/315 < 6e-11), which keeps the factor and its
# gradient finite at q = 0.
_TANH_SERIES_MAX = 1e-3


def speed_factor(q: jax.Array, formula: str) -> jax.Array:
  """The factor ``f`` with ``v = u · f``, as a function of ``q = (‖u‖/c)²``.

  ============  ====================================  ==================================
  formula       f(q), ρ = sqrt(q)                     properties
  ============  ====================================  ==================================
  lorentz       1 / sqrt(1 + q)                       smooth, ‖v‖ = c·ρ/sqrt(1+ρ²) < c
  tanh          tanh(ρ) / ρ                           smooth, saturates faster
  reference     sqrt(1 - q) if ρ < 1, else tanh(ρ)/ρ  relativistic-adam 1.0.0; jumps at 1
  ============  ====================================  ==================================

  Args:
    q: the squared group norm in units of the speed limit: finite and
      non-negative, or NaN (which gives NaN). Callers clamp the entries so
      that ``q`` cannot overflow (:mod:`relax_optax._groups`).
    formula: one of :data:`FORMULAS`.

  Returns:
    ``f``, of ``q``'s shape and dtype. Every branch is evaluated where it is
    finite, so ``f`` and its gradient have no NaN for finite ``q``,
    including ``q = 0``.
  """
  if formula == "lorentz":
    # v = u / sqrt(1 + (n/c)²) = u · c / hypot(c, n).
    return jax.lax.rsqrt(1 + q)
  if formula not in FORMULAS:
    raise ValueError(f"formula must be one of {FORMULAS}, got {formula!r}.")
  # f = num / ρ', with ρ' = 1 where a closed form replaces the ratio. The
  # division comes last on purpose: XLA does not copy an expensive operation
  # into each consumer's fusion, but it would copy a final select, and with
  # it the whole cheap computation of q (in "global" mode, a sum over every
  # leaf) into every leaf's fusion, which makes the compiled step grow as n².
  # lax.select, not jnp.where: the same operation without a nested jit per
  # leaf (tracing and lowering time at thousands of leaves).
  if formula == "tanh":
    closed = q < _TANH_SERIES_MAX
    num_closed = 1 - q / 3 + (2 / 15) * q * q  # tanh(ρ)/ρ
  else:
    # relativistic-adam 1.0.0: u · sqrt(1 - (n/c)²) below the limit and
    # u · tanh(n/c) / (n/c) at or above it (discontinuous at n = c).
    closed = q < 1
    num_closed = jnp.sqrt(1 - jax.lax.select(closed, q, jnp.zeros_like(q)))
  rho = jnp.sqrt(jax.lax.select(closed, jnp.ones_like(q), q))
  return jax.lax.select(closed, num_closed, jnp.tanh(rho)) / rho


def scale_entries(
  z: jax.Array, inv_c: jax.Array, finite_c: jax.Array, formula: str, max_units: float
) -> jax.Array:
  """``z · f(|z/c|²)``: every entry its own group (``mode="per_component"``).

  Equal to ``z * speed_factor(|z/c|², formula)`` up to rounding, written per
  entry for real ``z``: with ``n = |z|`` and ``t = z/c``, ``tanh``'s
  ``z·c·tanh(n/c)/n`` is ``c·tanh(t)``, and ``reference`` is ``z·sqrt(1 - t²)``
  below the limit and ``c·tanh(t)`` at or above it. That is a third of the
  operations per entry (no square root, series or division for ``tanh``),
  which is what ``per_component`` compiles and runs: the factor is evaluated
  on every entry, not once per group. Complex entries (the modulus decides)
  and ``lorentz`` (already a few operations) use :func:`speed_factor`.

  Numerics: ``|t|²`` is taken as ``min(|t|, max_units)²``. The ``min`` changes
  no value (the entries are clamped to ``max_units·c``) but keeps XLA from
  rewriting ``(z·k)²`` as ``z²·k²``, where ``k² = 1/c²`` overflows for
  ``c < 1e-19`` (NaN for ``z = 0``) and underflows for ``c > 1e19`` (no
  scaling at all).

  Args:
    z: the clamped entries (``|z| <= max_units·c``), in a compute dtype.
    inv_c: ``1/c``, a scalar: 0 for ``c = inf`` (then ``v = z``).
    finite_c: ``c``, a scalar, or 1 where ``c`` is infinite (so that the
      branch not taken stays finite, and with it the gradient).
    formula: one of :data:`FORMULAS`.
    max_units: the clamp bound in units of ``c``.

  Returns:
    ``v``, of ``z``'s shape and dtype.
  """
  if formula not in FORMULAS:
    raise ValueError(f"formula must be one of {FORMULAS}, got {formula!r}.")

  def square_units(x: jax.Array) -> jax.Array:  # min(|x/c|, B)², real x
    return jnp.square(jnp.minimum(jnp.abs(x * inv_c), max_units))

  if jnp.iscomplexobj(z):
    return z * speed_factor(square_units(z.real) + square_units(z.imag), formula)
  if formula == "lorentz":
    return z * speed_factor(square_units(z), formula)
  t = z * inv_c
  beyond = jnp.tanh(t) * finite_c
  if formula == "tanh":
    # c·tanh(t) = z to rounding where t² / 3 < eps / 2; taking z there also
    # keeps entries whose t is subnormal (flushed to 0 on XLA:CPU) and gives
    # v = z for c = inf (t = 0).
    small = math.sqrt(jnp.finfo(z.dtype).eps)
    return jax.lax.select(jnp.abs(t) < small, z, beyond)
  q = square_units(z)
  closed = q < 1  # c = inf: t = 0, so v = z here
  below = z * jnp.sqrt(1 - jax.lax.select(closed, q, jnp.zeros_like(q)))
  return jax.lax.select(closed, below, beyond)
