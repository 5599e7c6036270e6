"""Tests of relax_optax.relativistic_adam and relativistic_adamw."""

import decimal
import fractions

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import relax_optax

HUGE = 1e30  # a speed limit that never binds


def _params(dtype=jnp.float32):
  rng = np.random.default_rng(0)
  return {
    "w": jnp.asarray(rng.standard_normal((4, 3)), dtype),
    "b": jnp.asarray(rng.standard_normal(3), dtype),
  }


def _quadratic_loss(params):
  return sum(jnp.sum(jnp.square(x.astype(jnp.float32) - 0.5)) for x in jax.tree.leaves(params))


def _grads(n, seed=0):
  """A fixed sequence of gradients (independent of the parameters)."""
  rng = np.random.default_rng(seed)
  return [
    jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), _params())
    for _ in range(n)
  ]


def _run(tx, grads, params=None):
  params = _params() if params is None else params
  state = tx.init(params)
  update = jax.jit(tx.update)
  trajectory = []
  for g in grads:
    u, state = update(g, state, params)
    params = optax.apply_updates(params, u)
    trajectory.append(params)
  return trajectory, state


# One shared battery over the variants (as Optax's alias_test.py).
VARIANTS = [
  ("adam", relax_optax.relativistic_adam, {}),
  ("adam_global_tanh", relax_optax.relativistic_adam, dict(mode="global", formula="tanh")),
  (
    "adam_per_component_ref",
    relax_optax.relativistic_adam,
    dict(mode="per_component", formula="reference"),
  ),
  ("adam_wd_amsgrad", relax_optax.relativistic_adam, dict(weight_decay=1e-2, amsgrad=True)),
  (
    "adam_warmup_nesterov",
    relax_optax.relativistic_adam,
    dict(speed_limit=relax_optax.speed_limit_warmup(0.1, 10), nesterov=True),
  ),
  ("adamw", relax_optax.relativistic_adamw, {}),
  (
    "adamw_masked_schedule",
    relax_optax.relativistic_adamw,
    dict(learning_rate=optax.cosine_decay_schedule(0.1, 100), mask={"w": True, "b": False}),
  ),
]


@pytest.mark.parametrize("name, make, kwargs", VARIANTS, ids=[v[0] for v in VARIANTS])
class TestBattery:
  def test_finite_shapes_and_convergence(self, name, make, kwargs):
    kwargs = {"learning_rate": 0.1, **kwargs}
    tx = make(**kwargs)
    params = _params()
    state = tx.init(params)

    @jax.jit
    def step(params, state):
      grads = jax.grad(_quadratic_loss)(params)
      updates, state = tx.update(grads, state, params)
      chex.assert_trees_all_equal_shapes(updates, params)
      return optax.apply_updates(params, updates), state

    initial = float(_quadratic_loss(params))
    for _ in range(200):
      params, state = step(params, state)
    chex.assert_tree_all_finite((params, state))
    assert float(_quadratic_loss(params)) < 0.05 * initial

  @pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
  def test_dtype_kept(self, name, make, kwargs, dtype):
    tx = make(**kwargs)
    params = _params(dtype)
    updates, _ = tx.update(jax.grad(_quadratic_loss)(params), tx.init(params), params)
    chex.assert_trees_all_equal_dtypes(updates, params)
    chex.assert_tree_all_finite(updates)


