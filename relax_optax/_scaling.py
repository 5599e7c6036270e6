"""The relativistic update scaling as a pure function on pytrees.

An update ``u`` (already multiplied by the learning rate) is treated as a
momentum; what is applied is the velocity ``v = u · f(ρ²)``, where
``ρ = ‖u‖ / c`` is the group norm in units of the speed limit ``c``. The mode
decides the group (the whole pytree, one leaf, one element); the formula
decides ``f``. The formula lives in :func:`_speed_factor` and, simplified for
one element, :func:`_scale_elements` (tests check that the two agree).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

Mode = Literal["global", "per_param", "per_component"]
Formula = Literal["lorentz", "tanh", "reference"]
AxisName = Any  # a hashable name of a mapped axis, as in jax.lax.psum.

MODES: tuple[str, ...] = ("global", "per_param", "per_component")
FORMULAS: tuple[str, ...] = ("lorentz", "tanh", "reference")

# Below this ρ², tanh(ρ)/ρ is evaluated by its Taylor series
# 1 - ρ²/3 + 2ρ⁴/15 (truncation error 17ρ⁶/315 < 6e-11), which keeps the
# formula and its gradient finite at u = 0.
_TANH_SERIES_MAX_SQ = 1e-3


def validate_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
  """Returns ``value`` or raises a ``ValueError`` naming ``name`` and the choices."""
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {value!r}.")
  return value


def validate_mode(mode: str) -> str:
  """Returns ``mode`` or raises a ``ValueError`` listing the valid modes."""
  return validate_choice("mode", mode, MODES)


def validate_formula(formula: str) -> str:
  """Returns ``formula`` or raises a ``ValueError`` listing the valid ones."""
  return validate_choice("formula", formula, FORMULAS)


def concrete_float(value: Any) -> float | None:
  """The value as a Python float if it is a concrete number, else ``None``.

  Schedules (callables), jax arrays and tracers (as passed by
  ``optax.inject_hyperparams`` under ``jit``) are not concrete here: they are
  never validated, so validation can never break tracing.
  """
  if isinstance(value, bool):
    return None
  if isinstance(value, numbers.Real):
    return float(value)
  if isinstance(value, (np.ndarray, np.generic)) and np.ndim(value) == 0:
    return float(value)
  return None


def check_range(
    name: str,
    value: Any,
    *,
    lower: float,
    upper: float = math.inf,
    lower_open: bool = False,
    upper_open: bool = False,
    allow_inf: bool = False,
) -> None:
  """Raises a ``ValueError`` naming ``name`` if a concrete value is out of range.

  Args:
    name: the argument's name, as the user wrote it.
    value: the value; only concrete numbers are checked.
    lower: the lower bound.
    upper: the upper bound (``inf`` for none; a finite value is then required).
    lower_open: whether ``lower`` itself is excluded.
    upper_open: whether ``upper`` itself is excluded.
  """
  x = concrete_float(value)
  if x is None:
    return
  ok = math.isfinite(x) or (allow_inf and x == math.inf)
  ok = ok and (x > lower if lower_open else x >= lower)
  ok = ok and (x < upper if upper_open else x <= upper)
  if not ok:
    left = "(" if lower_open else "["
    right = ")" if upper_open or upper == math.inf else "]"
    raise ValueError(
        f"{name} must be a finite number in {left}{lower:g}, {upper:g}{right},"
        f" got {value!r}."
    )


def _speed_factor(q: jax.Array, formula: str) -> jax.Array:
  """The factor ``f`` with ``v = u · f``, as a function of ``q = (‖u‖/c)²``.

  ``q`` is finite and non-negative here (non-finite groups never reach this
  function). Every branch is evaluated on inputs for which it is finite, so the
  result and its gradient have no NaN, including at ``q = 0``.

  Args:
    q: squared group norm in units of the speed limit.
    formula: one of :data:`FORMULAS`.

  Returns:
    The scaling factor, of ``q``'s shape and dtype.
  """
  if formula == "lorentz":
    # v = u / sqrt(1 + (n/c)²) = u · c / hypot(c, n): smooth, no branch.
    return jax.lax.rsqrt(1 + q)
  if formula == "tanh":
    # v = u · tanh(n/c) / (n/c).
    small = q < _TANH_SERIES_MAX_SQ
    rho = jnp.sqrt(jnp.where(small, 1, q))
    series = 1 - q / 3 + (2 / 15) * q * q
    return jnp.where(small, series, jnp.tanh(rho) / rho)
  if formula == "reference":
    # relativistic-adam 1.0.0: u · sqrt(1 - (n/c)²) below the limit and
    # u · tanh(n/c) / (n/c) at or above it (discontinuous at n = c).
    below = q < 1
    rho = jnp.sqrt(jnp.where(below, 1, q))
    return jnp.where(below, jnp.sqrt(1 - jnp.where(below, q, 0)), jnp.tanh(rho) / rho)
  raise ValueError(f"formula must be one of {FORMULAS}, got {formula!r}.")


def _is_array_leaf(x: Any) -> bool:
  return x is not None and not isinstance(x, optax.MaskedNode)


def _compute_dtype(*dtypes: Any) -> jnp.dtype:
  # Norms are accumulated in float32, or wider when an input is wider.
  return jnp.result_type(jnp.float32, *dtypes)


# |w| beyond 2^60 is at the limit to working precision for every formula
# (|v|/c = 1 - 2^-121 for lorentz), and 1 + 2^120 rounds to 2^120 exactly.
_W_MAX = 2.0**60


def _scale_elements(u: jax.Array, c: jax.Array, formula: str) -> jax.Array:
  """``per_component``: ``v = u · f((u/c)²)`` element by element.

  Per element ``ρ = |u|/c``, so :func:`_speed_factor`'s formulas simplify:
  ``u / sqrt(1 + (u/c)²)`` for ``lorentz``, ``c · tanh(u/c)`` for ``tanh``
  (tests check that both agree). ``per_component`` is one fused pass over
  memory where every operation counts, so this uses the fewest: one
  reciprocal of ``c`` per call, no division or branch per element.

  ``u`` is read by one operation only (a clip), and the clipped ``z`` is what
  is reused: XLA then fuses the producer of ``u`` (Adam's division) into this
  expression and the parameter update, so the step stays one pass over
  memory, as Adam's; reading ``u`` twice would write it to a buffer first.

  Args:
    u: the update, in the compute dtype.
    c: the speed limit, a normal positive number.
    formula: one of :data:`FORMULAS`.

  Returns:
    ``v``, with ``|v| <= c``; ``±inf`` gives ``±c`` and NaN gives NaN.
  """
  big = jnp.finfo(u.dtype).max
  inv_c = 1 / c
  if formula == "lorentz":
    # |w| = |z/c| <= 2^60: ±inf and any u whose (u/c)² would overflow give
    # z·2^-60 = ±c exactly (for c <= 2^67; the limit to 4e-13 for c <= 3e32).
    bound = jnp.minimum(c * _W_MAX, big)
    z = jnp.clip(u, -bound, bound)
    w = z * inv_c
    return z * jax.lax.rsqrt(1 + w * w)
  # tanh saturates by itself: only +inf is clipped (to the largest finite
  # number), as the single operation that reads u.
  z = jnp.minimum(u, big)
  w = z * inv_c
  if formula == "tanh":
    # v = c·tanh(w); below 2^-60, tanh(w) = w and v = z avoids the underflow
    # of w for |u| < c·1e-38.
    return jnp.where(jnp.abs(w) < 2.0**-60, z, c * jnp.tanh(w))
  if formula == "reference":
    below = jnp.abs(w) < 1
    return jnp.where(below, z * jnp.sqrt(1 - jnp.where(below, w * w, 0)), c * jnp.tanh(w))
  raise ValueError(f"formula must be one of {FORMULAS}, got {formula!r}.")


def safe_speed_limit(speed_limit: jax.typing.ArrayLike, dtype: Any) -> tuple[jax.Array, jax.Array]:
  """``(positive, c_safe)``: whether ``c`` limits at all, and ``c`` safe to divide by.

  ``c = 0`` would make ``u/c`` NaN: the scaling is computed with ``c = 1`` and
  its result replaced by 0 where ``positive`` is False. A subnormal ``c``
  counts as 0 (an error below ``c``; ``1/c`` would overflow).
  """
  c = jnp.asarray(speed_limit, dtype)
  positive = c >= jnp.finfo(dtype).tiny
  return positive, jnp.where(positive, c, 1)


def _sharded_flags(leaves: list[jax.Array], axis_name: AxisName | None) -> list[bool]:
  """Which leaves are sharded over ``axis_name``, i.e. vary across it.

  ``shard_map`` records it in each value's type; ``pmap`` and
  ``shard_map(check_vma=False)`` do not (no leaf is seen to vary), and there
  every leaf is taken as sharded.
  """
  if axis_name is None:
    return [False] * len(leaves)
  names = axis_name if isinstance(axis_name, tuple) else (axis_name,)

  def varies(u: jax.Array) -> bool:
    aval = jax.typeof(u)
    manual = getattr(aval, "manual_axis_type", None)  # jax 0.10; `.vma` before
    varying = manual.varying if manual is not None else getattr(aval, "vma", ())
    return any(name in varying for name in names)

  flags = [varies(u) for u in leaves]
  return flags if any(flags) else [True] * len(leaves)


def _group_total(
    values: list[jax.Array], sharded: list[bool], axis_name: AxisName | None, reduce: str
) -> jax.Array:
  """The ``"sum"`` or ``"max"`` of per-leaf values over the group, on all devices.

  A leaf sharded over ``axis_name`` holds part of the group on each device, so
  its values are reduced across the axis; a replicated leaf holds all of it on
  every device and is counted once (a psum would count it once per device).
  """
  combine = sum if reduce == "sum" else (lambda xs: jnp.max(jnp.stack(xs)))
  local = [v for v, f in zip(values, sharded, strict=True) if f]
  whole = [v for v, f in zip(values, sharded, strict=True) if not f]
  total = None
  if local:
    across = jax.lax.psum if reduce == "sum" else jax.lax.pmax
    total = across(combine(local), axis_name)
  if whole:
    rest = combine(whole)
    if total is None:
      total = rest
    else:
      total = total + rest if reduce == "sum" else jnp.maximum(total, rest)
  return total


class GroupScale(NamedTuple):
  """Scalars of one group: ``v = (u · a) · b``, or, in ``inf_mode``,
  ``v = sign(u) · b`` on the infinite entries and 0 elsewhere."""

  a: jax.Array  # shape=(): a power of two, 1 on the common path.
  b: jax.Array  # shape=(): the speed factor.
  inf_mode: jax.Array  # shape=(), dtype=bool.


def _saturated_scale(
    leaves: Callable[[], list[jax.Array]],
    q: jax.Array,
    c: jax.Array,
    axis_name: AxisName | None,
    sharded: list[bool],
) -> GroupScale:
  """The scalars of a group whose ``q`` overflowed or is NaN (rare).

  ``Σ (u/c)²`` is not finite only if ``‖u‖/c ≥ 1.8e19`` in float32, where every
  formula's ``‖v‖/c`` equals 1 to working precision, so ``v`` is ``c`` in the
  direction of ``u``: ``v = (u·a) · c/‖u·a‖``, with ``a`` the power of two that
  brings the largest magnitude below 4 (exact, and the sum of squares cannot
  overflow). Infinite entries give the direction of their signs (the limit of
  a growing entry); a NaN makes the whole group NaN.

  ``leaves()`` is called once per reduction: when it builds the leaves from
  other arrays, each reduction then computes them in its own pass instead of
  reading a buffer that holds them.
  """
  m = jax.lax.stop_gradient(
      _group_total([jnp.max(jnp.abs(u), initial=0) for u in leaves()], sharded, axis_name, "max")
  )
  n_inf = _group_total(
      [jnp.sum(jnp.isinf(u), dtype=q.dtype) for u in leaves()], sharded, axis_name, "sum"
  )
  # m = f·2^e with f in [0.5, 1); e is clipped so that a is a normal number
  # (CPUs may flush subnormals to zero), which leaves |u·a| < 4.
  _, e = jnp.frexp(jnp.where(jnp.isfinite(m), m, 1))
  a = jnp.ldexp(jnp.ones_like(m), -jnp.clip(e, -125, 125))
  s = _group_total([jnp.sum(jnp.square(u * a)) for u in leaves()], sharded, axis_name, "sum")
  inf_mode = jnp.isinf(m)
  # s > 0 whenever it is used (q overflowed, so m > 0); the guard keeps the
  # unused value and its gradient finite.
  b = c / jnp.sqrt(jnp.where(inf_mode, n_inf, jnp.where(s > 0, s, 1)))
  nan = jnp.isnan(q)
  return GroupScale(
      jnp.where(inf_mode, 1, a), jnp.where(nan, jnp.nan, b), inf_mode & ~nan
  )


def group_scale(
    q: jax.Array,
    c: jax.Array,
    formula: str,
    saturated_leaves: Callable[[], list[jax.Array]],
    axis_name: AxisName | None,
    sharded: list[bool],
) -> GroupScale:
  """The scalars that scale one group, given its ``q = Σ (u/c)²``.

  Args:
    q: the group's squared norm in units of ``c``, already summed over
      ``axis_name``.
    c: the speed limit (positive).
    formula: one of :data:`FORMULAS`.
    saturated_leaves: returns the group's leaves ``u``; called (once per
      reduction) only inside the rare branch taken when ``q`` is not finite.
    axis_name: as in :func:`relativistic_scale`.
    sharded: which leaves are sharded over ``axis_name``.

  Returns:
    The scalars, to be applied to each leaf by :func:`apply_group_scale`. Only
    scalars leave the ``lax.cond``, so the scaling of each leaf can fuse with
    whatever consumes it (the parameter update).
  """

  def saturated() -> GroupScale:
    return _saturated_scale(saturated_leaves, q, c, axis_name, sharded)

  def common() -> GroupScale:
    # isinf(q) is False here; derived from q, it is varying over the same
    # shard_map axes as q, as the other branch's result is.
    return GroupScale(jnp.ones_like(q), _speed_factor(q, formula), jnp.isinf(q))

  return jax.lax.cond(jnp.isfinite(q), common, saturated)


def apply_group_scale(u: jax.Array, scale: GroupScale) -> jax.Array:
  """``v = (u · a) · b``, or ``sign(u) · b`` on infinite entries in ``inf_mode``.

  ``u`` has one consumer here (``u · a``), so XLA fuses its producer into it.
  """
  w = u * scale.a
  return jnp.where(scale.inf_mode, jnp.where(jnp.isinf(w), jnp.sign(w), 0), w) * scale.b


def _scale_group(
    leaves: list[jax.Array],
    c: jax.Array,
    formula: str,
    axis_name: AxisName | None,
    sharded: list[bool],
) -> list[jax.Array]:
  """Scales the leaves of one group (sharing one norm) in the compute dtype.

  Cost on XLA:CPU: the norm and the scaling both read ``u``, and XLA does not
  recompute a producer such as Adam's division for two consumers, so ``u`` is
  written to a scratch buffer when it is computed in the same step.
  ``relativistic_adam`` avoids this by computing the norm from Adam's moments
  (see ``_fused.py``).
  """
  # q = Σ (u/c)²: dividing by c first keeps q in units of the limit, so its
  # gradient is finite at u = 0 and it only overflows for ‖u‖/c ≥ 1.8e19.
  # Sharded leaves' entries are spread over the devices of `axis_name`.
  q = _group_total([jnp.sum(jnp.square(u / c)) for u in leaves], sharded, axis_name, "sum")
  scale = group_scale(q, c, formula, lambda: leaves, axis_name, sharded)
  return [apply_group_scale(u, scale) for u in leaves]


def relativistic_scale(
    updates: optax.Updates,
    speed_limit: jax.typing.ArrayLike,
    *,
    mode: Mode = "per_param",
    formula: Formula = "lorentz",
    axis_name: AxisName | None = None,
) -> optax.Updates:
  """Limits the speed of an update pytree: ``v = u · f((‖u‖/c)²)``.

  With ``n = ‖u‖`` the Euclidean norm over a group of entries and ``c`` the
  speed limit:

  ============  =====================================  ===========================
  formula       v                                      properties
  ============  =====================================  ===========================
  lorentz       u / sqrt(1 + (n/c)²) = u·c/hypot(c,n)  smooth, increasing, ‖v‖ < c
  tanh          u · c · tanh(n/c) / n                  smooth, increasing
  reference     u·sqrt(1-(n/c)²) if n < c,             relativistic-adam 1.0.0,
                else u · c · tanh(n/c) / n             discontinuous at n = c
  ============  =====================================  ===========================

  The group is the whole pytree for ``mode="global"``, each leaf for
  ``"per_param"`` and each element for ``"per_component"``.

  Numerics: norms are accumulated in float32 (or the input's dtype if wider),
  so bfloat16 and float16 updates cannot overflow; the result has the input's
  dtype. ``u = 0`` gives 0 and ``c = 0`` gives 0. A group whose norm
  overflows, or holds an infinite entry, saturates at ``c`` in its direction;
  a NaN makes its own group NaN and no other. ``lorentz`` and ``tanh`` are
  differentiable everywhere, including at ``u = 0``.

  Differences from relativistic-adam 1.0.0: its formula is ``reference``
  (not continuous, not monotone: an update just under the limit is almost
  cancelled); and its ``"global"`` mode takes the norm tensor by tensor, so it
  equals ``"per_param"`` there, whereas here ``"global"`` uses one norm for the
  whole pytree, as its documentation promises.

  Args:
    updates: a pytree of floating-point arrays; ``None`` and
      ``optax.MaskedNode`` leaves pass through.
    speed_limit: ``c >= 0``, a scalar (may be traced).
    mode: ``"global"``, ``"per_param"`` or ``"per_component"``.
    formula: ``"lorentz"``, ``"tanh"`` or ``"reference"``.
    axis_name: inside ``shard_map`` / ``pmap``, the axis over which the
      arrays are sharded: the ``global`` and ``per_param`` norms of sharded
      leaves are then summed across it (``lax.psum``), so every device applies
      the same factor. Leaves that ``shard_map`` knows to be replicated over
      the axis are counted once; under ``pmap`` (which does not track this)
      every leaf is taken as sharded. Leave ``None`` under ``jit`` with
      sharded arrays (the norm is already global).

  Returns:
    The scaled pytree, with the structure, shapes and dtypes of ``updates``.

  References:
    Einstein, 1905, "Zur Elektrodynamik bewegter Körper" (the Lorentz factor).
    relativistic-adam 1.0.0 (PyPI), ``RelativisticAdam._apply_relativistic_scaling``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import relax_optax
    >>> u = {"w": jnp.array([3.0, 4.0])}   # ‖u‖ = 5
    >>> v = relax_optax.relativistic_scale(u, 5.0)
    >>> print(v["w"])                       # u / sqrt(2)
    [2.1213202 2.828427 ]
  """
  validate_mode(mode)
  validate_formula(formula)
  check_range("speed_limit", speed_limit, lower=0.0, allow_inf=True)

  leaves, treedef = jax.tree.flatten(updates, is_leaf=lambda x: not _is_array_leaf(x))
  positions = [i for i, x in enumerate(leaves) if _is_array_leaf(x)]
  if not positions:
    return updates
  arrays = [jnp.asarray(leaves[i]) for i in positions]
  for a in arrays:
    if not jnp.issubdtype(a.dtype, jnp.inexact):
      raise ValueError(f"updates must be floating-point arrays, got dtype {a.dtype}.")
  dtype = _compute_dtype(*(a.dtype for a in arrays))
  positive, c_safe = safe_speed_limit(speed_limit, dtype)
  wide = [a.astype(dtype) for a in arrays]

  if mode == "per_component":
    out = [_scale_elements(u, c_safe, formula) for u in wide]
  elif mode == "global":
    out = _scale_group(wide, c_safe, formula, axis_name, _sharded_flags(wide, axis_name))
  else:
    # One group (and one cond) per leaf: XLA can then finish a leaf before
    # starting the next and reuse one leaf-sized scratch buffer, instead of
    # keeping every leaf's update alive at once.
    out = [
        _scale_group([u], c_safe, formula, axis_name, [f])[0]
        for u, f in zip(wide, _sharded_flags(wide, axis_name), strict=True)
    ]

  for i, a, v in zip(positions, arrays, out, strict=True):
    leaves[i] = jnp.where(positive, v, 0).astype(a.dtype)
  return jax.tree.unflatten(treedef, leaves)
