"""``relativistic_adam``'s step with the norm taken from Adam's moments.

``optax.chain(adam, scale_by_learning_rate, scale_by_relativistic)`` computes
Adam's update ``u = m̂ / (sqrt(v̂) + eps)`` once and reads it twice: for the norm
and for the scaled step. XLA does not recompute a division for two consumers,
so on CPU it writes ``u`` to a scratch buffer and the step costs 3-6x Adam's
(``benchmarks/step_overhead.py``). Here the norm is computed from the new
moments by a second, algebraically equal expression,

  ``u = ρ · y``,  ``y = m / (sqrt(v + eps_root') + eps')``,

with scalars ``ρ``, ``eps'``, ``eps_root'`` folded out of the elementwise part.
``u`` itself (Optax's own expression) then has a single consumer, the scaled
step, and fuses into the parameter update: the step is Adam's passes plus one
reduction over the moments, with no scratch buffers.

Each leaf's reduction gets its own copy of every scalar it uses
(:func:`_per_leaf`): XLA:CPU hands large reductions to YNNPACK, which reads a
scalar shared by several reductions as a broadcast materialised to the full
leaf size (one scratch buffer per scalar, written and read every step). The
copies are equal to the scalar, so this changes no value, only the buffers.

Everything else is the chain's: the state is the chain's state (same
structure, same values), the moments, the learning rate and ``u`` are computed
by the Optax transformations themselves, and the group scalars go through the
same :func:`group_scale`. Results equal the chain's up to float32 rounding of
the norm; tests check this for every Adam variant. Inputs the fast path does
not cover (dtypes other than float32, ``per_component``, a moment state of a
different structure) take the chain itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from relax_optax._scaling import (
  apply_group_scale,
  concrete_float,
  group_scale,
  safe_speed_limit,
)
from relax_optax._transform import ScaleByRelativisticState

# Tests set this to False to run the reference chain instead (read at trace time).
FAST_PATH = True


class AdamSpec(NamedTuple):
  """Which Adam computed the moments, and its hyperparameters.

  ``kind`` is ``"adam"`` (``optax.scale_by_adam``), ``"amsgrad"``
  (``optax.scale_by_amsgrad``) or ``"step_size"`` (relativistic-adam's bias
  correction of the step size, with or without AMSGrad).
  """

  kind: str
  b1: Any
  b2: Any
  eps: Any
  eps_root: Any
  nesterov: bool
  amsgrad: bool
  step_size: Any  # For "step_size": a function of the incremented count.


def _per_leaf(x: jax.Array, leaf: int, t: jax.Array) -> jax.Array:
  """``x`` (a non-negative scalar) as a distinct HLO value for each leaf.

  ``max(x, -(leaf + 1) - t)`` equals ``x`` for ``x >= 0`` (and is NaN for a NaN
  ``x``), but XLA cannot prove it, so it neither folds it nor merges the
  copies of different leaves (see the module docstring for why that matters).
  """
  return jnp.maximum(x, -(leaf + 1) - t)


def _inverse_correction(decay: Any, count: jax.Array) -> jax.Array:
  """``1 / (1 - decay^count)``, rounded exactly as Optax's bias correction."""
  return optax.tree.bias_correction(jnp.ones((), jnp.float32), decay, count)


def _norm_terms(
    spec: AdamSpec, grads: list[jax.Array], moments: Any, count: jax.Array
) -> tuple[Callable[[int], jax.Array], int, jax.Array]:
  """``y``, the number of leaves and ``ρ``, with Adam's update ``u_i = ρ · y(i)``."""
  b1, b2, eps, eps_root = spec.b1, spec.b2, spec.eps, spec.eps_root
  t = count.astype(jnp.float32)
  # With eps_root = 0, sqrt(v + eps_root) is sqrt(v) for "amsgrad" and
  # "step_size", the very expression Optax's update uses: XLA would merge the
  # two and write sqrt(v) to a buffer. Adding the per-leaf copy of eps_root
  # (even 0) keeps them apart. ("adam" takes the root of v, Optax of v̂.)
  use_root = spec.kind != "adam" or concrete_float(eps_root) != 0.0
  mus = jax.tree.leaves(moments.mu)
  nus = jax.tree.leaves(moments.nu_max if spec.amsgrad else moments.nu)
  if spec.kind == "adam":
    # m̂ / (sqrt(v̂ + eps_root) + eps) with m̂ = m·i1, v̂ = v·i2 (i = 1/(1 - b^t))
    #   = (i1 / sqrt(i2)) · m / (sqrt(v + eps_root/i2) + eps/sqrt(i2)).
    # The inverse corrections come from Optax's own function: 1 - b^t loses
    # digits to cancellation, so a recomputation that rounds b^t differently
    # would be off by up to 1e-5 (relative) early in training.
    i1, i2 = _inverse_correction(b1, count), _inverse_correction(b2, count)
    root_i2 = jnp.sqrt(i2)
    eps_y, root_y = eps / root_i2, eps_root / i2
    rho = i1 / root_i2
    if spec.nesterov:
      # m̂ = b1 · m · i1(t+1) + (1 - b1) · g · i1(t).
      alpha = b1 * _inverse_correction(b1, optax.safe_increment(count))
      beta = (1 - b1) * i1
      rho = 1 / root_i2
  elif spec.kind == "amsgrad":
    # m̂ / (sqrt(max v̂ + eps_root) + eps) = (1 / bc1) · m / (...).
    eps_y, root_y = eps, eps_root
    rho = _inverse_correction(b1, count)
  else:
    # step_size · m / (sqrt(v + eps_root) + eps).
    eps_y, root_y = eps, eps_root
    rho = spec.step_size(count)

  def y(i: int) -> jax.Array:
    # Leaf i's y, built anew on each call: the norm's reduction computes it in
    # its own pass, so neither y nor u is written to a buffer. (The rare
    # saturated branch of the cond builds its own; XLA does write that one
    # to a buffer, allocated but not touched unless the branch runs.)
    m, v = mus[i], nus[i]
    if use_root:
      v = v + _per_leaf(jnp.asarray(root_y, jnp.float32), i, t)
    if spec.kind == "adam" and spec.nesterov:
      m = m * _per_leaf(alpha, i, t) + grads[i] * _per_leaf(beta, i, t)
    return m / (jnp.sqrt(v) + _per_leaf(jnp.asarray(eps_y, jnp.float32), i, t))

  return y, len(mus), jnp.asarray(rho, jnp.float32)