class TestRecipes:
  @pytest.mark.parametrize("mode", ["global", "per_param", "per_component"])
  @pytest.mark.parametrize("formula", ["lorentz", "tanh", "reference"])
  def test_equals_the_chain_of_design_md(self, mode, formula):
    grads = _grads(6)
    ours, _ = _run(
      relax_optax.relativistic_adam(0.05, speed_limit=0.03, mode=mode, formula=formula), grads
    )
    chain = optax.chain(
      optax.scale_by_adam(0.9, 0.999, 1e-8),
      optax.scale_by_learning_rate(0.05),
      relax_optax.scale_by_relativistic(0.03, mode=mode, formula=formula),
    )
    want, _ = _run(chain, grads)
    chex.assert_trees_all_close(ours, want, rtol=1e-6)

  def test_huge_speed_limit_equals_optax_adam(self):
    grads = _grads(10)
    for kwargs in ({}, {"nesterov": True}, {"eps_root": 1e-8}):
      ours, _ = _run(relax_optax.relativistic_adam(0.1, speed_limit=HUGE, **kwargs), grads)
      want, _ = _run(optax.adam(0.1, **kwargs), grads)
      chex.assert_trees_all_close(ours, want, rtol=1e-6)
    ours, _ = _run(relax_optax.relativistic_adam(0.1, speed_limit=HUGE, amsgrad=True), grads)
    want, _ = _run(optax.amsgrad(0.1), grads)
    chex.assert_trees_all_close(ours, want, rtol=1e-6)

  def test_speed_limit_binds_every_step(self):
    params = _params()
    tx = relax_optax.relativistic_adam(1.0, speed_limit=0.01, mode="global")
    state = tx.init(params)
    for g in _grads(5):
      u, state = tx.update(jax.tree.map(lambda x: 1e6 * x, g), state, params)
      assert float(optax.tree.norm(u)) <= 0.01

  def test_coupled_weight_decay_is_added_to_the_gradient(self):
    # relativistic-adam's weight_decay: g + wd · p before the moments.
    wd, params = 0.1, _params()
    grads = _grads(1)[0]
    tx = relax_optax.relativistic_adam(0.1, weight_decay=wd, speed_limit=HUGE)
    ours, _ = tx.update(grads, tx.init(params), params)
    adam = optax.adam(0.1)
    coupled = jax.tree.map(lambda g, p: g + wd * p, grads, params)
    want, _ = adam.update(coupled, adam.init(params))
    chex.assert_trees_all_close(ours, want, rtol=1e-6)

  def test_adamw_decays_after_the_update(self):
    # relativistic-adam's RelativisticAdamW: p ← (p - v)(1 - lr·wd).
    lr, wd = 0.1, 0.5
    params, grads = _params(), _grads(3)
    ours, _ = _run(relax_optax.relativistic_adamw(lr, weight_decay=wd, speed_limit=0.05), grads)
    scaled = optax.chain(
      optax.scale_by_adam(),
      optax.scale_by_learning_rate(lr),
      relax_optax.scale_by_relativistic(0.05),
    )
    state, p = scaled.init(params), params
    for g, got in zip(grads, ours, strict=True):
      v, state = scaled.update(g, state, p)
      p = jax.tree.map(lambda p, v: (p + v) * (1 - lr * wd), p, v)
      chex.assert_trees_all_close(got, p, rtol=1e-6)

  def test_adamw_differs_from_optax_adamw_by_lr_wd_v(self):
    lr, wd = 0.1, 0.5
    params, g = _params(), _grads(1)[0]
    ours = relax_optax.relativistic_adamw(lr, weight_decay=wd, speed_limit=HUGE)
    theirs = optax.adamw(lr, weight_decay=wd)
    u_ours, _ = ours.update(g, ours.init(params), params)
    u_theirs, _ = theirs.update(g, theirs.init(params), params)
    adam = optax.adam(lr)
    v, _ = adam.update(g, adam.init(params))
    chex.assert_trees_all_close(
      jax.tree.map(jnp.subtract, u_ours, u_theirs),
      jax.tree.map(lambda v: -lr * wd * v, v),
      rtol=1e-4,
      atol=1e-7,
    )

  def test_adamw_mask_and_learning_rate_schedule(self):
    schedule = optax.linear_schedule(0.1, 0.01, 5)
    wd, params = 0.5, _params()
    tx = relax_optax.relativistic_adamw(
      schedule, weight_decay=wd, mask={"w": True, "b": False}, speed_limit=HUGE
    )
    zero = jax.tree.map(jnp.zeros_like, params)
    state, p = tx.init(params), params
    for t in range(3):
      u, state = tx.update(zero, state, p)
      new = optax.apply_updates(p, u)
      chex.assert_trees_all_close(new["w"], p["w"] * (1 - schedule(t) * wd), rtol=1e-6)
      chex.assert_trees_all_close(new["b"], p["b"])
      p = new

  def test_speed_limit_warmup_warms_up_from_step_one(self):
    c, warmup = 0.2, 4
    tx = relax_optax.relativistic_adam(
      1.0, speed_limit=relax_optax.speed_limit_warmup(c, warmup), mode="global"
    )
    params = _params()
    state = tx.init(params)
    for t in range(1, 8):
      g = jax.tree.map(lambda x: 1e3 * jnp.ones_like(x), params)
      u, state = tx.update(g, state, params)
      limit = c * min(1.0, t / warmup)  # t counted from 1: never 0
      norm = float(optax.tree.norm(u))
      assert limit * 0.99 < norm <= limit

  def test_no_warmup_when_warmup_steps_not_positive(self):
    for warmup in (0, -5):
      schedule = relax_optax.speed_limit_warmup(0.2, warmup)
      assert float(schedule(0)) == pytest.approx(0.2)
    schedule = relax_optax.speed_limit_warmup(0.2, 10)
    np.testing.assert_allclose([float(schedule(t)) for t in (0, 4, 9, 50)], [0.02, 0.1, 0.2, 0.2])
    # A scheduled limit is warmed up too: c(t) · min(1, (t + 1) / w).
    decay = optax.exponential_decay(0.2, transition_steps=1, decay_rate=0.5)
    schedule = relax_optax.speed_limit_warmup(decay, 4)
    np.testing.assert_allclose(
      [float(schedule(t)) for t in range(5)],
      [0.2 * 0.5**t * min(1.0, (t + 1) / 4) for t in range(5)],
      rtol=1e-6,
    )
    tx = relax_optax.relativistic_adam(speed_limit=relax_optax.speed_limit_warmup(decay, 4))
    params = _params()
    u, _ = tx.update(jax.tree.map(lambda x: 1e3 * x, params), tx.init(params), params)
    assert max(float(jnp.linalg.norm(x)) for x in jax.tree.leaves(u)) <= 0.2 / 4


