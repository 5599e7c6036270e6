"""The relativistic update scaling as a pure function on pytrees.

An update ``u`` (already multiplied by the learning rate) is treated as a
momentum; what is applied is the velocity ``v = u · f(ρ²)``, where
``ρ = ‖u‖ / c`` is the group norm in units of the speed limit ``c``. The mode
decides the group (the whole pytree, one leaf, one element); the formula
decides ``f``. The formula lives in :func:`_speed_factor` and nowhere else.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Literal

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


def validate_mode(mode: str) -> str:
  """Returns ``mode`` or raises a ``ValueError`` listing the valid modes."""
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
  return mode


def validate_formula(formula: str) -> str:
  """Returns ``formula`` or raises a ``ValueError`` listing the valid ones."""
  if formula not in FORMULAS:
    raise ValueError(f"formula must be one of {FORMULAS}, got {formula!r}.")
  return formula


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
  ok = math.isfinite(x)
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


def _saturated(
    leaves: list[jax.Array], c: jax.Array, axis_name: AxisName | None
) -> list[jax.Array]:
  """``c · u / ‖u‖`` for a group whose ``(‖u‖/c)²`` overflows or is NaN.

  Reached only when ``Σ (u/c)²`` is not finite: then ``‖u‖/c ≥ 1.8e19`` in
  float32 and every formula's ``‖v‖/c`` equals 1 to working precision, so
  ``v`` is the speed limit in the direction of ``u``. The norm is computed
  with the largest magnitude factored out, so it cannot overflow; infinite
  entries give the direction of their signs (the limit of a growing entry);
  a NaN anywhere in the group makes the whole group NaN.
  """
  m = jnp.max(jnp.stack([jnp.max(jnp.abs(u), initial=0) for u in leaves]))
  if axis_name is not None:
    m = jax.lax.pmax(m, axis_name)
  inf = jnp.isinf(m)
  scaled = [
      jnp.where(inf, jnp.where(jnp.isinf(u), jnp.sign(u), 0), u / m) for u in leaves
  ]
  sq = sum(jnp.sum(jnp.square(s)) for s in scaled)
  if axis_name is not None:
    sq = jax.lax.psum(sq, axis_name)
  norm = jnp.sqrt(sq)
  return [s * (c / norm) for s in scaled]


def _scale_group(
    leaves: list[jax.Array], c: jax.Array, formula: str, axis_name: AxisName | None
) -> list[jax.Array]:
  """Scales the leaves of one group (sharing one norm) in the compute dtype."""
  # q = Σ (u/c)²: dividing by c first keeps q in units of the limit, so its
  # gradient is finite at u = 0 and it only overflows for ‖u‖/c ≥ 1.8e19.
  q = sum(jnp.sum(jnp.square(u / c)) for u in leaves)
  if axis_name is not None:
    # The entries of the group are spread over the devices of `axis_name`.
    q = jax.lax.psum(q, axis_name)
  return jax.lax.cond(
      jnp.isfinite(q),
      lambda ls: [u * _speed_factor(q, formula) for u in ls],
      lambda ls: _saturated(ls, c, axis_name),
      leaves,
  )


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
    axis_name: inside ``shard_map`` / ``pmap``, the axis over which each
      array is sharded: the ``global`` and ``per_param`` norms are then summed
      across it (``lax.psum``), so every device applies the same factor. Leave
      ``None`` under ``jit`` with sharded arrays (the norm is already global)
      and for replicated updates.

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
  check_range("speed_limit", speed_limit, lower=0.0)

  leaves, treedef = jax.tree.flatten(updates, is_leaf=lambda x: not _is_array_leaf(x))
  positions = [i for i, x in enumerate(leaves) if _is_array_leaf(x)]
  if not positions:
    return updates
  arrays = [jnp.asarray(leaves[i]) for i in positions]
  for a in arrays:
    if not jnp.issubdtype(a.dtype, jnp.inexact):
      raise ValueError(f"updates must be floating-point arrays, got dtype {a.dtype}.")
  dtype = _compute_dtype(*(a.dtype for a in arrays))
  c = jnp.asarray(speed_limit, dtype)
  # c = 0 would make u/c NaN; compute with c = 1 and zero the result instead.
  positive = c > 0
  c_safe = jnp.where(positive, c, 1)
  wide = [a.astype(dtype) for a in arrays]

  if mode == "per_component":
    out = []
    for u in wide:
      q = jnp.square(u / c_safe)
      finite = jnp.isfinite(q)
      # An element whose (u/c)² overflows is at the limit: v = c · sign(u).
      v = jnp.where(
          finite,
          u * _speed_factor(jnp.where(finite, q, 0), formula),
          c_safe * jnp.sign(u),
      )
      out.append(v)
  else:
    if mode == "global":
      out = _scale_group(wide, c_safe, formula, axis_name)
    else:
      out = [_scale_group([u], c_safe, formula, axis_name)[0] for u in wide]

  for i, a, v in zip(positions, arrays, out, strict=True):
    leaves[i] = jnp.where(positive, v, 0).astype(a.dtype)
  return jax.tree.unflatten(treedef, leaves)
