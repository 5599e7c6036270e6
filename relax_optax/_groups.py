"""The relativistic scaling of a pytree: group norms, the limit, saturation.

Every mode runs the same three steps on each array leaf ``u`` (in a compute
dtype of at least float32):

1. clamp: ``z = clip(u, ±B·c)`` with ``B = 2^40`` (per real component);
2. the group's ``q = Σ |z/c|²``: per element (``per_component``), per leaf
   (``per_param``, one reduction) or over the whole tree (``global``, the
   per-leaf sums added, and summed over ``axis_name`` for sharded leaves);
3. ``v = z · f(q)`` with the formula's factor :func:`speed_factor`.

The clamp is the whole of the overflow handling: ``|z/c| <= 2^40`` makes
``q <= 2^80`` per clamped entry, so ``q`` cannot overflow float32 (unless more
than 2^48 entries of one group are clamped), no ``lax.cond`` or second pass is
needed, and the compiled step is one reduction per leaf plus elementwise work,
as Optax's ``clip_by_global_norm``. An entry is only clamped when it is more
than 2^40 ≈ 1.1e12 times the speed limit, where its group is at the limit to
working precision (``‖v‖ = c·(1 - 2^-81)`` for ``lorentz``): infinite or
astronomically large entries then share the limit equally in the direction of
their signs, and the other entries of the group are scaled by about 2^-40 of
their size (negligible next to ``c``). A NaN entry stays NaN and never reaches
another group; its own group becomes NaN, except where the reduction runs in
XLA:CPU's fused kernels (large leaves under ``jit``), whose ``min`` drops the
NaN: there it counts as an infinite entry and the rest of its group saturates.
``optax.apply_if_finite`` skips such a step either way.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax

from relax_optax._formulas import FORMULAS, Formula, scale_entries, speed_factor
from relax_optax._validation import check_choice, check_scalar_or_schedule

Mode = Literal["global", "per_param", "per_component"]
MODES: tuple[str, ...] = typing.get_args(Mode)
AxisName = Any  # a hashable name of a mapped axis, or a tuple of them, as in jax.lax.psum.

# |z/c| <= 2^40: the squares stay below 2^80 (see the module docstring).
_CLAMP = 2.0**40


def _is_array_leaf(x: Any) -> bool:
  return x is not None and not isinstance(x, optax.MaskedNode)


class _Limit(typing.NamedTuple):
  """The speed limit as the scalars the elementwise work uses."""

  inv_c: jax.Array  # shape=(): 1/c (0 for c = inf); 1 where bound = 0.
  bound: jax.Array  # shape=(): B·c, at most the dtype's largest number.
  neg_bound: jax.Array  # shape=(): -bound (once, not once per leaf).
  finite_c: jax.Array  # shape=(): c, or 1 where c is infinite or gives v = 0.


def _limit(speed_limit: jax.typing.ArrayLike, dtype: Any) -> _Limit:
  """``1/c`` and the clamp bound ``B·c``, in the real compute ``dtype``.

  A ``c`` below the smallest normal number (0, negative or subnormal: a
  traced, injected or scheduled value) gives ``bound = 0`` and so ``v = 0``
  (``1/c`` is then 1, so that the norm stays finite); a NaN ``c`` gives NaN.
  ``c = inf`` gives ``1/c = 0``: no limit. A finite ``c`` above ``2^(m-41)``
  (``m`` the dtype's largest exponent: 2^87 ≈ 1.5e26 in float32) is applied
  as that number, so that the clamp bound ``B·c`` stays finite and ``1/c``
  normal (XLA:CPU flushes subnormals to 0, and the limit would vanish); a
  Python ``c`` beyond the dtype's largest number is capped the same way,
  not rounded to ``inf``. Updates are never that large in practice; the
  bound ``‖v‖ <= c`` holds either way.
  """
  info = jnp.finfo(dtype)
  cap = 2.0 ** (info.maxexp - 41)  # B·cap = 2^(m-1) < max, and 1/cap is normal
  if isinstance(speed_limit, (int, float)):
    x = float(speed_limit)
    c = jnp.asarray(x if x == math.inf or math.isnan(x) else min(x, cap), dtype)
  else:
    c = jnp.asarray(speed_limit)
    if not jnp.issubdtype(c.dtype, jnp.floating):
      c = c.astype(dtype)
    cap_c = min(cap, float(jnp.finfo(c.dtype).max))  # float16's is 65504
    c = jax.lax.select(c == math.inf, c, jnp.minimum(c, jnp.asarray(cap_c, c.dtype)))
    c = cast(c, dtype)
  zero = c < info.tiny
  inv_c = 1 / jax.lax.select(zero, jnp.ones_like(c), c)
  bound = jax.lax.select(zero, jnp.zeros_like(c), jnp.minimum(_CLAMP * c, info.max))
  finite_c = jax.lax.select(zero | (inv_c == 0), jnp.ones_like(c), c)
  return _Limit(inv_c, bound, -bound, finite_c)


def cast(x: jax.Array, dtype: Any) -> jax.Array:
  """``x.astype(dtype)``, without its tracing cost when ``x`` has it already
  (a few operations per leaf add up to seconds of tracing at 2,000 leaves)."""
  return x if x.dtype == dtype else x.astype(dtype)


def _clamp(u: jax.Array, lim: _Limit) -> jax.Array:
  """``u`` with each real component clipped to ``±bound`` (NaN stays NaN).

  For complex ``u`` the real and imaginary parts are clipped apart, which
  keeps the phase of every entry below the bound."""
  if jnp.iscomplexobj(u):
    return jax.lax.complex(_clamp(u.real, lim), _clamp(u.imag, lim))
  return jnp.minimum(jnp.maximum(u, lim.neg_bound), lim.bound)


def _sharded_flags(leaves: Sequence[jax.Array], axis_name: AxisName | None) -> list[bool]:
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


def _group_sum(
  sums: Sequence[jax.Array], sharded: Sequence[bool], axis_name: AxisName | None
) -> jax.Array:
  """The sum of per-leaf sums over one group (``global``), on every device.

  A leaf sharded over ``axis_name`` holds part of the group on each device, so
  its sum is added up across the axis (one ``psum`` for all of them); a
  replicated leaf holds all of it on every device and is counted once.
  """
  local = [s for s, f in zip(sums, sharded, strict=True) if f]
  whole = [s for s, f in zip(sums, sharded, strict=True) if not f]
  if local:
    whole.append(jax.lax.psum(_total(local), axis_name))
  return _total(whole)


def _leaf_sums_across(
  sums: Sequence[jax.Array], sharded: Sequence[bool], axis_name: AxisName | None
) -> list[jax.Array]:
  """Each leaf's sum over its whole leaf (``per_param``), on every device.

  The sums of the sharded leaves travel in one vector, so the step adds one
  all-reduce, not one per leaf; replicated leaves need none.
  """
  out = list(sums)
  local = [i for i, f in enumerate(sharded) if f]
  if local:
    total = jax.lax.psum(jnp.stack([sums[i] for i in local]), axis_name)
    for j, i in enumerate(local):
      out[i] = total[j]
  return out


def _total(values: Sequence[jax.Array]) -> jax.Array:
  return values[0] if len(values) == 1 else jnp.sum(jnp.stack(values))  # one reduction


def _leaf_sum(u: jax.Array, lim: _Limit) -> jax.Array:
  return leaf_sum(u, lim, lim.inv_c, _CLAMP)


def leaf_sum(u: jax.Array, lim: _Limit, inv_c: jax.Array, max_units: Any) -> jax.Array:
  """``q = Σ min(|u/c|, B)²`` over one leaf (``u`` in the compute dtype).

  For real ``u`` these are the values of ``|z/c|²`` (``z`` the clamped
  update), written with operations that XLA:CPU fuses into its reduction
  kernels (a clip is not one of them: the producer of ``u`` would then be
  written to memory first). The square comes last: XLA rewrites ``(x·k)²`` as
  ``x²·k²``, and ``k² = 1/c²`` overflows for ``c < 1e-19``. Complex ``u`` is
  clamped first: ``inf·(1/c)`` in complex arithmetic is ``inf + NaN·i``.
  ``inv_c`` and ``max_units`` are ``lim.inv_c`` and ``B``, or the same values
  passed through an ``optimization_barrier`` (see ``_recipes._recompute``).
  """
  if jnp.iscomplexobj(u):
    u = _clamp(u, lim)
  return jnp.sum(jnp.square(jnp.minimum(jnp.abs(u * inv_c), max_units)))


# Given each leaf's limit, recomputes some leaves' sums q (equal values, from
# another expression for XLA; None for a leaf not recomputed); see scale_leaves.
Recompute = Callable[[Sequence[_Limit]], Sequence[jax.Array | None]]


def scale_leaves(
  leaves: Sequence[jax.Array],
  speed_limit: jax.typing.ArrayLike | Sequence[jax.typing.ArrayLike],
  mode: str,
  formula: str,
  axis_name: AxisName | None = None,
  recompute: Recompute | None = None,
  *,
  return_q: bool = False,
) -> list[jax.Array] | tuple[list[jax.Array], list[jax.Array]]:
  """The scaling of a list of arrays (the array leaves of an update pytree).

  Args:
    leaves: floating-point or complex arrays ``u``.
    speed_limit: ``c``, a scalar (may be traced); or, except in ``global``
      mode, a sequence of one scalar per leaf (a limit for each group).
    mode: one of :data:`MODES`.
    formula: one of :data:`FORMULAS`.
    axis_name: as in :func:`relativistic_scale`.
    recompute: optional; given the leaves' limits, returns for each leaf its
      sum ``q`` (:func:`leaf_sum`) taken from the leaf computed again, by the
      same expressions from inputs behind an ``optimization_barrier``, or
      ``None``: the ``global`` / ``per_param`` norms are taken from these on
      CPU only (``jax.lax.platform_dependent``). XLA does
      not duplicate an expensive producer (Adam's division) for two
      consumers, so when ``u`` feeds both the norm and the step it writes
      ``u`` to memory; on XLA:CPU that costs more than computing ``u`` twice
      (``benchmarks/step_overhead.py``). Other backends take the norms from
      ``leaves``. Both give the same values.
    return_q: also return each group's ``q = Σ min(|u/c|, 2^40)²`` (one for
      ``global``, one per leaf for ``per_param``; not for ``per_component``),
      from which ``‖u‖ = c·sqrt(q)`` and ``‖v‖ = c·sqrt(q)·f(q)`` follow.

  Returns:
    The scaled arrays, each of its leaf's dtype (and the list of ``q``).
  """
  if not leaves:
    return ([], []) if return_q else []
  for u in leaves:
    if not jnp.issubdtype(u.dtype, jnp.inexact):
      raise TypeError(f"updates must be floating-point or complex arrays, got dtype {u.dtype}.")
  dtype = jnp.result_type(jnp.float32, *(u.dtype for u in leaves))  # norms in >= float32
  real = jnp.finfo(dtype).dtype
  if isinstance(speed_limit, (list, tuple)):
    if mode == "global" or len(speed_limit) != len(leaves):
      raise ValueError("a sequence of speed limits needs one per leaf, and not mode='global'.")
    limits = [_limit(c, real) for c in speed_limit]
  else:
    limits = [_limit(speed_limit, real)] * len(leaves)
  wide = [cast(u, dtype) for u in leaves]
  z = [_clamp(u, lim) for u, lim in zip(wide, limits, strict=True)]

  if mode == "per_component":
    if return_q:
      raise ValueError("return_q is not available for mode='per_component'.")
    out = [
      scale_entries(zi, lim.inv_c, lim.finite_c, formula, _CLAMP)
      for zi, lim in zip(z, limits, strict=True)
    ]
    return [cast(v, u.dtype) for u, v in zip(leaves, out, strict=True)]

  def sums_of(xs: Sequence[jax.Array]) -> list[jax.Array]:
    return [_leaf_sum(x, lim) for x, lim in zip(xs, limits, strict=True)]

  if recompute is None:
    sums = sums_of(wide)
  else:
    sums = jax.lax.platform_dependent(
      cpu=lambda: [
        s if r is None else r for r, s in zip(recompute(limits), sums_of(wide), strict=True)
      ],
      default=lambda: sums_of(wide),
    )
  sharded = _sharded_flags(leaves, axis_name)
  if mode == "global":
    qs = [_group_sum(sums, sharded, axis_name)]
    f = speed_factor(qs[0], formula)
    out = [zi * f for zi in z]
  else:
    qs = _leaf_sums_across(sums, sharded, axis_name)
    out = [zi * speed_factor(q, formula) for zi, q in zip(z, qs, strict=True)]
  out = [cast(v, u.dtype) for u, v in zip(leaves, out, strict=True)]
  return (out, qs) if return_q else out


def array_leaves(tree: Any) -> tuple[list[Any], Any, list[int]]:
  """``tree``'s leaves (``None`` and ``optax.MaskedNode`` kept as leaves), its
  treedef, and the positions of the array leaves among them."""
  leaves, treedef = jax.tree.flatten(tree, is_leaf=lambda x: not _is_array_leaf(x))
  return leaves, treedef, [i for i, x in enumerate(leaves) if _is_array_leaf(x)]


def scale_tree(
  updates: optax.Updates,
  speed_limit: jax.typing.ArrayLike,
  mode: str,
  formula: str,
  axis_name: AxisName | None = None,
  recompute: Recompute | None = None,
) -> optax.Updates:
  """:func:`scale_leaves` on the array leaves of a pytree (no validation).

  ``None`` and ``optax.MaskedNode`` leaves pass through; ``recompute``, if
  given, returns one array per array leaf, in ``jax.tree.leaves`` order.
  """
  leaves, treedef, positions = array_leaves(updates)
  arrays = [jnp.asarray(leaves[i]) for i in positions]
  scaled = scale_leaves(arrays, speed_limit, mode, formula, axis_name, recompute)
  for i, v in zip(positions, scaled, strict=True):
    leaves[i] = v
  return jax.tree.unflatten(treedef, leaves)


def check_speed_limit(speed_limit: Any) -> None:
  """The one rule for a speed limit: a real scalar in [0, inf], or a schedule.

  ``0`` stops the updates (``v = 0``), ``inf`` removes the limit.
  """
  check_scalar_or_schedule("speed_limit", speed_limit, lower=0.0, allow_inf=True)


def check_mode_and_formula(mode: Any, formula: Any) -> None:
  """Raises a ``ValueError`` for an unknown ``mode`` or ``formula``."""
  check_choice("mode", mode, MODES)
  check_choice("formula", formula, FORMULAS)


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
  ``"per_param"`` and each element for ``"per_component"``. Complex entries
  count with their modulus (``n² = Σ |u_i|²``) and keep their phase.

  Numerics: norms are accumulated in float32 (or the input's dtype if wider),
  so bfloat16 and float16 updates cannot overflow; the result has the input's
  dtype and is finite for every input without NaN. ``u = 0`` gives 0 and
  ``c = inf`` gives ``u`` (an infinite entry then makes its group NaN:
  ``inf/inf``). Entries larger than ``2^40·c`` are clipped to
  ``±2^40·c`` before anything else: their group is then at the limit ``c`` to
  working precision, so an infinite or overflowing update saturates at ``c``,
  the clipped entries sharing it by their signs. A NaN stays NaN and never
  reaches another group (see ``docs/reliability.md`` for its own group).
  ``lorentz`` and ``tanh`` are differentiable everywhere, including at
  ``u = 0``. ``c = 0`` (for example a schedule that starts at 0), and a
  traced ``c`` below the smallest normal number, gives ``v = 0``; a finite
  ``c`` above ``2^87 ≈ 1.5e26`` (float32) acts as ``2^87``.

  Differences from relativistic-adam 1.0.0: its formula is ``reference``
  (not continuous, not monotone: an update just under the limit is almost
  cancelled); and its ``"global"`` mode takes the norm tensor by tensor, so it
  equals ``"per_param"`` there, whereas here ``"global"`` uses one norm for the
  whole pytree, as its documentation promises.

  Args:
    updates: a pytree of floating-point or complex arrays; ``None`` and
      ``optax.MaskedNode`` leaves pass through.
    speed_limit: the speed limit ``c >= 0`` (``inf`` for none; ``0`` gives
      ``v = 0``), a real scalar; a traced value is not checked.
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

  Raises:
    TypeError: for a ``speed_limit`` that is not a real scalar, or updates
      that are not floating-point or complex.
    ValueError: for a concrete ``speed_limit < 0`` or NaN, or an unknown
      ``mode`` or ``formula``.

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
  check_mode_and_formula(mode, formula)
  check_speed_limit(speed_limit)
  return scale_tree(updates, speed_limit, mode, formula, axis_name)
