"""Schedules of the speed limit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from relax_optax._validation import check_int, check_scalar_or_schedule


def speed_limit_warmup(
    speed_limit: optax.ScalarOrSchedule, warmup_steps: jax.typing.ArrayLike
) -> optax.Schedule:
  """The warm-up of relativistic-adam's ``adaptive_speed``: ``c·min(1, t/w)``.

  The step ``t`` is counted from 1 (the schedule's count 0 is step 1), as the
  reference does, so the first step's limit is ``c / w``, never 0.

  Args:
    speed_limit: the full speed limit ``c > 0``, or a schedule ``c(t)`` (then
      the warm-up multiplies it: ``c(t)·min(1, t/w)``).
    warmup_steps: ``w``, an integer number of steps to reach ``c``; ``w <= 0``
      means no warm-up (the constant ``c``). May be traced (as
      ``optax.inject_hyperparams`` passes it).

  Returns:
    An ``optax.Schedule`` mapping the step count to the speed limit.

  References:
    relativistic-adam 1.0.0 (PyPI), ``RelativisticAdam._get_adaptive_speed_limit``.

  Examples:
    >>> import relax_optax
    >>> schedule = relax_optax.speed_limit_warmup(0.5, warmup_steps=4)
    >>> [float(schedule(count)) for count in range(5)]
    [0.125, 0.25, 0.375, 0.5, 0.5]
  """
  check_scalar_or_schedule("speed_limit", speed_limit, lower=0.0, lower_open=True, allow_inf=True)
  check_int("warmup_steps", warmup_steps)

  def schedule(count: jax.typing.ArrayLike) -> jax.Array:
    c = speed_limit(count) if callable(speed_limit) else speed_limit
    t = jnp.asarray(count, jnp.float32) + 1
    w = jnp.asarray(warmup_steps, jnp.float32)
    ramp = jnp.where(w > 0, jnp.minimum(1.0, t / jnp.maximum(w, 1)), 1.0)
    return c * ramp

  return schedule