class TestValidation:
  @pytest.mark.parametrize("make", [relax_optax.relativistic_adam, relax_optax.relativistic_adamw])
  @pytest.mark.parametrize(
    "kwargs, match",
    [
      (dict(learning_rate=-1e-3), r"learning_rate must be a finite number in \[0"),
      (dict(b1=1.0), r"b1 must be a finite number in \[0, 1\)"),
      (dict(b1=-0.1), r"b1 must be"),
      (dict(b2=1.5), r"b2 must be a finite number in \[0, 1\)"),
      (dict(eps=-1e-8), r"eps must be a finite number in \[0"),
      (dict(weight_decay=-0.1), r"weight_decay must be a finite number in \[0"),
      (dict(speed_limit=-1e-3), r"speed_limit must be a number in \[0, inf\]"),
      (dict(speed_limit=-float("inf")), r"speed_limit"),
      (dict(speed_limit=jnp.array(-0.1)), r"speed_limit must be a number in \[0"),
      (dict(speed_limit=jnp.array(jnp.nan)), r"speed_limit must be a number in \[0"),
      (dict(speed_limit=jnp.array(-1.0, jnp.bfloat16)), r"speed_limit must be a number in \[0"),
      (dict(b2=0.9999999999), r"b2 must be below 1 in float32"),
      (dict(b1=1 - 1e-9), r"b1 must be below 1 in float32"),
      (dict(learning_rate=jnp.array(jnp.nan)), r"learning_rate must be a finite number"),
      (dict(bias_correction="torch"), r"bias_correction must be one of"),
      (dict(mode="layer"), r"mode must be one of \('global', 'per_param', 'per_component'\)"),
      (dict(formula="x"), r"formula must be one of \('lorentz', 'tanh', 'reference'\)"),
      (dict(amsgrad=True, nesterov=True), r"amsgrad=True and nesterov=True"),
    ],
  )
  def test_bad_arguments(self, make, kwargs, match):
    with pytest.raises(ValueError, match=match):
      make(**kwargs)

  @pytest.mark.parametrize("make", [relax_optax.relativistic_adam, relax_optax.relativistic_adamw])
  @pytest.mark.parametrize(
    "kwargs, match",
    [
      (dict(speed_limit=None), "speed_limit must be a real scalar"),
      (dict(speed_limit="0.1"), "speed_limit must be a real scalar"),
      (dict(speed_limit=[0.1]), "speed_limit must be a real scalar"),
      (dict(speed_limit=True), "speed_limit must be a real scalar"),
      (dict(speed_limit=jnp.ones(2)), "speed_limit must be a scalar"),
      (dict(learning_rate=None), "learning_rate must be a real scalar"),
      (dict(learning_rate=[1e-3]), "learning_rate must be a real scalar"),
      (dict(learning_rate="1e-3"), "learning_rate must be a real scalar"),
      (dict(learning_rate=np.ones(3)), "learning_rate must be a scalar"),
      (dict(learning_rate=fractions.Fraction(1, 10)), "learning_rate must be a real scalar"),
      (dict(eps=decimal.Decimal("1e-8")), "eps must be a real scalar"),
      (dict(speed_limit=1j), "speed_limit must be a real scalar"),
      (dict(speed_limit=jnp.asarray(1 + 0j)), "speed_limit must be a real scalar"),
      (dict(mu_dtype=jnp.int32), "mu_dtype must be None or a floating-point dtype"),
      (dict(mu_dtype="not a dtype"), "mu_dtype must be None or a floating-point dtype"),
      (dict(amsgrad=1), "amsgrad must be True or False"),
      (dict(mode=None), "mode must be one of"),
    ],
  )
  def test_wrong_kinds_raise_type_errors_naming_the_argument(self, make, kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
      make(**kwargs)

  def test_speed_limit_inf_is_adam(self):
    params = {"w": jnp.arange(3.0)}
    grads = {"w": jnp.asarray([1e3, -2.0, 0.5])}
    for make, ref in ((relax_optax.relativistic_adam, optax.adam(0.1)),):
      tx = make(0.1, speed_limit=float("inf"))
      u, _ = tx.update(grads, tx.init(params), params)
      v, _ = ref.update(grads, ref.init(params), params)
      chex.assert_trees_all_close(u, v, rtol=1e-6)


class TestOptaxWrappers:
  def test_jit_no_retracing(self):
    tx = relax_optax.relativistic_adam(0.1, relax_optax.speed_limit_warmup(0.1, 3))
    params = _params()
    state = tx.init(params)
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, state):
      grads = jax.grad(_quadratic_loss)(params)
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    for _ in range(6):
      params, state = step(params, state)

  def test_vmap_over_independent_runs_equals_each_alone(self):
    tx = relax_optax.relativistic_adam(0.1, speed_limit=0.05, mode="global")
    inits = jax.tree.map(lambda x: jnp.stack([x, -x, 2 * x]), _params())

    def train(params):
      state = tx.init(params)

      def body(carry, _):
        params, state = carry
        updates, state = tx.update(jax.grad(_quadratic_loss)(params), state, params)
        return (optax.apply_updates(params, updates), state), None

      return jax.lax.scan(body, (params, state), length=20)[0][0]

    batched = jax.jit(jax.vmap(train))(inits)
    for i in range(3):
      alone = jax.jit(train)(jax.tree.map(lambda x, i=i: x[i], inits))
      chex.assert_trees_all_close(
        jax.tree.map(lambda x, i=i: x[i], batched), alone, rtol=1e-6, atol=1e-6
      )

  def test_inject_hyperparams_changes_lr_and_speed_limit_at_run_time(self):
    tx = optax.inject_hyperparams(relax_optax.relativistic_adam)(learning_rate=0.1, speed_limit=0.5)
    params = _params()
    state = tx.init(params)
    grads = jax.tree.map(lambda x: 1e3 * jnp.ones_like(x), params)
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def update(grads, state, params):
      return tx.update(grads, state, params)

    for lr, c in [(0.1, 0.5), (1.0, 0.01), (1e-4, 10.0)]:
      state.hyperparams["learning_rate"] = jnp.asarray(lr)
      state.hyperparams["speed_limit"] = jnp.asarray(c)
      u, state = update(grads, state, params)
      fresh = relax_optax.relativistic_adam(lr, speed_limit=c)
      want, _ = fresh.update(grads, fresh.init(params), params)
      # Adam's first step is lr·sign(g) whatever the history (constant g).
      chex.assert_trees_all_close(u, want, rtol=1e-5)
      assert all(float(jnp.linalg.norm(x)) <= c for x in jax.tree.leaves(u))

  def test_multi_steps_accumulates_then_applies(self):
    k, grads = 3, _grads(6)
    inner = relax_optax.relativistic_adam(0.1, speed_limit=0.05)
    ours, _ = _run(optax.MultiSteps(inner, every_k_schedule=k), grads)
    # Independent expectation: the inner optimizer on the mean of each k grads.
    means = [
      jax.tree.map(lambda *g: sum(g) / k, *grads[i : i + k]) for i in range(0, len(grads), k)
    ]
    want, _ = _run(inner, means)
    chex.assert_trees_all_close(ours[k - 1], want[0], rtol=1e-6)
    chex.assert_trees_all_close(ours[2 * k - 1], want[1], rtol=1e-6)
    chex.assert_trees_all_close(ours[k], ours[k - 1])  # nothing applied mid-way

  def test_masked(self):
    grads = _grads(4)
    mask = {"w": True, "b": False}
    tx = optax.masked(relax_optax.relativistic_adam(0.1, speed_limit=0.01, mode="global"), mask)
    params = _params()
    state = tx.init(params)
    alone = relax_optax.relativistic_adam(0.1, speed_limit=0.01, mode="global")
    alone_state = alone.init({"w": params["w"]})
    for g in grads:
      u, state = tx.update(g, state, params)
      # Masked-out leaves pass through untouched ...
      chex.assert_trees_all_close(u["b"], g["b"])
      # ... and the global norm covers only the masked-in leaves.
      want, alone_state = alone.update({"w": g["w"]}, alone_state, {"w": params["w"]})
      chex.assert_trees_all_close(u["w"], want["w"], rtol=1e-6)

  def test_apply_if_finite_skips_a_nan_step_exactly(self):
    inner = relax_optax.relativistic_adam(0.1, speed_limit=0.05)
    tx = optax.apply_if_finite(inner, max_consecutive_errors=3)
    grads = _grads(4)
    nan = jax.tree.map(lambda x: x.at[0].set(jnp.nan), grads[1])
    ours, state = _run(tx, [grads[0], nan, grads[2], grads[3]])
    chex.assert_trees_all_equal(ours[1], ours[0])  # the NaN step changed nothing
    want, _ = _run(inner, [grads[0], grads[2], grads[3]])
    chex.assert_trees_all_close(ours[3], want[2], rtol=1e-6)
    assert int(state.total_notfinite) == 1
    chex.assert_tree_all_finite(ours)

  def test_flax_nnx_optimizer(self):
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    tx = relax_optax.relativistic_adam(0.05, speed_limit=0.02)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x = jax.random.normal(jax.random.key(1), (32, 3))
    y = x @ jnp.array([[1.0, -1.0], [0.5, 0.0], [0.0, 2.0]])

    def loss_fn(model):
      return jnp.mean((model(x) - y) ** 2)

    @nnx.jit
    def step(model, optimizer):
      loss, grads = nnx.value_and_grad(loss_fn)(model)
      optimizer.update(model, grads)
      return loss

    # The same 50 steps in plain Optax, from a copy of the initial parameters.
    graphdef = nnx.graphdef(model)
    params = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
    opt_state = tx.init(params)
    for _ in range(50):
      grads = jax.grad(lambda p: loss_fn(nnx.merge(graphdef, p)))(params)
      u, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, u)

    first = float(loss_fn(model))
    for _ in range(50):
      before = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
      step(model, optimizer)
      after = nnx.state(model, nnx.Param)
      step_norms = jax.tree.map(lambda a, b: jnp.linalg.norm(a - b), after, before)
      assert max(float(n) for n in jax.tree.leaves(step_norms)) <= 0.02 * (1 + 1e-5)
    chex.assert_trees_all_close(nnx.state(model, nnx.Param), params, rtol=1e-5, atol=1e-6)
    assert float(loss_fn(model)) < 0.5 * first


