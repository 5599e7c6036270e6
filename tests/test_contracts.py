"""Optax's contracts, for every public optimizer and transformation of the package.

One registry, ``REGISTRY``, lists them all (as Optax's ``contrib/_common_test.py``
lists its optimizers); every test below runs over it, so the next optimizer
keeps the contracts by being listed. The contracts are those ``optax.adam``
keeps: a ``GradientTransformationExtraArgs`` (extra keyword arguments accepted
and passed on), the same state with and without ``optax.inject_hyperparams``,
updates in the gradients' dtype, no retracing, hyperparameters of any float
dtype and schedules that start at 0, ``optax.MultiSteps``, ``flax.nnx.Optimizer``,
and real and complex parameters driven to the optimum of a parabola and of a
Rosenbrock function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import relax_optax


@dataclasses.dataclass(frozen=True)
class Entry:
  """A public factory, arguments for it, and how it becomes an optimizer."""

  name: str
  factory: Callable[..., optax.GradientTransformation]
  kwargs: dict[str, Any]
  # The factory's argument holding the speed limit (None: it has none).
  speed_limit_arg: str | None = "speed_limit"
  # A transformation (not an optimizer) is tested after Adam.
  transform: bool = False

  def optimizer(self, tx: optax.GradientTransformation) -> optax.GradientTransformation:
    return optax.chain(optax.adam(1e-2), tx) if self.transform else tx


_LR = 1e-2
_RELATIVE = relax_optax.RelativeSpeedLimit(k=2.0, warmup_steps=3)

REGISTRY = [
  Entry("adam", relax_optax.relativistic_adam, dict(learning_rate=_LR, speed_limit=0.05)),
  Entry(
    "adam-global-tanh",
    relax_optax.relativistic_adam,
    dict(learning_rate=_LR, speed_limit=0.05, mode="global", formula="tanh"),
  ),
  Entry(
    "adam-per_component-reference",
    relax_optax.relativistic_adam,
    dict(learning_rate=_LR, speed_limit=0.05, mode="per_component", formula="reference"),
  ),
  Entry(
    "adam-nesterov-wd",
    relax_optax.relativistic_adam,
    dict(learning_rate=_LR, speed_limit=0.05, nesterov=True, weight_decay=1e-4),
  ),
  Entry(
    "adam-relative-global",
    relax_optax.relativistic_adam,
    dict(learning_rate=_LR, speed_limit=_RELATIVE, mode="global"),
    speed_limit_arg=None,
  ),
  Entry("adamw", relax_optax.relativistic_adamw, dict(learning_rate=_LR, weight_decay=1e-4)),
  Entry(
    "adamw-amsgrad-per_component",
    relax_optax.relativistic_adamw,
    dict(learning_rate=_LR, weight_decay=1e-4, amsgrad=True, mode="per_component"),
  ),
  Entry(
    "adamw-pytorch-parity",
    relax_optax.relativistic_adamw,
    dict(
      learning_rate=_LR,
      weight_decay=1e-4,
      formula="reference",
      bias_correction="step_size",
      amsgrad=True,
    ),
  ),
  Entry(
    "adamw-relative",
    relax_optax.relativistic_adamw,
    dict(learning_rate=_LR, weight_decay=1e-4, speed_limit=_RELATIVE),
    speed_limit_arg=None,
  ),
  Entry("rgd", relax_optax.rgd, dict(learning_rate=1e-3, momentum=0.9, speed_limit=0.1)),
  Entry(
    "rgd-leapfrog-per_param",
    relax_optax.rgd,
    dict(learning_rate=1e-3, momentum=0.9, speed_limit=0.1, alpha=1.0, mode="per_param"),
  ),
  Entry(
    "scale_by_relativistic",
    relax_optax.scale_by_relativistic,
    dict(speed_limit=0.05, mode="global"),
    transform=True,
  ),
  Entry(
    "scale_by_relative_speed_limit",
    relax_optax.scale_by_relative_speed_limit,
    dict(k=2.0, warmup_steps=3),
    speed_limit_arg=None,
    transform=True,
  ),
]
IDS = [e.name for e in REGISTRY]


def test_the_registry_lists_every_public_factory():
  listed = {e.factory.__name__ for e in REGISTRY}
  public = {
    name
    for name in relax_optax.__all__
    if callable(getattr(relax_optax, name))
    and name[0].islower()
    and name not in ("relativistic_scale", "rgd_eval_params", "speed_limit_warmup")
  }
  assert public == listed


def _params(dtype: Any = jnp.float32) -> dict[str, jax.Array]:
  rng = np.random.default_rng(0)
  return {
    "w": jnp.asarray(rng.standard_normal((4, 3)), dtype),
    "b": jnp.asarray(rng.standard_normal(3), dtype),
    "s": jnp.asarray(0.5, dtype),
  }


def _loss(params: dict[str, jax.Array]) -> jax.Array:
  return sum(jnp.sum(jnp.square(x.astype(jnp.float32) - 0.3)) for x in jax.tree.leaves(params))


@pytest.mark.parametrize("entry", REGISTRY, ids=IDS)
def test_extra_args_are_accepted_and_the_type_is_extra_args(entry):
  tx = entry.factory(**entry.kwargs)
  assert isinstance(tx, optax.GradientTransformationExtraArgs)
  params = _params()
  state = tx.init(params)
  grads = jax.grad(_loss)(params)
  plain, _ = tx.update(grads, state, params)
  extra, _ = tx.update(grads, state, params, value=_loss(params), grad=grads, other=None)
  chex.assert_trees_all_equal(plain, extra)


@pytest.mark.parametrize("entry", REGISTRY, ids=IDS)
def test_inject_hyperparams_keeps_the_state_and_the_updates(entry):
  params = _params()
  direct = entry.factory(**entry.kwargs)
  injected = optax.inject_hyperparams(entry.factory)(**entry.kwargs)
  state, injected_state = direct.init(params), injected.init(params)
  # A checkpoint of one can be restored into the other.
  chex.assert_trees_all_equal_structs(injected_state.inner_state, state)
  chex.assert_trees_all_equal(injected_state.inner_state, state)
  grads = jax.grad(_loss)(params)
  for _ in range(2):
    u, state = jax.jit(direct.update)(grads, state, params)
    v, injected_state = jax.jit(injected.update)(grads, injected_state, params)
    # Injected hyperparameters are float32 arrays, not Python floats: rounding.
    chex.assert_trees_all_close(v, u, rtol=2e-5, atol=1e-9)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32], ids=str)
@pytest.mark.parametrize("entry", REGISTRY, ids=IDS)
def test_updates_and_state_keep_their_dtypes(entry, dtype):
  tx = entry.factory(**entry.kwargs)
  params = _params(dtype)
  state = tx.init(params)
  grads = jax.tree.map(lambda x: x.astype(dtype), jax.grad(_loss)(params))
  updates, new_state = jax.jit(tx.update)(grads, state, params)
  chex.assert_trees_all_equal_dtypes(updates, params)
  chex.assert_trees_all_equal_dtypes(new_state, state)
  chex.assert_tree_all_finite(updates)


@pytest.mark.parametrize("entry", REGISTRY, ids=IDS)
def test_no_retracing(entry):
  tx = entry.factory(**entry.kwargs)
  params = _params()
  state = tx.init(params)
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, state):
    updates, state = tx.update(jax.grad(_loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(4):
    params, state = step(params, state)


def _numeric_kwargs(entry: Entry) -> dict[str, Any]:
  return {
    k: v
    for k, v in entry.kwargs.items()
    if isinstance(v, float) and not isinstance(v, bool) and k != "alpha"
  }


@pytest.mark.parametrize(
  "dtype", [jnp.bfloat16, jnp.float16, jnp.float32, np.float64], ids=lambda d: jnp.dtype(d).name
)
@pytest.mark.parametrize("entry", REGISTRY, ids=IDS)
def test_hyperparameters_of_any_float_dtype(entry, dtype):
  kwargs = {
    **entry.kwargs,
    **{k: np.asarray(v, dtype)[()] for k, v in _numeric_kwargs(entry).items()},
  }
  tx = entry.factory(**kwargs)
  params = _params()
  updates, _ = jax.jit(tx.update)(jax.grad(_loss)(params), tx.init(params), params)
  chex.assert_tree_all_finite(updates)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=str)
@pytest.mark.parametrize("entry", REGISTRY, ids=IDS)
def test_inject_hyperparams_with_low_precision_parameters(entry, dtype):
  # Optax casts the injected hyperparameters to the parameters' dtype: a decay
  # of 0.999 is 1.0 in bfloat16 (optax.adam then freezes its second moment
  # too), so the decays here are ones that survive the cast.
  kwargs = dict(entry.kwargs)
  if entry.factory in (relax_optax.relativistic_adam, relax_optax.relativistic_adamw):
    kwargs["b2"] = 0.99
  if entry.factory is relax_optax.scale_by_relative_speed_limit:
    kwargs["decay"] = 0.9
  tx = optax.inject_hyperparams(entry.factory)(**kwargs)
  params = _params(dtype)
  state = tx.init(params)
  grads = jax.tree.map(lambda x: x.astype(dtype), jax.grad(_loss)(params))
  updates, state = jax.jit(tx.update)(grads, state, params)
  chex.assert_trees_all_equal_dtypes(updates, params)
  chex.assert_tree_all_finite(updates)


@pytest.mark.parametrize(
  "entry",
  [e for e in REGISTRY if e.speed_limit_arg],
  ids=[e.name for e in REGISTRY if e.speed_limit_arg],
)
def test_a_speed_limit_schedule_may_start_at_zero(entry):
  schedule = optax.linear_schedule(0.0, 0.1, 5)
  params = _params()
  grads = jax.grad(_loss)(params)
  kwargs = {**entry.kwargs, entry.speed_limit_arg: schedule}
  if "weight_decay" in kwargs:  # the decoupled decay moves the parameters at c = 0 too
    kwargs["weight_decay"] = 0.0
  # The leapfrog form's update ends on the next half step, at the next c.
  leapfrog = kwargs.get("alpha") is not None
  for make in (entry.factory, optax.inject_hyperparams(entry.factory)):
    tx = entry.optimizer(make(**kwargs))
    state = tx.init(params)
    norms = []
    for _ in range(3):
      updates, state = jax.jit(tx.update)(grads, state, params)
      norms.append(float(optax.tree.norm(updates)))
    assert norms[0] == 0.0 or leapfrog  # c = 0: nothing moves
    assert norms[2] > 0.0


@pytest.mark.parametrize("entry", REGISTRY, ids=IDS)
def test_multi_steps_gives_zero_updates_between_boundaries(entry):
  k = 3
  tx = optax.MultiSteps(entry.optimizer(entry.factory(**entry.kwargs)), every_k_schedule=k)
  params = _params()
  state = tx.init(params)
  step = jax.jit(tx.update)
  for t in range(2 * k):
    updates, state = step(jax.grad(_loss)(params), state, params)
    norm = float(optax.tree.norm(updates))
    if (t + 1) % k:
      assert norm == 0.0, t
    else:
      assert norm > 0.0, t
    params = optax.apply_updates(params, updates)


@pytest.mark.parametrize("entry", REGISTRY, ids=IDS)
def test_flax_nnx_optimizer_passes_the_value_on(entry):
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, entry.optimizer(entry.factory(**entry.kwargs)), wrt=nnx.Param)
  x = jnp.ones((4, 3))

  def loss_fn(model):
    return jnp.mean(model(x) ** 2)

  before = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads, value=loss)
  moved = jax.tree.map(
    lambda a, b: float(jnp.max(jnp.abs(a - b))), nnx.state(model, nnx.Param), before
  )
  assert max(jax.tree.leaves(moved)) > 0


# The two problems of Optax's contrib/_common_test.py, real and complex.
def _parabola(dtype):
  final = jnp.array([1.0, -1.0, 1.0], dtype)

  def f(x):
    return jnp.sum(jnp.real(jnp.conj(x - final) * (x - final)))

  return jnp.array([-1.0, 10.0, 1.0], dtype), final, f


def _rosenbrock(dtype):
  a, b = (1.0 + 1.0j if jnp.iscomplexobj(jnp.zeros((), dtype)) else 1.0), 100.0

  def abs_sq(z):
    return jnp.real(jnp.conj(z) * z)

  def f(x):
    return abs_sq(a - x[0]) + b * abs_sq(x[1] - x[0] ** 2)

  return jnp.zeros(2, dtype), jnp.array([a, a**2], dtype), f


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64], ids=str)
@pytest.mark.parametrize("problem", [_parabola, _rosenbrock], ids=["parabola", "rosenbrock"])
@pytest.mark.parametrize("entry", REGISTRY, ids=IDS)
def test_reaches_the_optimum_as_optax_adam_does(entry, problem, dtype):
  x0, final, f = problem(dtype)
  tx = entry.optimizer(entry.factory(**entry.kwargs))

  @jax.jit
  def run(x):
    state = tx.init(x)
    # A no-op through tree_map_params: the state's layout is Optax's.
    state = optax.tree_utils.tree_map_params(tx, lambda v: v, state)

    def step(carry, _):
      x, state = carry
      value, grads = jax.value_and_grad(f)(x)
      grads = jnp.conj(grads)  # complex gradients are conjugated, as in Optax
      updates, state = tx.update(grads, state, x, value=value)
      return (optax.apply_updates(x, updates), state), None

    return jax.lax.scan(step, (x, state), length=10_000)[0]

  x, state = run(x0)
  chex.assert_tree_all_finite((x, state))
  x = relax_optax.rgd_eval_params(state, x)
  chex.assert_trees_all_close(x, final, rtol=3e-2, atol=3e-2)
