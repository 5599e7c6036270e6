"""``scale_by_relativistic``: the relativistic scaling as an Optax transform."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from relax_optax._formulas import Formula
from relax_optax._groups import (
  AxisName,
  Mode,
  check_mode_and_formula,
  check_speed_limit,
  scale_tree,
)


class ScaleByRelativisticState(NamedTuple):
  """State of :func:`scale_by_relativistic` when the speed limit is a schedule."""

  count: jax.Array  # shape=(), dtype=jnp.int32.


def scale_by_relativistic(
  speed_limit: optax.ScalarOrSchedule = 0.1,
  *,
  mode: Mode = "per_param",
  formula: Formula = "lorentz",
  axis_name: AxisName | None = None,
) -> optax.GradientTransformationExtraArgs:
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

  which is :func:`relax_optax.relativistic_adam`. With the default ``formula="lorentz"``,
  ``v = u / sqrt(1 + (‖u‖/c)²)``: updates much smaller than ``c`` pass almost
  unchanged (relative change at most ``(‖u‖/c)²/2``), large ones saturate
  smoothly at ``c``.

  Cost: for ``"global"`` and ``"per_param"`` the update is read twice (for
  the norm, then for the step), so after a producer such as Adam's division
  XLA writes it to memory: on CPU such a chain's step costs several times
  ``optax.adam``'s when the leaves are large (millions of entries).
  :func:`relax_optax.relativistic_adam` computes the same chain and, on CPU
  only, recomputes Adam's update for the norm instead
  (``benchmarks/step_overhead.py``). ``"per_component"`` is one fused pass.

  Args:
    speed_limit: the speed limit ``c >= 0`` (parameter units; ``inf`` for
      none, ``0`` stops every update), or an Optax schedule of the step count
      giving it (then the state counts steps).
    mode: the group over which ``‖u‖`` is taken: ``"global"`` (all updates
      together), ``"per_param"`` (each leaf) or ``"per_component"`` (each
      element).
    formula: ``"lorentz"`` (default), ``"tanh"`` or ``"reference"`` (the
      exact, discontinuous formula of relativistic-adam 1.0.0).
    axis_name: inside ``shard_map`` / ``pmap`` with updates sharded over this
      axis, the group norms are summed across it (see
      :func:`relax_optax.relativistic_scale`); ``None`` under plain ``jit``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its state is ``optax.EmptyState()``
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
  check_speed_limit(speed_limit)
  return limit_transform(scaling_limit(speed_limit, mode, formula, axis_name))


class Limit(NamedTuple):
  """A speed limit as the recipes use it: ``init`` and an ``update`` that may be
  given a :data:`~relax_optax._groups.Recompute` of the incoming updates."""

  init: Callable[[optax.Params], optax.OptState]
  update: Callable[..., tuple[optax.Updates, optax.OptState]]  # (updates, state, recompute)


def limit_transform(limit: Limit) -> optax.GradientTransformationExtraArgs:
  """The public transformation of a :class:`Limit` (extra arguments are ignored)."""

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    return limit.update(updates, state, None)

  return optax.GradientTransformationExtraArgs(limit.init, update_fn)


def scaling_limit(
  speed_limit: optax.ScalarOrSchedule,
  mode: str,
  formula: str,
  axis_name: AxisName | None,
) -> Limit:
  """:func:`scale_by_relativistic` as a :class:`Limit`, without validation."""

  def init_fn(params: optax.Params) -> ScaleByRelativisticState | optax.EmptyState:
    del params
    if callable(speed_limit):
      return ScaleByRelativisticState(count=jnp.zeros([], jnp.int32))
    return optax.EmptyState()

  def update_fn(updates, state, recompute=None):
    if callable(speed_limit):
      c = speed_limit(state.count)
      state = ScaleByRelativisticState(count=optax.safe_int32_increment(state.count))
    else:
      c = speed_limit
    return scale_tree(updates, c, mode, formula, axis_name, recompute), state

  return Limit(init_fn, update_fn)
