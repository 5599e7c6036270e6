"""``scale_by_relativistic``: the relativistic scaling as an Optax transform."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from relax_optax._formulas import Formula
from relax_optax._groups import AxisName, Mode, check_mode_and_formula, scale_tree
from relax_optax._validation import check_scalar_or_schedule


class ScaleByRelativisticState(NamedTuple):
  """State of :func:`scale_by_relativistic` when the speed limit is a schedule."""

  count: jax.Array  # shape=(), dtype=jnp.int32.


def scale_by_relativistic(
    speed_limit: optax.ScalarOrSchedule = 0.1,
    *,
    mode: Mode = "per_param",
    formula: Formula = "lorentz",
    axis_name: AxisName | None = None,
) -> optax.GradientTransformation:
  """Limits the speed of updates: ``v = u · f((‖u‖/c)²)``, ``‖v‖ < c``.

  Applies :func:`relax_optax.relativistic_scale` to the incoming updates. Place
  it after the learning rate, so that the speed limit ``c`` is in parameter
  units (the scaling is odd, ``v(-u) = -v(u)``, so the sign flip of
  ``optax.scale_by_learning_rate`` may come before it)::

    optax.chain(
        optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8),
        optax.scale_by_learning_rate(1e-3),
        relax_optax.scale_by_relativistic(0.1, mode="per_param"),
    )

  which computes what :func:`relax_optax.relativistic_adam` computes (up to
  float32 rounding). With the default ``formula="lorentz"``,
  ``v = u / sqrt(1 + (‖u‖/c)²)``: updates much smaller than ``c`` pass almost
  unchanged (relative change at most ``(‖u‖/c)²/2``), large ones saturate
  smoothly at ``c``.

  Cost: for ``"global"`` and ``"per_param"`` the update is read twice (for
  the norm, then for the step), so after a producer such as Adam's division
  XLA writes it to memory: on CPU such a chain's step costs several times
  ``optax.adam``'s at 1e7 parameters. :func:`relax_optax.relativistic_adam`
  takes the norm from Adam's moments instead and avoids that
  (``benchmarks/step_overhead.py``). ``"per_component"`` is one fused pass.

  Args:
    speed_limit: the speed limit ``c > 0`` (parameter units; ``inf`` for
      none), or an Optax schedule of the step count giving it (then the state
      counts steps).
    mode: the group over which ``‖u‖`` is taken: ``"global"`` (all updates
      together), ``"per_param"`` (each leaf) or ``"per_component"`` (each
      element).
    formula: ``"lorentz"`` (default), ``"tanh"`` or ``"reference"`` (the
      exact, discontinuous formula of relativistic-adam 1.0.0).
    axis_name: inside ``shard_map`` / ``pmap`` with updates sharded over this
      axis, the group norms are summed across it (see
      :func:`relax_optax.relativistic_scale`); ``None`` under plain ``jit``.

  Returns:
    An ``optax.GradientTransformation``. Its state is ``optax.EmptyState()``
    for a constant speed limit and a :class:`ScaleByRelativisticState` step
    count for a schedule.

  References:
    relativistic-adam 1.0.0 (PyPI), ``RelativisticAdam``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import relax_optax
    >>> tx = optax.chain(
    ...     optax.scale_by_adam(),
    ...     optax.scale_by_learning_rate(1.0),
    ...     relax_optax.scale_by_relativistic(0.1),
    ... )
    >>> params = {"w": jnp.ones(3)}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.full(3, 1e3)}, state, params)
    >>> float(jnp.linalg.norm(updates["w"])) < 0.1
    True
  """
  check_mode_and_formula(mode, formula)
  check_scalar_or_schedule("speed_limit", speed_limit, lower=0.0, lower_open=True, allow_inf=True)
  return _scale_by_relativistic(speed_limit, mode, formula, axis_name)


def _scale_by_relativistic(
    speed_limit: optax.ScalarOrSchedule,
    mode: str,
    formula: str,
    axis_name: AxisName | None,
) -> optax.GradientTransformation:
  """:func:`scale_by_relativistic` without validation (for the recipes)."""

  def init_fn(params: optax.Params) -> ScaleByRelativisticState | optax.EmptyState:
    del params
    if callable(speed_limit):
      return ScaleByRelativisticState(count=jnp.zeros([], jnp.int32))
    return optax.EmptyState()

  def update_fn(updates, state, params=None, *, norm_sources=None):
    del params
    if callable(speed_limit):
      c = speed_limit(state.count)
      state = ScaleByRelativisticState(count=optax.safe_int32_increment(state.count))
    else:
      c = speed_limit
    updates = scale_tree(updates, c, mode, formula, axis_name, norm_sources)
    return updates, state

  return optax.GradientTransformation(init_fn, update_fn)
