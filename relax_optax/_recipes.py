"""``relativistic_adam`` and ``relativistic_adamw``: recipes of Optax parts."""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any, Literal, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from relax_optax._adam_norms import AdamSpec, norm_sources, step_size_correction
from relax_optax._formulas import Formula
from relax_optax._groups import AxisName, Mode, check_mode_and_formula
from relax_optax._relative import (
  RelativeSpeedLimit,
  _scale_by_relative_speed_limit,
  check_relative_speed_limit,
)
from relax_optax._schedules import speed_limit_warmup
from relax_optax._transform import _scale_by_relativistic
from relax_optax._validation import (
  check_bool,
  check_choice,
  check_int,
  check_scalar,
  check_scalar_or_schedule,
)

BiasCorrection = Literal["moments", "step_size"]
# A fixed speed limit (a scalar or a schedule) or one relative to the run's own norms.
SpeedLimit = Union[optax.ScalarOrSchedule, RelativeSpeedLimit]  # noqa: UP007 (autodoc alias)
BIAS_CORRECTIONS: tuple[str, ...] = typing.get_args(BiasCorrection)


def _scale_by_adam_step_size_correction(
  b1: jax.typing.ArrayLike,
  b2: jax.typing.ArrayLike,
  eps: jax.typing.ArrayLike,
  eps_root: jax.typing.ArrayLike,
  mu_dtype: Any,
  amsgrad: bool,
) -> optax.GradientTransformation:
  """Adam with the bias correction folded into the step size, as relativistic-adam.

  ``sqrt(1 - b2^t) / (1 - b1^t) · m / (sqrt(v + eps_root) + eps)``, with ``v``
  replaced by its running maximum for AMSGrad: the "efficient version" of
  Kingma and Ba (2015, end of section 2) and the order of operations of
  relativistic-adam 1.0.0. It equals ``optax.scale_by_adam`` with ``eps``
  replaced by ``eps / sqrt(1 - b2^t)`` (larger early in training), and
  ``optax.scale_by_amsgrad`` with the maximum taken over the raw second moment
  instead of the bias-corrected one. The state is Optax's
  ``ScaleByAdamState`` (``ScaleByAmsgradState`` for AMSGrad).
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

    def step(m, v):
      # step_size * (exp_avg / (exp_avg_sq.sqrt() + eps)): eps before correction.
      direction = m / (jnp.sqrt(v + eps_root) + eps)
      return (step_size * direction).astype(direction.dtype)

    updates = jax.tree.map(
      lambda m, v: None if m is None else step(m, v), mu, denom_nu, is_leaf=lambda x: x is None
    )
    mu = optax.tree_utils.tree_cast(mu, mu_dtype)
    if amsgrad:
      return updates, optax.ScaleByAmsgradState(count=count_inc, mu=mu, nu=nu, nu_max=nu_max)
    return updates, optax.ScaleByAdamState(count=count_inc, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def _check_args(
  learning_rate,
  b1,
  b2,
  eps,
  eps_root,
  weight_decay,
  speed_limit,
  mode,
  formula,
  amsgrad,
  adaptive_speed,
  speed_warmup_steps,
  nesterov,
  bias_correction,
  norms_from_moments,
) -> None:
  """Validates the arguments shared by the recipes, each with one rule."""
  check_scalar_or_schedule("learning_rate", learning_rate, lower=0.0)
  check_scalar("b1", b1, lower=0.0, upper=1.0, upper_open=True)
  check_scalar("b2", b2, lower=0.0, upper=1.0, upper_open=True)
  check_scalar("eps", eps, lower=0.0)
  check_scalar("eps_root", eps_root, lower=0.0)
  check_scalar_or_schedule("weight_decay", weight_decay, lower=0.0)
  if isinstance(speed_limit, RelativeSpeedLimit):
    check_relative_speed_limit(speed_limit, mode, formula, adaptive_speed)
  else:
    check_scalar_or_schedule("speed_limit", speed_limit, lower=0.0, lower_open=True, allow_inf=True)
  check_mode_and_formula(mode, formula)
  check_bool("amsgrad", amsgrad)
  check_bool("adaptive_speed", adaptive_speed)
  check_int("speed_warmup_steps", speed_warmup_steps)
  check_bool("nesterov", nesterov)
  check_choice("bias_correction", bias_correction, BIAS_CORRECTIONS)
  check_bool("norms_from_moments", norms_from_moments)
  if amsgrad and nesterov:
    raise ValueError("amsgrad=True and nesterov=True cannot be combined.")
  if bias_correction == "step_size" and nesterov:
    raise ValueError('bias_correction="step_size" and nesterov=True cannot be combined.')


def adam_with_speed_limit(
  learning_rate: optax.ScalarOrSchedule,
  b1: jax.typing.ArrayLike,
  b2: jax.typing.ArrayLike,
  eps: jax.typing.ArrayLike,
  eps_root: jax.typing.ArrayLike,
  mu_dtype: Any,
  nesterov: bool,
  amsgrad: bool,
  speed_limit: SpeedLimit,
  mode: str,
  formula: str,
  adaptive_speed: bool,
  speed_warmup_steps: int,
  bias_correction: str,
  axis_name: AxisName | None,
  before: list[optax.GradientTransformation],
  after: list[optax.GradientTransformation],
  *,
  norms_from_moments: bool = True,
) -> optax.GradientTransformation:
  """``optax.chain(*before, adam, scale_by_learning_rate, speed limit, *after)``.

  With ``norms_from_moments`` (and ``mode`` not ``"per_component"``, which is
  one pass already) the chain runs with the speed limit's group norms taken
  from Adam's new moments (``_adam_norms.py``): the same state and the same
  updates up to float32 rounding of the norms, without writing Adam's update
  to memory. Tests set it to False to run the plain chain.
  """
  if bias_correction == "step_size":
    moments = _scale_by_adam_step_size_correction(b1, b2, eps, eps_root, mu_dtype, amsgrad)
    kind = "step_size"
  elif amsgrad:
    moments = optax.scale_by_amsgrad(b1, b2, eps, eps_root, mu_dtype)
    kind = "amsgrad"
  else:
    moments = optax.scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov)
    kind = "adam"
  lr = optax.scale_by_learning_rate(learning_rate)
  if isinstance(speed_limit, RelativeSpeedLimit):
    limit = _scale_by_relative_speed_limit(*speed_limit, mode, axis_name)
  else:
    c = speed_limit_warmup(speed_limit, speed_warmup_steps) if adaptive_speed else speed_limit
    limit = _scale_by_relativistic(c, mode, formula, axis_name)
  parts = [*before, moments, lr, limit, *after]
  chain = optax.chain(*parts)
  if mode == "per_component" or not norms_from_moments or mu_dtype is not None:
    # per_component is one fused pass already; with mu_dtype the state holds
    # the first moment rounded to it, not the one Adam's step used.
    return chain
  spec = AdamSpec(kind, b1, b2, eps, eps_root, nesterov, amsgrad)
  i_moments = len(before)

  def update_fn(updates, state, params=None):
    states = list(state)
    for i, part in enumerate(parts):
      if i == i_moments:
        grads = jax.tree.leaves(updates)
      if i == i_moments + 1:
        # The factor scale_by_learning_rate applies at this step.
        scale = -(learning_rate(states[i].count) if callable(learning_rate) else learning_rate)
      if i == i_moments + 2:
        sources = norm_sources(spec, grads, states[i_moments], scale)
        updates, states[i] = part.update(updates, states[i], params, norm_sources=sources)
      else:
        updates, states[i] = part.update(updates, states[i], params)
    return updates, tuple(states)

  return optax.GradientTransformation(chain.init, update_fn)


def _is_zero(x: Any) -> bool:
  """Whether ``x`` is a Python or NumPy zero. JAX arrays count as non-zero: the
  chain's structure (its state) must not depend on an array's value, which
  ``optax.inject_hyperparams`` passes concrete to ``init`` and traced to ``update``."""
  return isinstance(x, (int, float, np.number)) and not isinstance(x, bool) and x == 0


def relativistic_adam(
  learning_rate: optax.ScalarOrSchedule = 1e-3,
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  *,
  speed_limit: SpeedLimit = 0.1,
  mode: Mode = "per_param",
  formula: Formula = "lorentz",
  weight_decay: jax.typing.ArrayLike = 0.0,
  amsgrad: bool = False,
  adaptive_speed: bool = False,
  speed_warmup_steps: int = 1000,
  eps_root: jax.typing.ArrayLike = 0.0,
  mu_dtype: jax.typing.DTypeLike | None = None,
  nesterov: bool = False,
  bias_correction: BiasCorrection = "moments",
  axis_name: AxisName | None = None,
  norms_from_moments: bool = True,
) -> optax.GradientTransformation:
  """Adam whose update, in parameter units, never exceeds a speed limit ``c``.

  The Adam step ``u = -lr · m̂ / (sqrt(v̂) + eps)`` is replaced by
  ``v = u / sqrt(1 + (‖u‖/c)²)`` (``formula="lorentz"``), with ``‖u‖`` taken
  per leaf, over all leaves or per element (``mode``). It is the recipe::

    optax.chain(
        optax.add_decayed_weights(weight_decay),   # only if weight_decay != 0
        optax.scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
        optax.scale_by_learning_rate(learning_rate),
        relax_optax.scale_by_relativistic(speed_limit, mode=mode, formula=formula),
    )

  with ``optax.scale_by_amsgrad`` for ``amsgrad=True``, the schedule
  :func:`speed_limit_warmup` as the speed limit for ``adaptive_speed=True``,
  and, for ``bias_correction="step_size"``, a version of Adam that bias-corrects
  the step size instead of the moments (as the original does).
  For ``speed_limit`` much larger than the updates it equals ``optax.adam``.

  For ``mode="global"`` and ``"per_param"`` the group norms are taken from
  Adam's new moments by an expression equal to the update (see
  ``norms_from_moments``), so that XLA keeps the step to Adam's passes plus
  one reduction per leaf (``benchmarks/step_overhead.py``); the state is the
  chain's, and the updates equal the chain's up to float32 rounding of the
  norm (with ``formula="reference"``, a norm within rounding of ``c`` can
  fall on either side of its jump).

  Differences from relativistic-adam 1.0.0 (PyTorch), each with the option
  that reproduces the original (see ``docs/migrating_from_pytorch.md``):

  - the default formula is ``lorentz``; ``formula="reference"`` gives the
    original's discontinuous one;
  - ``mode="global"`` uses one norm for all parameters; the original applies
    it tensor by tensor, which is ``mode="per_param"``;
  - the bias correction divides the moments, as in ``optax.adam``, so ``eps``
    is added to ``sqrt(v̂)`` and AMSGrad's maximum is over ``v̂``; the original
    folds it into the step size (``bias_correction="step_size"``), so its
    effective ``eps`` is ``eps / sqrt(1 - b2^t)`` (32·eps at step 1 for
    ``b2 = 0.999``, which matters when gradients are within a few orders of
    magnitude of ``eps``) and its AMSGrad maximum is over the raw ``v``.

  Args:
    learning_rate: a non-negative scalar or an Optax schedule.
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1).
    eps: non-negative term added to the denominator.
    speed_limit: the speed limit ``c > 0`` in parameter units, or a schedule;
      or :class:`relax_optax.RelativeSpeedLimit` (``k``, ``decay``,
      ``warmup_steps``) for a limit ``k`` times the run's own recent update
      norm (:func:`relax_optax.scale_by_relative_speed_limit` in place of
      ``scale_by_relativistic``; with ``mode`` ``"per_param"`` or
      ``"global"``, ``formula="lorentz"``, not ``adaptive_speed``). One
      argument for the one choice, so that a fixed and a relative limit
      cannot both be given; the option's fields travel together (and stay
      static under ``optax.inject_hyperparams``).
    mode: ``"global"``, ``"per_param"`` (default) or ``"per_component"``.
    formula: ``"lorentz"`` (default), ``"tanh"`` or ``"reference"``.
    weight_decay: non-negative coupled L2 coefficient, added to the gradient
      before the moments (as the original's ``weight_decay``).
    amsgrad: use AMSGrad's running maximum of the second moment.
    adaptive_speed: warm the speed limit up as ``c · min(1, t / w)``.
    speed_warmup_steps: ``w`` for ``adaptive_speed``; ``<= 0`` disables it.
    eps_root: non-negative term added inside the square root.
    mu_dtype: optional dtype of the first moment.
    nesterov: use Nesterov momentum (not with ``amsgrad``).
    bias_correction: ``"moments"`` (default, as ``optax.adam``) divides the
      moments by ``1 - b^t`` before ``eps`` is added and, for AMSGrad, before
      the running maximum; ``"step_size"`` multiplies the step by
      ``sqrt(1 - b2^t) / (1 - b1^t)`` instead, so that ``eps`` and the maximum
      apply to the raw moments, exactly as relativistic-adam 1.0.0 (and
      ``torch.optim.Adam``'s AMSGrad maximum) does. Use it with
      ``formula="reference"`` to reproduce a PyTorch run (not with
      ``nesterov``).
    axis_name: inside ``shard_map`` / ``pmap`` with parameters sharded over
      this axis, the group norms are summed across it (see
      :func:`relax_optax.relativistic_scale`); ``None`` under plain ``jit``.
    norms_from_moments: take the ``global`` / ``per_param`` norms from
      Adam's moments (default) rather than from the update itself: the same
      state and the same updates up to float32 rounding of the norm, without
      writing Adam's update to memory (a 2-4x faster step on CPU). ``False``
      runs the plain ``optax.chain`` of the recipe.

  Returns:
    An ``optax.GradientTransformation``.

  References:
    Kingma and Ba, 2015, "Adam: A Method for Stochastic Optimization".
    relativistic-adam 1.0.0 (PyPI), ``RelativisticAdam``.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import relax_optax
    >>> def f(x):
    ...   return jnp.sum(x ** 2)
    >>> solver = relax_optax.relativistic_adam(learning_rate=0.1, speed_limit=0.05)
    >>> params = jnp.array([1.0, 2.0, 3.0])
    >>> opt_state = solver.init(params)
    >>> for _ in range(3):
    ...   grad = jax.grad(f)(params)
    ...   updates, opt_state = solver.update(grad, opt_state, params)
    ...   params = optax.apply_updates(params, updates)
    ...   print(f"{f(params):.4f}")
    13.6695
    13.3436
    13.0222
  """
  _check_args(
    learning_rate,
    b1,
    b2,
    eps,
    eps_root,
    weight_decay,
    speed_limit,
    mode,
    formula,
    amsgrad,
    adaptive_speed,
    speed_warmup_steps,
    nesterov,
    bias_correction,
    norms_from_moments,
  )
  before = [] if _is_zero(weight_decay) else [optax.add_decayed_weights(weight_decay)]
  return adam_with_speed_limit(
    learning_rate,
    b1,
    b2,
    eps,
    eps_root,
    mu_dtype,
    nesterov,
    amsgrad,
    speed_limit,
    mode,
    formula,
    adaptive_speed,
    speed_warmup_steps,
    bias_correction,
    axis_name,
    before=before,
    after=[],
    norms_from_moments=norms_from_moments,
  )


def relativistic_adamw(
  learning_rate: optax.ScalarOrSchedule = 1e-3,
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  *,
  speed_limit: SpeedLimit = 0.1,
  mode: Mode = "per_param",
  formula: Formula = "lorentz",
  weight_decay: jax.typing.ArrayLike = 1e-2,
  mask: Any | Callable[[optax.Params], Any] | None = None,
  amsgrad: bool = False,
  adaptive_speed: bool = False,
  speed_warmup_steps: int = 1000,
  eps_root: jax.typing.ArrayLike = 0.0,
  mu_dtype: jax.typing.DTypeLike | None = None,
  nesterov: bool = False,
  bias_correction: BiasCorrection = "moments",
  axis_name: AxisName | None = None,
  norms_from_moments: bool = True,
) -> optax.GradientTransformation:
  """:func:`relativistic_adam` with decoupled weight decay after the update.

  As relativistic-adam 1.0.0's ``RelativisticAdamW``: the speed-limited step
  ``v`` is applied first, then the parameters are multiplied by
  ``(1 - lr · weight_decay)``, so ``p ← (p + v)(1 - lr·wd)``; the decay is not
  itself speed-limited. It is the recipe::

    optax.chain(
        optax.scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
        optax.scale_by_learning_rate(learning_rate),
        relax_optax.scale_by_relativistic(speed_limit, mode=mode, formula=formula),
        optax.masked(optax.chain(                      # (p + v)(1 - lr·wd) - p
            optax.scale_by_schedule(lambda t: 1 - lr(t) * weight_decay),
            optax.add_decayed_weights(lambda t: -lr(t) * weight_decay),
        ), mask),
    )

  Like :func:`relativistic_adam`, it takes the ``"global"`` and
  ``"per_param"`` norms from Adam's moments (same state, same updates up to
  rounding).

  This differs from ``optax.adamw``, which decays the parameters *before* the
  step (``p ← p - lr·(û + wd·p)``): the two differ by ``lr·wd·v`` per step.

  Args:
    learning_rate: a non-negative scalar or an Optax schedule.
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1).
    eps: non-negative term added to the denominator.
    speed_limit: the speed limit ``c > 0`` in parameter units, or a schedule;
      or :class:`relax_optax.RelativeSpeedLimit` (``k``, ``decay``,
      ``warmup_steps``) for a limit ``k`` times the run's own recent update
      norm (:func:`relax_optax.scale_by_relative_speed_limit` in place of
      ``scale_by_relativistic``; with ``mode`` ``"per_param"`` or
      ``"global"``, ``formula="lorentz"``, not ``adaptive_speed``). One
      argument for the one choice, so that a fixed and a relative limit
      cannot both be given; the option's fields travel together (and stay
      static under ``optax.inject_hyperparams``).
    mode: ``"global"``, ``"per_param"`` (default) or ``"per_component"``.
    formula: ``"lorentz"`` (default), ``"tanh"`` or ``"reference"``.
    weight_decay: non-negative decoupled decay coefficient.
    mask: a pytree of booleans (or a function of the params returning one)
      selecting the leaves to decay, as in ``optax.adamw``; ``None`` for all.
    amsgrad: use AMSGrad's running maximum of the second moment.
    adaptive_speed: warm the speed limit up as ``c · min(1, t / w)``.
    speed_warmup_steps: ``w`` for ``adaptive_speed``; ``<= 0`` disables it.
    eps_root: non-negative term added inside the square root.
    mu_dtype: optional dtype of the first moment.
    nesterov: use Nesterov momentum (not with ``amsgrad``).
    bias_correction: ``"moments"`` (default, as ``optax.adam``) divides the
      moments by ``1 - b^t`` before ``eps`` is added and, for AMSGrad, before
      the running maximum; ``"step_size"`` multiplies the step by
      ``sqrt(1 - b2^t) / (1 - b1^t)`` instead, so that ``eps`` and the maximum
      apply to the raw moments, exactly as relativistic-adam 1.0.0 (and
      ``torch.optim.Adam``'s AMSGrad maximum) does. Use it with
      ``formula="reference"`` to reproduce a PyTorch run (not with
      ``nesterov``).
    axis_name: inside ``shard_map`` / ``pmap`` with parameters sharded over
      this axis, the group norms are summed across it (see
      :func:`relax_optax.relativistic_scale`); ``None`` under plain ``jit``.
    norms_from_moments: take the ``global`` / ``per_param`` norms from
      Adam's moments (default) rather than from the update itself: the same
      state and the same updates up to float32 rounding of the norm, without
      writing Adam's update to memory (a 2-4x faster step on CPU). ``False``
      runs the plain ``optax.chain`` of the recipe.

  Returns:
    An ``optax.GradientTransformation``.

  References:
    Loshchilov and Hutter, 2019, "Decoupled Weight Decay Regularization".
    relativistic-adam 1.0.0 (PyPI), ``RelativisticAdamW``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import relax_optax
    >>> solver = relax_optax.relativistic_adamw(learning_rate=0.1, weight_decay=0.5)
    >>> params = {"w": jnp.ones(2)}
    >>> state = solver.init(params)
    >>> updates, state = solver.update({"w": jnp.zeros(2)}, state, params)
    >>> print(optax.apply_updates(params, updates)["w"])   # (1 + 0)(1 - 0.05)
    [0.95 0.95]
  """
  _check_args(
    learning_rate,
    b1,
    b2,
    eps,
    eps_root,
    weight_decay,
    speed_limit,
    mode,
    formula,
    amsgrad,
    adaptive_speed,
    speed_warmup_steps,
    nesterov,
    bias_correction,
    norms_from_moments,
  )
  after = []
  if not _is_zero(weight_decay):
    if callable(learning_rate):
      keep = optax.scale_by_schedule(lambda t: 1 - learning_rate(t) * weight_decay)
      decay = optax.add_decayed_weights(lambda t: -learning_rate(t) * weight_decay)
    else:
      keep = optax.scale(1 - learning_rate * weight_decay)
      decay = optax.add_decayed_weights(-learning_rate * weight_decay)
    decay_after_update = optax.chain(keep, decay)
    if mask is not None:
      decay_after_update = optax.masked(decay_after_update, mask)
    after.append(decay_after_update)
  return adam_with_speed_limit(
    learning_rate,
    b1,
    b2,
    eps,
    eps_root,
    mu_dtype,
    nesterov,
    amsgrad,
    speed_limit,
    mode,
    formula,
    adaptive_speed,
    speed_warmup_steps,
    bias_correction,
    axis_name,
    before=[],
    after=after,
    norms_from_moments=norms_from_moments,
  )
