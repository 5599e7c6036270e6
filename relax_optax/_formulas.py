"""The speed factor: ``v = u · f(q)`` with ``q = (‖u‖/c)²``, for each formula.

This is the only place where the formulas are written; modes only decide over
which group of entries ``‖u‖`` is taken (:mod:`relax_optax._groups`).
"""

from __future__ import annotations

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
  one, zero = jnp.ones_like(q), jnp.zeros_like(q)
  if formula == "tanh":
    closed = q < _TANH_SERIES_MAX
    num_closed = 1 - q / 3 + (2 / 15) * q * q  # tanh(ρ)/ρ
  else:
    # relativistic-adam 1.0.0: u · sqrt(1 - (n/c)²) below the limit and
    # u · tanh(n/c) / (n/c) at or above it (discontinuous at n = c).
    closed = q < 1
    num_closed = jnp.sqrt(1 - jax.lax.select(closed, q, zero))
  rho = jnp.sqrt(jax.lax.select(closed, one, q))
  return jax.lax.select(closed, num_closed, jnp.tanh(rho)) / rho