class TestRegressions:
  """Bugs found by adversarial testing, each failing before the fix."""

  @pytest.mark.parametrize("mode", ["global", "per_param", "per_component"])
  def test_complex_parameters_train_as_with_optax_adam(self, mode):
    target = jnp.asarray([1.0 + 2.0j, -0.5 + 0.1j, 3.0j])

    def loss(p):
      return jnp.sum(jnp.abs(p["z"] - target) ** 2)

    def run(tx, steps=300):
      params = {"z": jnp.zeros(3, jnp.complex64)}
      state = tx.init(params)
      for _ in range(steps):
        grads = jax.tree.map(jnp.conj, jax.grad(loss)(params))
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
      return params

    # With a limit far above the step, the update is Adam's.
    got = run(relax_optax.relativistic_adam(0.05, speed_limit=1e6, mode=mode), steps=3)
    want = run(optax.adam(0.05), steps=3)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)
    # With a binding limit it still converges, and each step is within it.
    params = run(relax_optax.relativistic_adam(0.05, speed_limit=0.02, mode=mode))
    assert float(loss(params)) < 1e-2

  def test_inject_hyperparams_with_the_warmup_schedule(self):
    # Was a TracerBoolConversionError (`if warmup_steps <= 0`).
    tx = optax.inject_hyperparams(relax_optax.relativistic_adam)(
      learning_rate=10.0, speed_limit=relax_optax.speed_limit_warmup(0.5, 4)
    )
    params = {"w": jnp.zeros(4)}
    state = tx.init(params)
    step = jax.jit(tx.update)
    norms = []
    for _ in range(5):
      updates, state = step({"w": jnp.full(4, 1e3)}, state, params)
      norms.append(float(jnp.linalg.norm(updates["w"])))
    # The limit ramps c/4, c/2, 3c/4, c, c; Adam's step (norm 20) saturates it.
    np.testing.assert_allclose(norms, [0.125, 0.25, 0.375, 0.5, 0.5], rtol=0.02)

  @pytest.mark.parametrize("mode", ["global", "per_param"])
  def test_tiny_learning_rate_and_limit_stay_finite(self, mode):
    # Was NaN in every leaf on the fast path.
    tx = relax_optax.relativistic_adam(1e-30, speed_limit=1e-35, mode=mode)
    params = {"a": jnp.ones((3, 2)), "b": jnp.ones(())}
    grads = {"a": jnp.full((3, 2), 0.3), "b": jnp.asarray(-2.0)}
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    chex.assert_tree_all_finite(updates)
    # Adam's first step is -lr·sign(g) per entry; ‖u‖/c = 1e5·sqrt(n): at the limit.
    for u in jax.tree.leaves(updates):
      assert 0 < np.linalg.norm(np.asarray(u, np.float64)) <= 1e-35 * (1 + 1e-5)

  def test_adamw_weight_decay_schedule(self):
    # Was a TypeError at construction ("float * function").
    wd = optax.linear_schedule(0.5, 0.0, 4)
    params = {"w": jnp.ones(2)}
    tx = relax_optax.relativistic_adamw(0.1, weight_decay=wd, speed_limit=HUGE)
    state, p = tx.init(params), params
    for t in range(3):
      u, state = tx.update({"w": jnp.zeros(2)}, state, p)
      new = optax.apply_updates(p, u)
      chex.assert_trees_all_close(new["w"], p["w"] * (1 - 0.1 * wd(t)), rtol=1e-6)
      p = new
