"""``relativistic_adam`` and ``relativistic_adamw``: chains of Optax parts.

Each recipe is ``optax.chain(*before, speed limit, *after)``, the chain its
docstring writes out, with one difference in *how* (never in *what*) it
computes on CPU: :func:`speed_limited_chain`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Union

import jax
import jax.numpy as jnp
import optax

from relax_optax._formulas import Formula
from relax_optax._groups import (
  AxisName,
  Mode,
  Recompute,
  array_leaves,
  cast,
  check_mode_and_formula,
  check_speed_limit,
  leaf_sum,
)
from relax_optax._pytorch import (
  BIAS_CORRECTIONS,
  BiasCorrection,
  scale_by_adam_step_size_correction,
  step_size_correction,
  step_size_update,
)
from relax_optax._relative import RelativeSpeedLimit, check_relative_speed_limit, relative_limit
from relax_optax._transform import Limit, limit_transform, scaling_limit
from relax_optax._validation import (
  check_bool,
  check_choice,
  check_decay,
  check_dtype,
  check_scalar,
  check_scalar_or_schedule,
)

# A fixed speed limit (a scalar or a schedule) or one relative to the run's own norms.
SpeedLimit = Union[optax.ScalarOrSchedule, RelativeSpeedLimit]  # noqa: UP007 (autodoc alias)

# On CPU, leaves from RECOMPUTE_MIN_SIZE entries recompute Adam's update for
# the norm, when together they hold at least RECOMPUTE_MIN_BYTES; the others
# take the norm from the update, as the plain chain does. The chain's cost is
# the update written to a scratch buffer: above glibc's 32 MiB mmap threshold
# that buffer is mapped afresh, and its pages faulted in, at every call.
# Measured by benchmarks/backend_paths.py and benchmarks/step_overhead.py (one
# core): at 1e7 parameters (40 MB) in leaves of 2.5e6, 6.3e5 and 2.5e5 entries
# the chain's step costs 4.5x, 3.5x and 3.5x optax.adam's and the recompute's
# 2.0x; in leaves of 1.6e5 and 3.9e4 entries the chain's costs 1.7x and 1.6x
# and the recompute's 2.1x and 1.9x; at 1e6 parameters (4 MB) in leaves of
# 2.5e5 the chain's costs 1.9x and the recompute's 2.3x. Below these sizes the
# recompute would also cost compile time for nothing (a second copy of Adam's
# last step in the HLO).
RECOMPUTE_MIN_SIZE = 200_000
RECOMPUTE_MIN_BYTES = 32 * 2**20


class AdamSpec(NamedTuple):
  """Which Adam (and learning rate) the recipe chains, to compute its step again."""

  kind: str  # "adam" (optax.scale_by_adam), "amsgrad" (optax.scale_by_amsgrad), "step_size"
  b1: Any
  b2: Any
  eps: Any
  eps_root: Any
  nesterov: bool
  amsgrad: bool
  learning_rate: optax.ScalarOrSchedule


def _adam_step_again(spec: AdamSpec, state: Any, g: jax.Array | None, x: dict) -> jax.Array:
  """One leaf's Adam update from its *new* moments, as the part computed it.

  ``state`` holds the leaf's new moments and step count, ``g`` the gradient
  Adam received (Nesterov only), ``x`` the hyperparameters as arrays. The
  expressions are the last lines of ``optax.scale_by_adam`` /
  ``optax.scale_by_amsgrad`` (Optax's public ``tree_bias_correction`` and the
  same division) and of
  :func:`~relax_optax._pytorch.scale_by_adam_step_size_correction`: the same
  values, to the rounding XLA may give one expression in two fusions
  (``tests/test_numerics.py`` holds the two to that).
  """
  b1, b2, eps, eps_root = spec.b1, spec.b2, x["eps"], x.get("eps_root", 0.0)
  count = state.count
  nu = state.nu_max if spec.amsgrad else state.nu
  if spec.kind == "step_size":
    return step_size_update(state.mu, nu, step_size_correction(b1, b2, count), eps, eps_root)
  correct = optax.tree_utils.tree_bias_correction
  if spec.nesterov:
    m_next = correct(state.mu, b1, optax.safe_increment(count))
    m = x["b1"] * m_next + x["1-b1"] * correct(g, b1, count)
  else:
    m = correct(state.mu, b1, count)
  v = nu if spec.amsgrad else correct(nu, b2, count)
  return m / (jnp.sqrt(v + eps_root) + eps)


def _leaf_state(state: Any, j: int) -> Any:
  """The ``j``-th array leaf of each moment of an Adam state, and its count."""

  def leaf(tree: Any) -> jax.Array:
    leaves, _, positions = array_leaves(tree)
    return leaves[positions[j]]

  fields = {name: leaf(x) for name, x in state._asdict().items() if name != "count"}
  return type(state)(count=state.count, **fields)


def _recompute(
  spec: AdamSpec,
  pre: Sequence[optax.GradientTransformationExtraArgs],
  pre_states: Sequence[optax.OptState],
  lr: optax.GradientTransformationExtraArgs,
  lr_state: optax.OptState,
  grads: optax.Updates,
  params: optax.Params | None,
  adam_state: Any,
  extra_args: dict[str, Any],
) -> Recompute | None:
  """The group-norm sums of the leaves of at least :data:`RECOMPUTE_MIN_SIZE`
  entries, from Adam's update times the learning rate computed again from
  Adam's new moments (``None`` for the other leaves); ``None`` if these
  leaves hold less than :data:`RECOMPUTE_MIN_BYTES` together.

  Each large leaf's inputs (its new moments, the step count, the learning
  rate and its state, every constant its reduction multiplies or adds by,
  and its gradient and parameter for Nesterov) pass through one
  ``jax.lax.optimization_barrier`` of its own: the same values, but XLA can
  neither merge the two computations (common subexpression elimination: the
  norm's reduction then computes the update itself, from moments in memory
  anyway, instead of reading a copy written there) nor share a constant's
  broadcast between leaves (XLA:CPU materialises a broadcast that several of
  its YNNPACK reductions read as a leaf-sized array).
  """
  leaves, _, positions = array_leaves(grads)
  large = [j for j, i in enumerate(positions) if leaves[i].size >= RECOMPUTE_MIN_SIZE]
  nbytes = sum(
    leaves[positions[j]].size * jnp.dtype(leaves[positions[j]].dtype).itemsize for j in large
  )
  moments = [array_leaves(x) for x in (adam_state.mu, adam_state.nu)]
  if nbytes < RECOMPUTE_MIN_BYTES or any(len(p) != len(positions) for _, _, p in moments):
    return None
  param_leaves = None if params is None else array_leaves(params)
  constant_lr = not callable(spec.learning_rate)

  def one(j: int, lim: Any) -> jax.Array:
    g = leaves[positions[j]]
    p = None if param_leaves is None else param_leaves[0][param_leaves[2][j]]
    x = {
      "eps": jnp.asarray(spec.eps),
      "inv_c": lim.inv_c,
      "units": jnp.asarray(2.0**40, lim.inv_c.dtype),
      **({} if _is_python_zero(spec.eps_root) else {"eps_root": jnp.asarray(spec.eps_root)}),
      **({"b1": jnp.asarray(spec.b1), "1-b1": jnp.asarray(1 - spec.b1)} if spec.nesterov else {}),
      **({"lr": jnp.asarray(spec.learning_rate)} if constant_lr else {}),
    }
    inputs = (_leaf_state(adam_state, j), g, p, tuple(pre_states), lr_state, x)
    state, g, p, pre_s, lr_s, x = jax.lax.optimization_barrier(inputs)
    if spec.nesterov:  # the gradient Adam received
      for part, s in zip(pre, pre_s, strict=True):
        g, _ = part.update(g, s, p, **extra_args)
    u = _adam_step_again(spec, state, g if spec.nesterov else None, x)
    if constant_lr:  # the same part, its constant behind the barrier
      u = optax.scale_by_learning_rate(x["lr"]).update(u, optax.EmptyState())[0]
    else:
      u = lr.update(u, lr_s, p, **extra_args)[0]
    u = cast(u, jnp.promote_types(u.dtype, lim.inv_c.dtype))
    return leaf_sum(u, lim, x["inv_c"], x["units"])

  def recompute(limits: Sequence[Any]) -> list[jax.Array | None]:
    out: list[jax.Array | None] = [None] * len(positions)
    for j in large:
      out[j] = one(j, limits[j])
    return out

  return recompute


def _is_python_zero(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and x == 0


def speed_limited_chain(
  pre: Sequence[optax.GradientTransformation],
  adam: optax.GradientTransformation,
  lr: optax.GradientTransformation,
  limit: Limit,
  after: Sequence[optax.GradientTransformation],
  mode: str,
  spec: AdamSpec | None,
) -> optax.GradientTransformationExtraArgs:
  """``optax.chain(*pre, adam, lr, limit, *after)``: the same state and values.

  For the ``global`` and ``per_param`` norms, the chain reads Adam's update
  twice, and XLA writes it to memory between the two reads: on XLA:CPU, with
  leaves of millions of entries, that costs several times Adam's step
  (``benchmarks/step_overhead.py``). There, and only there
  (``jax.lax.platform_dependent``), the norms of large leaves are taken from
  the update computed a second time from Adam's new moments
  (:func:`_recompute`), so that the update has one reader and fuses into the
  parameter update. ``spec=None`` (e.g. a first moment stored in ``mu_dtype``,
  rounded) runs the plain chain everywhere.
  """
  parts = [*pre, adam, lr, limit_transform(limit), *after]
  chain = optax.chain(*parts)
  if mode == "per_component" or spec is None:  # no norm reads the update twice
    return chain
  parts = [optax.with_extra_args_support(p) for p in parts]
  n = len(pre)

  def update_fn(updates, state, params=None, **extra_args):
    if len(state) != len(parts):
      raise ValueError(f"expected a state of {len(parts)} parts, got {len(state)}.")
    grads, new_state = updates, []
    for part, s in zip(parts[:n], state[:n], strict=True):
      updates, s = part.update(updates, s, params, **extra_args)
      new_state.append(s)
    updates, adam_state = parts[n].update(updates, state[n], params, **extra_args)
    updates, lr_state = parts[n + 1].update(updates, state[n + 1], params, **extra_args)
    new_state += [adam_state, lr_state]
    recompute = _recompute(
      spec, parts[:n], state[:n], parts[n + 1], state[n + 1], grads, params, adam_state, extra_args
    )
    updates, s = limit.update(updates, state[n + 2], recompute)
    new_state.append(s)
    for part, s in zip(parts[n + 3 :], state[n + 3 :], strict=True):
      updates, s = part.update(updates, s, params, **extra_args)
      new_state.append(s)
    return updates, tuple(new_state)

  return optax.GradientTransformationExtraArgs(chain.init, update_fn)


def _check_adam_args(
  *,
  learning_rate: Any,
  speed_limit: Any,
  b1: Any,
  b2: Any,
  eps: Any,
  eps_root: Any,
  mu_dtype: Any,
  mode: Any,
  formula: Any,
  nesterov: Any,
  amsgrad: Any,
  bias_correction: Any,
  weight_decay: Any,
) -> None:
  """Validates the arguments the recipes share, each with one rule."""
  check_scalar_or_schedule("learning_rate", learning_rate, lower=0.0)
  if isinstance(speed_limit, RelativeSpeedLimit):
    check_relative_speed_limit(speed_limit, mode, formula)
  else:
    check_speed_limit(speed_limit)
  check_decay("b1", b1)
  check_decay("b2", b2)
  check_scalar("eps", eps, lower=0.0)
  check_scalar("eps_root", eps_root, lower=0.0)
  check_dtype("mu_dtype", mu_dtype)
  check_mode_and_formula(mode, formula)
  check_bool("nesterov", nesterov)
  check_bool("amsgrad", amsgrad)
  check_choice("bias_correction", bias_correction, BIAS_CORRECTIONS)
  if weight_decay is not None:
    check_scalar_or_schedule("weight_decay", weight_decay, lower=0.0)
  if amsgrad and nesterov:
    raise ValueError("amsgrad=True and nesterov=True cannot be combined.")
  if bias_correction == "step_size" and nesterov:
    raise ValueError('bias_correction="step_size" and nesterov=True cannot be combined.')


def _adam_parts(
  learning_rate: optax.ScalarOrSchedule,
  b1: Any,
  b2: Any,
  eps: Any,
  eps_root: Any,
  mu_dtype: Any,
  nesterov: bool,
  amsgrad: bool,
  bias_correction: str,
) -> tuple[optax.GradientTransformation, optax.GradientTransformation, AdamSpec | None]:
  """Adam's step and the learning rate as two Optax parts, and their spec
  (``None`` with ``mu_dtype``: the state then holds the first moment rounded,
  not the one Adam's step used, so the step cannot be computed again)."""
  if bias_correction == "step_size":
    adam = scale_by_adam_step_size_correction(b1, b2, eps, eps_root, mu_dtype, amsgrad)
    kind = "step_size"
  elif amsgrad:
    adam = optax.scale_by_amsgrad(b1, b2, eps, eps_root, mu_dtype)
    kind = "amsgrad"
  else:
    adam = optax.scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov)
    kind = "adam"
  spec = AdamSpec(kind, b1, b2, eps, eps_root, nesterov, amsgrad, learning_rate)
  spec = None if mu_dtype is not None else spec
  return adam, optax.scale_by_learning_rate(learning_rate), spec


