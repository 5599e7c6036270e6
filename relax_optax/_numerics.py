"""Scalar numerics shared by the transformations."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from relax_optax._validation import concrete_float


def one_minus_power(b: jax.typing.ArrayLike, t: jax.Array) -> jax.Array:
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
