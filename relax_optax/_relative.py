"""A speed limit relative to the run's own recent update norms (a spike guard).

The limit of each group (the whole update for ``"global"``, each leaf for
``"per_param"``) at step ``t`` is

  ``c_t = sqrt(1 + k²) · s``,  then  ``s² ← s² + w_t·(‖v‖² - s²)``,
  ``w_t = (1 - β)/(1 - β^t)`` (1 for a group's first finite step),

``s²`` the bias-corrected exponential moving mean of the squared norms of the
*limited* updates ``v`` (the same numbers as Adam's ``ν / (1 - β^t)``, updated
in place), and ``v = u / sqrt(1 + (‖u‖/c_t)²)`` the ``lorentz`` scaling of
:mod:`relax_optax._groups`. The factor ``sqrt(1 + k²)`` makes ``k`` a multiple
of the *raw* update norm: for a stream of constant norm ``n`` the fixed point
is exactly ``c = k·n`` (``‖v‖² = n²c²/(n² + c²)`` and ``c² = (1 + k²)‖v‖²``
give ``c = k·n``), whatever the stream went through before.

Norms are the core's: ``scale_leaves(..., return_q=True)`` returns each
group's ``q = Σ min(|u/c|, 2^40)²``, so ``‖v‖² = (c·f(q))²·q`` with the
formula's factor ``f``, and the step costs one reduction per leaf, as
``scale_by_relativistic``. Each group's state is one scalar and its work a
few scalar operations; the step count and the weight ``w_t`` are shared.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from relax_optax._formulas import speed_factor
from relax_optax._groups import AxisName, _is_array_leaf, array_leaves, scale_leaves
from relax_optax._numerics import one_minus_power
from relax_optax._transform import Limit, limit_transform
from relax_optax._validation import check_choice, check_decay, check_int, check_scalar

RELATIVE_MODES: tuple[str, ...] = ("global", "per_param")

# During the warm-up, or while a group has no data, the limit only measures:
# it is 2^20 times the running RMS norm (2^20 parameter units with no data),
# so a step up to 100 times the running RMS changes by less than 5e-9
# (relative change (‖u‖/c)²/2), and entries down to 1e-13 of that scale still
# add their squares to q as normal float32 numbers.
_MEASURE = 2.0**20
# q >= 2^80 only when an entry is infinite or at least 2^40 ≈ 1.1e12 times the
# limit (the core clamps entries there): such a step counts as non-finite.
_Q_MAX = 2.0**80


class RelativeSpeedLimit(NamedTuple):
  """The relative speed limit as an option of :func:`relativistic_adam`.

  Pass it as ``speed_limit=relax_optax.RelativeSpeedLimit(k=2.0)``; its
  fields are the arguments of :func:`scale_by_relative_speed_limit`.
  """

  k: float = 2.0
  decay: float = 0.99
  warmup_steps: int = 100


class ScaleByRelativeSpeedLimitState(NamedTuple):
  """State of :func:`scale_by_relative_speed_limit`.

  ``nu`` is one scalar for ``mode="global"``; for ``"per_param"`` it is a
  pytree like the updates with one scalar per array leaf (``None`` and
  ``optax.MaskedNode`` leaves kept), so a layer's statistics can be read, and
  its limit ``sqrt(1 + k²)·sqrt(nu)`` logged, by name. Scalars rather than
  one vector of groups: XLA compiles a vector sliced into every leaf's
  fusion 2-3 times slower.
  """

  count: jax.Array  # shape=(), dtype=jnp.int32: steps seen.
  nu: optax.Updates  # shape=() per group, dtype=jnp.float32: bias-corrected mean of ‖v‖².


def check_relative_args(k: Any, decay: Any, warmup_steps: Any, mode: Any) -> None:
  """Validates the arguments of the relative limit, each with one rule."""
  check_scalar("k", k, lower=0.0, lower_open=True)
  check_decay("decay", decay)
  check_int("warmup_steps", warmup_steps, lower=0)
  check_choice("mode", mode, RELATIVE_MODES)


def check_relative_speed_limit(speed_limit: RelativeSpeedLimit, mode: Any, formula: Any) -> None:
  """Validates a :class:`RelativeSpeedLimit` given to a recipe, and its company."""
  check_relative_args(speed_limit.k, speed_limit.decay, speed_limit.warmup_steps, mode)
  if formula != "lorentz":
    raise ValueError(f'a RelativeSpeedLimit needs formula="lorentz", got {formula!r}.')


def scale_by_relative_speed_limit(
  k: jax.typing.ArrayLike = 2.0,
  *,
  decay: jax.typing.ArrayLike = 0.99,
  warmup_steps: int = 100,
  mode: str = "per_param",
  axis_name: AxisName | None = None,
) -> optax.GradientTransformationExtraArgs:
  """A speed limit ``k`` times the run's typical update norm: a spike guard.

  Each group's update ``u`` (the whole update for ``mode="global"``, each
  leaf for ``"per_param"``) is scaled by the ``lorentz`` factor of
  :func:`relax_optax.relativistic_scale`, ``v = u / sqrt(1 + (‖u‖/c_t)²)``,
  with a limit ``c_t`` taken from the run's own recent norms:

    c_t = sqrt(1 + k²) · s,   then   s² ← s² + w_t·(‖v‖² - s²),   w_t = (1 - β)/(1 - β^t)

  ``s`` is the bias-corrected exponential moving RMS of the *limited* norms
  ``‖v‖`` of the previous steps (``β = decay``, ``t`` the step), the same
  numbers as Adam's bias-corrected second moment ``ν/(1 - β^t)``, kept
  corrected (``w_t = 1`` for a group's first finite step, so a group whose
  data start late, or after a skipped first step, is not biased towards 0).
  Place it after the learning rate, where
  updates are in parameter units; it needs no tuning to the learning rate
  or to the model's scale, because ``c_t`` follows them.

  Why this rule:

  - *A multiple of a running scale*, not mean + k·std (Levanter's hard
    clip): a soft limit needs room above the typical step (with
    ``lorentz``, a step at the limit loses 29 %), and a multiple keeps the
    guard's effect on ordinary steps fixed, ``1 - 1/sqrt(1 + 1/k²)`` for a
    steady stream, whereas ``σ → 0`` in a steady stream would put ``c`` on
    the typical step itself.
  - *The RMS* (an EMA of ``‖v‖²``, not of ``‖v‖``): with ``c = k·RMS`` the
    stream's average of the change bound ``(‖u‖/c)²/2`` is ``(1/k)²/2``
    whatever the spread of the norms; a multiple of the mean norm would
    give ``(1 + cv²)·(1/k)²/2`` (``cv`` the coefficient of variation).
  - ``sqrt(1 + k²)``: the statistics see limited norms, which are smaller
    than the raw ones; with this factor a stream of constant norm ``n`` has
    the fixed point ``c = k·n`` exactly, so ``k`` is the limit in units of
    the typical raw step.
  - *Limited norms in the statistics*: a step adds at most ``c_t²`` to the
    mean of ``‖v‖²``, with weight ``w_t``, so a spike of any height raises
    the next limit by a factor of at most ``sqrt(1 + w_t·k²)``: 1.02 for
    ``k = 2``, ``β = 0.99`` in a long run (``w_t → 1 - β``), 1.06 at step 41;
    a run of spikes raises it only geometrically slowly. This holds from a
    group's second step of data on, during the warm-up too (the statistics
    always see the norm limited at ``sqrt(1 + k²)·s``). A group's first step
    of data has nothing to be compared with and sets its scale: a spike
    there is forgotten as the mean forgets it (its weight falls as ``β^t``).

  What passes unchanged: a stream whose norms are all ``n`` settles at
  ``c = k·n`` and each step is scaled by ``1/sqrt(1 + 1/k²)``, a relative
  change below ``(1/k)²/2`` (10.6 % for ``k = 2``, 5.1 % for 3, 1.9 % for 5):
  in steady training the guard acts as a slightly smaller learning rate.
  In a noisy stream each step changes by ``1 - 1/sqrt(1 + (‖u‖/c_t)²)``,
  little for ordinary steps and much only for outliers, and ``c`` settles a
  little below ``k`` times the stream's RMS, because the limited norms feed
  the statistics (measured in ``docs/relative_speed_limit.md``: log-normal
  norms with a 30 % spread settle at ``c = 0.96·k·RMS`` for ``k = 2``; the
  average change is then 10.8 %, the median 9.6 %, a step of twice the RMS
  loses 31 %). For heavy-tailed streams the tail sets the RMS and is what
  the guard shrinks: the median step changes less than in a steady stream,
  the average about as much.

  Warm-up and edge cases: during the first ``warmup_steps`` steps the limit
  only measures (``c = 2^20·s``: steps up to 100 times the running RMS
  change by less than 5e-9), and a group whose running RMS is zero (or
  below 1e-19: no data yet, frozen, unused) is not limited (``c = 2^20``
  parameter units) until it has data; after the warm-up, one step of data is
  enough for a group to be limited. A step whose group norm is not finite
  (a NaN or infinite entry, or ``‖u‖ >= 2^40·c_t``) leaves that group's
  statistics as they were (the step count still advances); its update is
  the core's (saturated at ``c_t`` for infinite entries, NaN for NaN):
  wrap the optimizer in ``optax.apply_if_finite`` to skip it. Under
  ``optax.MultiSteps`` the statistics move once per real step, and under
  ``apply_if_finite`` a skipped step does not touch them (nor the count),
  because the state lives inside the wrapped transformation.

  Args:
    k: the limit in units of the typical update norm, ``> 0`` and finite
      (2 binds on steps above about twice the typical norm; larger is more
      permissive). May be injected with ``optax.inject_hyperparams``.
    decay: ``β`` in [0, 1), the EMA's decay (0.99: a memory of about 100
      steps). May be injected.
    warmup_steps: steps before the limit applies, an integer in [0, 2^31).
    mode: ``"per_param"`` (one limit per leaf, default) or ``"global"`` (one
      for the whole update). ``"per_component"`` is not offered: one
      element's history is too noisy a scale.
    axis_name: inside ``shard_map`` / ``pmap`` with updates sharded over this
      axis, the group norms are summed across it (see
      :func:`relax_optax.relativistic_scale`), so the statistics stay equal on
      every device; ``None`` under plain ``jit``.

  Returns:
    An ``optax.GradientTransformation`` whose state is a
    :class:`ScaleByRelativeSpeedLimitState`: the step ``count`` and ``nu``,
    the ``s²`` of each group (one scalar for ``"global"``, a pytree of one
    scalar per leaf for ``"per_param"``), so ``c = sqrt(1 + k²)·sqrt(nu)``.

  Raises:
    TypeError: for a ``k`` or ``decay`` that is not a real scalar, or a
      ``warmup_steps`` that is not an integer.
    ValueError: for a concrete ``k <= 0``, ``decay`` outside [0, 1),
      ``warmup_steps < 0``, or another ``mode``.

  References:
    Einstein, 1905, "Zur Elektrodynamik bewegter Körper" (the Lorentz factor).
    Kingma and Ba, 2015, "Adam: A Method for Stochastic Optimization" (the
    bias-corrected moving average).
    Levanter (stanford-crfm), ``clip_update_by_historical_norm``: a hard clip
    at mean + k·std of the last update norms.
    Kumar et al., 2025, "ZClip: Adaptive Spike Mitigation for LLM
    Pre-Training" (EMA statistics of gradient norms).

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import relax_optax
    >>> tx = relax_optax.scale_by_relative_speed_limit(2.0, warmup_steps=3)
    >>> state = tx.init({"w": jnp.zeros(2)})
    >>> for t in range(6):   # steps of norm 0.5, and a spike of 1e6 times that at t = 4
    ...   u = {"w": jnp.array([0.3, -0.4]) * (1e6 if t == 4 else 1.0)}
    ...   v, state = tx.update(u, state)
    ...   print(t, f"{float(jnp.linalg.norm(v['w'])):.3f}")
    0 0.500
    1 0.500
    2 0.500
    3 0.452
    4 1.041
    5 0.471

    In a chain, after the learning rate (or as ``relativistic_adam``'s
    ``speed_limit=relax_optax.RelativeSpeedLimit(k=2.0)``):

    >>> tx = optax.chain(
    ...     optax.scale_by_adam(),
    ...     optax.scale_by_learning_rate(1e-3),
    ...     relax_optax.scale_by_relative_speed_limit(2.0),
    ... )
  """
  check_relative_args(k, decay, warmup_steps, mode)
  return limit_transform(relative_limit(k, decay, warmup_steps, mode, axis_name))


def relative_limit(
  k: jax.typing.ArrayLike,
  decay: jax.typing.ArrayLike,
  warmup_steps: jax.typing.ArrayLike,
  mode: str,
  axis_name: AxisName | None,
) -> Limit:
  """:func:`scale_by_relative_speed_limit` as a :class:`Limit`, without validation."""

  non_array = lambda x: not _is_array_leaf(x)  # None, MaskedNode: kept as they are

  def groups(tree: optax.Updates) -> list[jax.Array]:
    if mode == "global":
      return [tree]
    return [x for x in jax.tree.leaves(tree, is_leaf=non_array) if _is_array_leaf(x)]

  def init_fn(params: optax.Params) -> ScaleByRelativeSpeedLimitState:
    zero = jnp.zeros([], jnp.float32)
    if mode == "global":
      nu = zero
    else:
      nu = jax.tree.map(lambda x: zero if _is_array_leaf(x) else x, params, is_leaf=non_array)
    return ScaleByRelativeSpeedLimitState(count=jnp.zeros([], jnp.int32), nu=nu)

  def update_fn(updates, state, recompute=None):
    leaves, treedef, positions = array_leaves(updates)
    if not positions:
      return updates, state
    arrays = [jnp.asarray(leaves[i]) for i in positions]
    f32, tiny = jnp.float32, jnp.finfo(jnp.float32).tiny
    k_f, decay_f = jnp.asarray(k, f32), jnp.asarray(decay, f32)
    count = optax.safe_int32_increment(state.count)
    # Shared by every group: (c/s)² once warm, and while measuring; the newest
    # step's weight in the bias-corrected mean.
    limit2 = 1 + k_f * k_f
    factor = jnp.where(state.count >= warmup_steps, limit2, _MEASURE**2)
    weight = (1 - decay_f) / one_minus_power(decay, count.astype(f32))
    nus = groups(state.nu)
    # A mean below the smallest normal number is no scale (no data yet, or
    # only zeros): the limit measures, with s = 1 parameter unit.
    has_data = [nu >= tiny for nu in nus]
    cs = [
      jnp.sqrt(jnp.where(d, nu * factor, _MEASURE**2)) for nu, d in zip(nus, has_data, strict=True)
    ]
    out, qs = scale_leaves(
      arrays,
      cs[0] if mode == "global" else cs,
      mode,
      "lorentz",
      axis_name,
      recompute,
      return_q=True,
    )

    def statistic(nu: jax.Array, d: jax.Array, c: jax.Array, q: jax.Array) -> jax.Array:
      q = q.astype(f32)
      # The statistics see the norm limited at c_k = sqrt(1 + k²)·s, the limit
      # once warm, also during the warm-up while the step itself is only
      # measured: a spike then moves the mean as little as after it. Without
      # data (a group's first step) the measured norm is taken as it is.
      c_k = jnp.where(d, jnp.sqrt(nu * limit2), c)
      q_k = q * jnp.square(c / c_k)
      # ‖v‖² = (c_k·f(q_k))²·q_k: the limited norm, from the core's q and factor.
      v2 = jnp.square(c_k * speed_factor(q_k, "lorentz")) * q_k
      # NaN q fails the comparison; q >= 2^80 is an infinite or overflowing
      # entry; an overflowing ‖v‖² (‖v‖ > 1.8e19) would poison the mean too.
      finite = (q < _Q_MAX) & jnp.isfinite(v2)
      w = jnp.where(d, weight, 1)  # a group's first data replaces the 0
      return jnp.where(finite, nu + w * (v2 - nu), nu)

    new = [statistic(*g) for g in zip(nus, has_data, cs, qs, strict=True)]
    if mode == "global":
      nu = new[0]
    else:
      nu_leaves, nu_def, slots = array_leaves(state.nu)
      for i, v in zip(slots, new, strict=True):
        nu_leaves[i] = v
      nu = jax.tree.unflatten(nu_def, nu_leaves)
    for i, v in zip(positions, out, strict=True):
      leaves[i] = v
    return jax.tree.unflatten(treedef, leaves), ScaleByRelativeSpeedLimitState(count, nu)

  return Limit(init_fn, update_fn)