def _limit(speed_limit: SpeedLimit, mode: str, formula: str, axis_name: AxisName | None) -> Limit:
  if isinstance(speed_limit, RelativeSpeedLimit):
    return relative_limit(*speed_limit, mode, axis_name)
  return scaling_limit(speed_limit, mode, formula, axis_name)


def relativistic_adam(
  learning_rate: optax.ScalarOrSchedule = 1e-3,
  speed_limit: SpeedLimit = 0.1,
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  eps_root: jax.typing.ArrayLike = 0.0,
  mu_dtype: jax.typing.DTypeLike | None = None,
  *,
  mode: Mode = "per_param",
  formula: Formula = "lorentz",
  nesterov: bool = False,
  amsgrad: bool = False,
  weight_decay: optax.ScalarOrSchedule | None = None,
  bias_correction: BiasCorrection = "moments",
  axis_name: AxisName | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Adam whose update, in parameter units, never exceeds a speed limit ``c``.

  The Adam step ``u = -lr · m̂ / (sqrt(v̂) + eps)`` is replaced by
  ``v = u / sqrt(1 + (‖u‖/c)²)`` (``formula="lorentz"``), with ``‖u‖`` taken
  per leaf, over all leaves or per element (``mode``). It is the chain::

    optax.chain(
        optax.add_decayed_weights(weight_decay),   # only if weight_decay is given
        optax.scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
        optax.scale_by_learning_rate(learning_rate),
        relax_optax.scale_by_relativistic(speed_limit, mode=mode, formula=formula),
    )

  with ``optax.scale_by_amsgrad`` for ``amsgrad=True``, Adam with the bias
  correction on the step size for ``bias_correction="step_size"``, and
  :func:`relax_optax.scale_by_relative_speed_limit` for a
  :class:`relax_optax.RelativeSpeedLimit`. Same state, same updates: on CPU,
  for leaves of at least 200,000 entries that hold 32 MiB or more together,
  the ``global`` / ``per_param`` norms are taken from Adam's update computed
  a second time from its new moments rather than from a copy written to
  memory (a 2x faster step there), which changes no value beyond rounding.
  For ``speed_limit`` much larger than the updates it equals ``optax.adam``.

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
    magnitude of ``eps``) and its AMSGrad maximum is over the raw ``v``;
  - its ``adaptive_speed=True, speed_warmup_steps=w`` is the schedule
    ``speed_limit=relax_optax.speed_limit_warmup(c, w)``.

  Args:
    learning_rate: a non-negative scalar or an Optax schedule.
    speed_limit: the speed limit ``c >= 0`` in parameter units (``inf``: no
      limit), or an Optax schedule of it (e.g.
      :func:`relax_optax.speed_limit_warmup`); or a
      :class:`relax_optax.RelativeSpeedLimit` for a limit ``k`` times the
      run's own recent update norm (with ``mode`` ``"per_param"`` or
      ``"global"`` and ``formula="lorentz"``).
    b1: decay rate of the first moment, in [0, 1) (below 1 in float32).
    b2: decay rate of the second moment, in [0, 1) (below 1 in float32).
    eps: non-negative term added to the denominator.
    eps_root: non-negative term added inside the square root.
    mu_dtype: optional dtype of the first moment.
    mode: ``"global"``, ``"per_param"`` (default) or ``"per_component"``.
    formula: ``"lorentz"`` (default), ``"tanh"`` or ``"reference"``.
    nesterov: use Nesterov momentum (not with ``amsgrad``).
    amsgrad: use AMSGrad's running maximum of the second moment.
    weight_decay: optional non-negative coupled L2 coefficient (or schedule),
      added to the gradient before the moments (as the original's
      ``weight_decay``); ``None`` leaves the part out of the chain.
    bias_correction: ``"moments"`` (default, as ``optax.adam``) divides the
      moments by ``1 - b^t``; ``"step_size"`` multiplies the step by
      ``sqrt(1 - b2^t) / (1 - b1^t)`` instead, exactly as relativistic-adam
      1.0.0 (and ``torch.optim.Adam``'s AMSGrad maximum) does. Use it with
      ``formula="reference"`` to reproduce a PyTorch run (not with
      ``nesterov``).
    axis_name: inside ``shard_map`` / ``pmap`` with parameters sharded over
      this axis, the group norms are summed across it (see
      :func:`relax_optax.relativistic_scale`); ``None`` under plain ``jit``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

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
  _check_adam_args(
    learning_rate=learning_rate,
    speed_limit=speed_limit,
    b1=b1,
    b2=b2,
    eps=eps,
    eps_root=eps_root,
    mu_dtype=mu_dtype,
    mode=mode,
    formula=formula,
    nesterov=nesterov,
    amsgrad=amsgrad,
    bias_correction=bias_correction,
    weight_decay=weight_decay,
  )
  pre = [] if weight_decay is None else [optax.add_decayed_weights(weight_decay)]
  adam, lr, spec = _adam_parts(
    learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov, amsgrad, bias_correction
  )
  limit = _limit(speed_limit, mode, formula, axis_name)
  return speed_limited_chain(pre, adam, lr, limit, [], mode, spec)


def _decay_after_update(
  learning_rate: optax.ScalarOrSchedule,
  weight_decay: optax.ScalarOrSchedule,
  mask: Any | Callable[[optax.Params], Any] | None,
) -> optax.GradientTransformation:
  """``(p + v)(1 - lr·wd) - p``: the update that decays the parameters after ``v``."""
  if callable(learning_rate) or callable(weight_decay):

    def lr_wd(count: jax.Array) -> jax.Array:
      lr = learning_rate(count) if callable(learning_rate) else learning_rate
      wd = weight_decay(count) if callable(weight_decay) else weight_decay
      return lr * wd

    keep = optax.scale_by_schedule(lambda count: 1 - lr_wd(count))
    decay = optax.add_decayed_weights(lambda count: -lr_wd(count))
  else:
    keep = optax.scale(1 - learning_rate * weight_decay)
    decay = optax.add_decayed_weights(-learning_rate * weight_decay)
  tx = optax.chain(keep, decay)
  return tx if mask is None else optax.masked(tx, mask)


def relativistic_adamw(
  learning_rate: optax.ScalarOrSchedule = 1e-3,
  speed_limit: SpeedLimit = 0.1,
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  eps_root: jax.typing.ArrayLike = 0.0,
  mu_dtype: jax.typing.DTypeLike | None = None,
  weight_decay: optax.ScalarOrSchedule = 1e-2,
  mask: Any | Callable[[optax.Params], Any] | None = None,
  *,
  mode: Mode = "per_param",
  formula: Formula = "lorentz",
  nesterov: bool = False,
  amsgrad: bool = False,
  bias_correction: BiasCorrection = "moments",
  axis_name: AxisName | None = None,
) -> optax.GradientTransformationExtraArgs:
  """:func:`relativistic_adam` with decoupled weight decay after the update.

  As relativistic-adam 1.0.0's ``RelativisticAdamW``: the speed-limited step
  ``v`` is applied first, then the parameters are multiplied by
  ``(1 - lr · weight_decay)``, so ``p ← (p + v)(1 - lr·wd)``; the decay is not
  itself speed-limited. It is the chain::

    optax.chain(
        optax.scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
        optax.scale_by_learning_rate(learning_rate),
        relax_optax.scale_by_relativistic(speed_limit, mode=mode, formula=formula),
        optax.masked(optax.chain(                      # (p + v)(1 - lr·wd) - p
            optax.scale(1 - lr * weight_decay),
            optax.add_decayed_weights(-lr * weight_decay),
        ), mask),
    )

  (with ``optax.scale_by_schedule`` and schedules of ``add_decayed_weights``
  when ``learning_rate`` or ``weight_decay`` is a schedule). This differs
  from ``optax.adamw``, which decays the parameters *before* the step
  (``p ← p - lr·(û + wd·p)``): the two differ by ``lr·wd·v`` per step.

  Args:
    learning_rate: as in :func:`relativistic_adam`.
    speed_limit: as in :func:`relativistic_adam`.
    b1: as in :func:`relativistic_adam`.
    b2: as in :func:`relativistic_adam`.
    eps: as in :func:`relativistic_adam`.
    eps_root: as in :func:`relativistic_adam`.
    mu_dtype: as in :func:`relativistic_adam`.
    weight_decay: non-negative decoupled decay coefficient, or a schedule.
    mask: a pytree of booleans (or a function of the params returning one)
      selecting the leaves to decay, as in ``optax.adamw``; ``None`` for all.
    mode: as in :func:`relativistic_adam`.
    formula: as in :func:`relativistic_adam`.
    nesterov: as in :func:`relativistic_adam`.
    amsgrad: as in :func:`relativistic_adam`.
    bias_correction: as in :func:`relativistic_adam`.
    axis_name: as in :func:`relativistic_adam`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

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
  _check_adam_args(
    learning_rate=learning_rate,
    speed_limit=speed_limit,
    b1=b1,
    b2=b2,
    eps=eps,
    eps_root=eps_root,
    mu_dtype=mu_dtype,
    mode=mode,
    formula=formula,
    nesterov=nesterov,
    amsgrad=amsgrad,
    bias_correction=bias_correction,
    weight_decay=weight_decay,
  )
  if weight_decay is None:
    raise TypeError("weight_decay must be a real scalar or a schedule, got None.")
  adam, lr, spec = _adam_parts(
    learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov, amsgrad, bias_correction
  )
  limit = _limit(speed_limit, mode, formula, axis_name)
  after = [_decay_after_update(learning_rate, weight_decay, mask)]
  return speed_limited_chain([], adam, lr, limit, after, mode, spec)
