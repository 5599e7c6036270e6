"""What relativistic-adam 1.0.0 (PyTorch) computes differently from Optax's Adam.

``bias_correction="step_size"`` selects :func:`scale_by_adam_step_size_correction`,
which reproduces the original's order of operations (its AMSGrad included);
together with ``formula="reference"`` it reproduces a PyTorch run (see
``docs/migrating_from_pytorch.md``). Nothing else in the package depends on it.
"""

from __future__ import annotations

import typing
from typing import Literal

import jax
import jax.numpy as jnp
import optax

from relax_optax._numerics import one_minus_power

BiasCorrection = Literal["moments", "step_size"]
BIAS_CORRECTIONS: tuple[str, ...] = typing.get_args(BiasCorrection)


def step_size_correction(
  b1: jax.typing.ArrayLike, b2: jax.typing.ArrayLike, count: jax.Array
) -> jax.Array:
  """``sqrt(1 - b2^t) / (1 - b1^t)`` at the incremented count ``t``."""
  t = count.astype(jnp.float32)
  return jnp.sqrt(one_minus_power(b2, t)) / one_minus_power(b1, t)


def step_size_update(
  m: jax.Array,
  v: jax.Array,
  step_size: jax.Array,
  eps: jax.typing.ArrayLike,
  eps_root: jax.typing.ArrayLike,
) -> jax.Array:
  """One leaf's step from the new moments ``m``, ``v`` (or AMSGrad's maximum).

  ``step_size * (exp_avg / (exp_avg_sq.sqrt() + eps))``: eps before the
  correction, as relativistic-adam 1.0.0; ``step_size`` is
  :func:`step_size_correction` at the new count.
  """
  direction = m / (jnp.sqrt(v + eps_root) + eps)
  return (step_size * direction).astype(direction.dtype)


def scale_by_adam_step_size_correction(
  b1: jax.typing.ArrayLike,
  b2: jax.typing.ArrayLike,
  eps: jax.typing.ArrayLike,
  eps_root: jax.typing.ArrayLike,
  mu_dtype: jax.typing.DTypeLike | None,
  amsgrad: bool,
) -> optax.GradientTransformation:
  """Adam with the bias correction folded into the step size, as relativistic-adam.

  ``sqrt(1 - b2^t) / (1 - b1^t) · m / (sqrt(v + eps_root) + eps)``, with ``v``
  replaced by its running maximum for AMSGrad: the "efficient version" of
  Kingma and Ba (2015, end of section 2) and the order of operations of
  relativistic-adam 1.0.0. It equals ``optax.scale_by_adam`` with ``eps``
  replaced by ``eps / sqrt(1 - b2^t)`` (larger early in training), and
  ``optax.scale_by_amsgrad`` with the maximum taken over the raw second moment
  instead of the bias-corrected one (as ``torch.optim.Adam`` does). The state
  is Optax's ``ScaleByAdamState`` (``ScaleByAmsgradState`` for AMSGrad).
  """
  mu_dtype = None if mu_dtype is None else jax.dtypes.canonicalize_dtype(mu_dtype)

  def init_fn(params: optax.Params) -> optax.ScaleByAdamState | optax.ScaleByAmsgradState:
    count = jnp.zeros([], jnp.int32)
    mu = optax.tree_utils.tree_zeros_like(params, dtype=mu_dtype)  # m
    nu = optax.tree_utils.tree_zeros_like(params)  # v
    if amsgrad:
      nu_max = optax.tree_utils.tree_zeros_like(params)  # max over steps of v
      return optax.ScaleByAmsgradState(count=count, mu=mu, nu=nu, nu_max=nu_max)
    return optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

  def update_fn(updates, state, params=None):
    del params
    # exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1), same for exp_avg_sq.
    mu = optax.tree_utils.tree_update_moment(updates, state.mu, b1, 1)
    nu = optax.tree_utils.tree_update_moment_per_elem_norm(updates, state.nu, b2, 2)
    count_inc = optax.safe_increment(state.count)
    if amsgrad:
      # torch.maximum(max_exp_avg_sq, exp_avg_sq): the raw, uncorrected v.
      nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu)
      denom_nu = nu_max
    else:
      denom_nu = nu
    step_size = step_size_correction(b1, b2, count_inc)
    updates = jax.tree.map(
      lambda m, v: None if m is None else step_size_update(m, v, step_size, eps, eps_root),
      mu,
      denom_nu,
      is_leaf=lambda x: x is None,
    )
    mu = optax.tree_utils.tree_cast(mu, mu_dtype)
    if amsgrad:
      return updates, optax.ScaleByAmsgradState(count=count_inc, mu=mu, nu=nu, nu_max=nu_max)
    return updates, optax.ScaleByAdamState(count=count_inc, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)
