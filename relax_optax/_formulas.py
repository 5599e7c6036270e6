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
  small = q < _TANH_SERIES_MAX
  rho = jnp.sqrt(jnp.where(small, 1, q))
  tanh_ratio = jnp.where(small, 1 - q / 3 + (2 / 15) * q * q, jnp.tanh(rho) / rho)
  if formula == "tanh":
    return tanh_ratio
  if formula == "reference":
    # relativistic-adam 1.0.0: u · sqrt(1 - (n/c)²) below the limit and
    # u · tanh(n/c) / (n/c) at or above it (discontinuous at n = c).
    below = q < 1
    return jnp.where(below, jnp.sqrt(1 - jnp.where(below, q, 0)), tanh_ratio)
  raise ValueError(f"formula must be one of {FORMULAS}, got {formula!r}.")