def _eligible(grads: list[jax.Array], moments: Any, spec: AdamSpec) -> bool:
  """Whether the fast path covers these inputs (else the chain runs)."""
  if not isinstance(moments, (optax.ScaleByAdamState, optax.ScaleByAmsgradState)):
    return False
  mus = jax.tree.leaves(moments.mu)
  nus = jax.tree.leaves(moments.nu_max if spec.amsgrad else moments.nu)
  arrays = [*grads, *mus, *nus]
  return (
      bool(grads)
      and len(mus) == len(nus) == len(grads)
      and all(isinstance(x, jax.Array) and x.dtype == jnp.float32 for x in arrays)
      and all(m.shape == g.shape for m, g in zip(mus, grads, strict=True))
  )


def speed_limited_adam(
    before: Sequence[optax.GradientTransformation],
    moments: optax.GradientTransformation,
    spec: AdamSpec,
    learning_rate: optax.ScalarOrSchedule,
    speed_limit: optax.ScalarOrSchedule,
    relativistic: optax.GradientTransformation,
    after: Sequence[optax.GradientTransformation],
    mode: str,
    formula: str,
) -> optax.GradientTransformation:
  """``optax.chain(*before, moments, lr, relativistic, *after)``, fused.

  Args:
    before: transformations applied to the gradients before the moments.
    moments: the Adam transformation (as described by ``spec``).
    spec: what ``moments`` computes.
    learning_rate: the scalar or schedule of ``scale_by_learning_rate``.
    speed_limit: the speed limit (scalar or schedule) of ``relativistic``.
    relativistic: ``scale_by_relativistic(speed_limit, mode, formula)``.
    after: transformations applied to the speed-limited step.
    mode: ``"global"`` or ``"per_param"``.
    formula: the formula of ``relativistic``.

  Returns:
    A transformation with the chain's state and, up to rounding, its updates.
  """
  lr = optax.scale_by_learning_rate(learning_rate)
  parts = [*before, moments, lr, relativistic, *after]
  reference = optax.chain(*parts)
  i_moments = len(before)

  def update_fn(updates, state, params=None):
    states = list(state)
    for i, tx in enumerate(before):
      updates, states[i] = tx.update(updates, states[i], params)
    grads = jax.tree.leaves(updates)
    rest = i_moments  # The first part still to run as in the chain.
    if FAST_PATH and _eligible(grads, states[i_moments], spec):
      updates = _moments_lr_limit(updates, grads, states, params)
      rest += 3
    for i in range(rest, len(parts)):
      updates, states[i] = parts[i].update(updates, states[i], params)
    return updates, tuple(states)

  def _moments_lr_limit(updates, grads, states, params):
    """The moments, learning rate and speed limit parts; updates ``states``."""
    i = i_moments
    lr_state, limit_state = states[i + 1], states[i + 2]
    u, states[i] = moments.update(updates, states[i], params)
    w, states[i + 1] = lr.update(u, lr_state, params)
    # The factor that scale_by_learning_rate applied, and the speed limit.
    k = -learning_rate(lr_state.count) if callable(learning_rate) else -learning_rate
    if callable(speed_limit):
      c = speed_limit(limit_state.count)
      states[i + 2] = ScaleByRelativisticState(
          count=optax.safe_int32_increment(limit_state.count)
      )
    else:
      c = speed_limit
    count = states[i].count
    y, n, rho = _norm_terms(spec, grads, states[i], count)
    return _limit(w, y, n, rho * jnp.asarray(k, jnp.float32), c)

  def _limit(w, y, n, r, c):
    """Scales ``w`` (``= r · y`` leaf by leaf) as ``relativistic_scale`` does."""
    leaves, treedef = jax.tree.flatten(w)
    positive, c_safe = safe_speed_limit(c, jnp.float32)
    s = jnp.abs(r) / c_safe  # (u/c) = ±s · y.
    groups = [list(range(n))] if mode == "global" else [[i] for i in range(n)]
    out = list(leaves)
    for group in groups:
      # q = s² · Σ y²: the scalar stays out of the reduction (one operation
      # less per element); s² · 0 is 0 even if s² overflowed, and an
      # overflowing product takes the saturated branch of the cond.
      sum_y2 = sum(jnp.sum(jnp.square(y(i))) for i in group)
      q = jnp.where(sum_y2 == 0, 0, jnp.square(s) * sum_y2)
      scale = group_scale(
          q, c_safe, formula, lambda group=group: [y(i) * r for i in group],
          axis_name=None, sharded=[False] * len(group),
      )
      for i in group:
        out[i] = jnp.where(positive, apply_group_scale(leaves[i], scale), 0)
    return jax.tree.unflatten(treedef, out)

  return optax.GradientTransformation(reference.init, update_fn)
