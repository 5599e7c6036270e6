"""Tests of relax_optax.rgd (Relativistic Gradient Descent) and rgd_eval_params.

The independent expectation is a NumPy transcription of the authors' code
(github.com/guisf/rgd, ``solvers_scaled.py``: ``relativistic``,
``relativistic2``, ``classical_momentum``, ``nesterov``), run in float64 with
``delta = 1/c²``; Optax's own ``sgd`` is the expectation for ``c = inf``.
"""

from __future__ import annotations

import decimal
import fractions
import json
import math

import chex
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from hypothesis import HealthCheck, given, settings

import relax_optax

# ---------------------------------------------------------------------------
# The authors' updates, transcribed (solvers_scaled.py), one step each.


def authors_relativistic(x, v, grad, stepsize, mu, delta):
  """``relativistic``: the simple form."""
  g = grad(x)
  v = mu * v - stepsize * g
  x = x + v / np.sqrt(1 + delta * v.dot(v))
  return x, v


def authors_relativistic2(x, v, grad, stepsize, mu, delta, alpha):
  """``relativistic2``: the leapfrog form with interpolation ``alpha``."""
  x_half = x + np.sqrt(mu) * v / np.sqrt(1 + (delta * mu) * v.dot(v))
  g = grad(x_half)
  v_half = np.sqrt(mu) * v - stepsize * g
  x = alpha * x_half + (1 - alpha) * x + v_half / np.sqrt(1 + delta * v_half.dot(v_half))
  v = np.sqrt(mu) * v_half
  return x, v


def authors_classical_momentum(x, v, grad, stepsize, mu):
  g = grad(x)
  v = mu * v - stepsize * g
  return x + v, v


def authors_nesterov(x, v, grad, stepsize, mu):
  y = x + mu * v
  g = grad(y)
  v = mu * v - stepsize * g
  return x + v, v


def _authors_run(step, x0, n, **hyper):
  xs, x, v = [x0], x0, np.zeros_like(x0)
  for _ in range(n):
    x, v = step(x, v, **hyper)
    xs.append(x)
  return np.stack(xs)


def _quadratic(d, seed):
  """``f = ½ xᵀAx − bᵀx`` with eigenvalues in [1e-2, 1], and a start far away."""
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.standard_normal((d, d)))
  a = (q * rng.uniform(1e-2, 1.0, d)) @ q.T
  b = rng.standard_normal(d)
  x0 = 10 * rng.standard_normal(d)
  return a, b, x0


def _run_rgd(tx, x0, n, grad):
  """``x_0 … x_n`` (the eval params), jit-compiled with ``lax.scan``."""

  def body(carry, _):
    params, state = carry
    updates, state = tx.update(grad(params), state, params)
    params = optax.apply_updates(params, updates)
    return (params, state), relax_optax.rgd_eval_params(state, params)

  @jax.jit
  def run(x0):
    _, xs = jax.lax.scan(body, (x0, tx.init(x0)), length=n)
    return jnp.concatenate([x0[None], xs])

  return np.asarray(run(x0))


# (d, stepsize, mu, c, alpha): alpha None is the simple form. The paper's tuned
# values (figs/params_quad_corr.txt) are among them: c = 1/sqrt(delta).
REFERENCE_CASES = [
  (2, 0.1, 0.9, 1.0, None),
  (10, 0.5, 0.8, 0.3, None),
  (50, 0.9, 0.95, 5.0, None),
  (2, 0.1, 0.9, 1.0, 1.0),
  (10, 0.116, 0.809, 1 / math.sqrt(0.848), 0.932),  # correlated quadratic, RGD
  (50, 0.947, 0.910, 1 / math.sqrt(0.222), 0.951),  # random quadratic, RGD
  (50, 0.3, 0.6, 0.05, 0.0),
  (10, 0.2, 0.99, 2.0, 0.5),
]


@pytest.mark.parametrize(("d", "stepsize", "mu", "c", "alpha"), REFERENCE_CASES)
def test_follows_the_authors_update_for_200_steps(d, stepsize, mu, c, alpha):
  a, b, x0 = _quadratic(d, seed=d)
  delta = 1 / c**2
  grad_np = lambda x: a @ x - b
  if alpha is None:
    step = lambda x, v: authors_relativistic(x, v, grad_np, stepsize, mu, delta)
  else:
    step = lambda x, v: authors_relativistic2(x, v, grad_np, stepsize, mu, delta, alpha)
  want = _authors_run(step, x0, 200)

  a32, b32 = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  tx = relax_optax.rgd(stepsize, momentum=mu, speed_limit=c, alpha=alpha)
  got = _run_rgd(tx, jnp.asarray(x0, jnp.float32), 200, lambda x: a32 @ x - b32)

  # float32 rounding: relative to the size of the iterates (‖x_0‖ ~ 10·sqrt(d)).
  scale = np.max(np.abs(want))
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * scale)
  # and the run moved: the steps are not trivially equal.
  assert np.linalg.norm(want[-1] - want[0]) > 0.1 * np.linalg.norm(want[0])


@pytest.mark.parametrize("alpha", [None, 0.7])
@pytest.mark.parametrize("mode", ["global", "per_param"])
def test_global_norm_is_over_the_whole_pytree(alpha, mode):
  """Two leaves, global mode: the authors' update on the concatenated vector;
  per_param: the authors' update leaf by leaf (each its own norm)."""
  a, b, x0 = _quadratic(12, seed=3)
  grad_np = lambda x: a @ x - b
  hyper = dict(stepsize=0.4, mu=0.9, delta=1 / 0.5**2)

  def step(x, v):
    if alpha is None:
      return authors_relativistic(x, v, grad_np, **hyper)
    return authors_relativistic2(x, v, grad_np, alpha=alpha, **hyper)

  a32, b32 = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)

  def grad_tree(p):
    x = jnp.concatenate([p["u"], p["w"].reshape(-1)])
    g = a32 @ x - b32
    return {"u": g[:5], "w": g[5:].reshape(7, 1)}

  tx = relax_optax.rgd(0.4, momentum=0.9, speed_limit=0.5, alpha=alpha, mode=mode)
  p0 = {"u": jnp.asarray(x0[:5], jnp.float32), "w": jnp.asarray(x0[5:], jnp.float32).reshape(7, 1)}

  @jax.jit
  def run(p):
    def body(carry, _):
      params, state = carry
      updates, state = tx.update(grad_tree(params), state, params)
      params = optax.apply_updates(params, updates)
      x = relax_optax.rgd_eval_params(state, params)
      return (params, state), jnp.concatenate([x["u"], x["w"].reshape(-1)])

    return jax.lax.scan(body, (p, tx.init(p)), length=100)[1]

  got = np.asarray(run(p0))
  if mode == "global":
    want = _authors_run(step, x0, 100)[1:]
  else:
    want = _per_leaf_reference(a, b, x0, alpha, 100, **hyper)
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.max(np.abs(want)))


def _per_leaf_reference(a, b, x0, alpha, n, stepsize, mu, delta):
  """The authors' update with one norm per leaf (x[:5] and x[5:])."""
  groups = [slice(0, 5), slice(5, None)]

  def lorentz(u):
    out = np.empty_like(u)
    for s in groups:
      out[s] = u[s] / np.sqrt(1 + delta * u[s].dot(u[s]))
    return out

  x, v, xs = x0, np.zeros_like(x0), []
  for _ in range(n):
    if alpha is None:
      v = mu * v - stepsize * (a @ x - b)
      x = x + lorentz(v)
    else:
      x_half = x + lorentz(np.sqrt(mu) * v)
      v_half = np.sqrt(mu) * v - stepsize * (a @ x_half - b)
      x = alpha * x_half + (1 - alpha) * x + lorentz(v_half)
      v = np.sqrt(mu) * v_half
    xs.append(x)
  return np.stack(xs)


# ---------------------------------------------------------------------------
# No speed limit: classical momentum and Nesterov, as Optax computes them.


def _optax_run(tx, x0, n, grad):
  def body(carry, _):
    params, state = carry
    updates, state = tx.update(grad(params), state, params)
    params = optax.apply_updates(params, updates)
    return (params, state), params

  xs = jax.jit(lambda p: jax.lax.scan(body, (p, tx.init(p)), length=n)[1])(x0)
  return np.asarray(xs)


@pytest.mark.parametrize(("lr", "mu"), [(0.1, 0.9), (0.7, 0.5), (0.05, 0.0)])
def test_infinite_speed_limit_is_optax_sgd_with_momentum(lr, mu):
  """Authors' v ← μv − εg, x ← x + v is Optax's t ← μt + g, x ← x − εt (v = −εt)."""
  a, b, x0 = _quadratic(20, seed=7)
  a32, b32 = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  grad = lambda x: a32 @ x - b32
  x0 = jnp.asarray(x0, jnp.float32)
  got = _optax_run(relax_optax.rgd(lr, momentum=mu, speed_limit=math.inf), x0, 100, grad)
  want = _optax_run(optax.sgd(lr, momentum=mu or None), x0, 100, grad)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["global", "per_param"])
def test_simple_form_is_sgd_then_the_library_scaling(mode):
  """With a constant learning rate, the simple form is Optax's heavy ball
  followed by the library's transform: where RGD sits relative to
  relativistic_adam (which puts the same factor after Adam instead)."""
  params = {"a": jnp.linspace(-3.0, 3.0, 7), "b": jnp.ones((2, 3))}
  grad = jax.grad(lambda p: sum(jnp.sum(jnp.cosh(x)) for x in jax.tree.leaves(p)))
  run = lambda tx: _optax_run_tree(tx, params, 40, grad)
  got = run(relax_optax.rgd(0.2, momentum=0.9, speed_limit=0.3, mode=mode))
  want = run(
    optax.chain(optax.sgd(0.2, momentum=0.9), relax_optax.scale_by_relativistic(0.3, mode=mode))
  )
  chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)


def _optax_run_tree(tx, params, n, grad):
  @jax.jit
  def run(params):
    def body(carry, _):
      p, s = carry
      u, s = tx.update(grad(p), s, p)
      return (optax.apply_updates(p, u), s), None

    return jax.lax.scan(body, (params, tx.init(params)), length=n)[0][0]

  return run(params)


def test_infinite_speed_limit_leapfrog_alpha0_is_nesterov():
  """``alpha = 0``, ``c = inf``: the iterate is the authors' NAG, and the
  parameters (the look-ahead points) are ``optax.sgd(nesterov=True)``'s."""
  a, b, x0 = _quadratic(20, seed=8)
  a32, b32 = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  grad = lambda x: a32 @ x - b32
  x0_32 = jnp.asarray(x0, jnp.float32)
  tx = relax_optax.rgd(0.3, momentum=0.9, speed_limit=math.inf, alpha=0.0)
  params = _optax_run(tx, x0_32, 100, grad)
  want = _optax_run(optax.sgd(0.3, momentum=0.9, nesterov=True), x0_32, 100, grad)
  np.testing.assert_allclose(params, want, rtol=1e-5, atol=1e-5)
  iterate = _run_rgd(tx, x0_32, 100, grad)
  nag = _authors_run(lambda x, v: authors_nesterov(x, v, lambda z: a @ z - b, 0.3, 0.9), x0, 100)
  np.testing.assert_allclose(iterate, nag, rtol=0, atol=2e-5 * np.max(np.abs(nag)))


# ---------------------------------------------------------------------------
# The speed limit holds for any input.

_BIG = float(np.float32(1e30))
_floats = st.floats(allow_nan=False, allow_infinity=True, width=32)
_vectors = hnp.arrays(np.float32, 6, elements=_floats)
_finite_vectors = hnp.arrays(
  np.float32, 6, elements=st.floats(-_BIG, _BIG, allow_nan=False, width=32)
)


_STEPS = {}


def _step(alpha, mode):
  key = (alpha, mode)
  if key not in _STEPS:

    @jax.jit
    def step(g, v, x, lr, mu, c):
      tx = relax_optax.rgd(lr, momentum=mu, speed_limit=c, alpha=alpha, mode=mode)
      state = tx.init(x)
      state = state._replace(velocity=v)
      if alpha is not None:
        # x_half for this state, as the previous step would have returned it.
        params = x + relax_optax.relativistic_scale(jnp.sqrt(mu) * v, c, mode=mode)
      else:
        params = x
      updates, new = tx.update(g, state, params)
      new_x = relax_optax.rgd_eval_params(new, params + updates)
      return new_x - x

    _STEPS[key] = step
  return _STEPS[key]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
  g=_vectors,
  v=_finite_vectors,
  lr=st.floats(1e-6, 1e3),  # ε = 0 times an infinite g is NaN (IEEE)
  mu=st.floats(0, 0.999),
  c=st.floats(1e-3, 1e3),
  alpha=st.sampled_from([None, 0.0, 0.5, 1.0]),
)
def test_speed_limit_holds_for_any_gradient(g, v, lr, mu, c, alpha):
  """‖x_{k+1} − x_k‖ ≤ c (simple form) and ≤ (1 + α)·c (leapfrog), for any
  finite velocity and any gradient, including huge and infinite ones."""
  x = jnp.linspace(-1.0, 1.0, 6, dtype=jnp.float32)
  dx = np.asarray(_step(alpha, "global")(jnp.asarray(g), jnp.asarray(v), x, lr, mu, c))
  assert np.all(np.isfinite(dx))
  bound = c * (1 if alpha is None else 1 + alpha)
  # float32: the factor's rounding, and x's rounding (|x| <= 1 + 2c).
  tol = bound * 1e-5 + 4 * np.spacing(np.float32(1 + 2 * c))
  assert np.linalg.norm(dx.astype(np.float64)) <= bound + tol


def test_speed_limit_holds_over_a_run_of_huge_gradients():
  """Gradients up to float32's max, alternating sign: ε·g overflows (the
  authors' arithmetic would give inf, then inf − inf = NaN); every step still
  moves at most c and nothing becomes NaN."""
  c = 0.25
  tx = relax_optax.rgd(10.0, momentum=0.9, speed_limit=c)
  big = np.finfo(np.float32).max

  @jax.jit
  def step(params, state, g):
    updates, state = tx.update(g, state, params)
    return optax.apply_updates(params, updates), state, updates

  params = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
  state = tx.init(params)
  for k in range(8):
    s = (-1.0) ** (k // 3)
    g = {"a": jnp.full(3, s * big), "b": jnp.full((2, 2), s * big / (k + 1))}
    params, state, updates = step(params, state, g)
    assert float(optax.tree.norm(updates)) <= c * (1 + 1e-6)
  # It did overflow: the velocity sits at the largest float32.
  assert np.all(np.abs(np.asarray(state.velocity["a"])) == big)
  chex.assert_tree_all_finite((params, state))


# ---------------------------------------------------------------------------
# A battery over every variant (as Optax's alias tests).

BATTERY = [
  ("simple-global", dict(learning_rate=0.1)),
  ("simple-per_param", dict(learning_rate=0.1, speed_limit=0.2, mode="per_param")),
  ("simple-per_component", dict(learning_rate=0.1, mode="per_component")),
  (
    "simple-schedules",
    dict(
      learning_rate=optax.cosine_decay_schedule(0.2, 1000),
      speed_limit=optax.linear_schedule(0.05, 1.0, 50),
    ),
  ),
  ("simple-no-limit", dict(learning_rate=0.1, speed_limit=math.inf)),
  ("leapfrog-1", dict(learning_rate=0.1, alpha=1.0)),
  ("leapfrog-0", dict(learning_rate=0.1, alpha=0.0, speed_limit=0.5)),
  ("leapfrog-per_param", dict(learning_rate=0.1, alpha=0.5, mode="per_param")),
  (
    "leapfrog-schedules",
    dict(
      learning_rate=optax.exponential_decay(0.2, 50, 0.5),
      speed_limit=lambda t: 0.1 + 0.01 * t,
      alpha=0.9,
    ),
  ),
]


def _params(dtype=jnp.float32):
  return {"w": jnp.full((3, 2), 2.0, dtype), "b": jnp.array([-1.0, 3.0], dtype)}


def _mixed_params():
  """A float32 leaf and a bfloat16 leaf: dtypes must be kept leaf by leaf."""
  return {"w": jnp.full((3, 2), 2.0, jnp.float32), "b": jnp.array([-1.0, 3.0], jnp.bfloat16)}


def _loss(p):
  return sum(jnp.sum(jnp.square(x.astype(jnp.float32) - 0.5)) for x in jax.tree.leaves(p))


@pytest.mark.parametrize(("name", "kwargs"), BATTERY, ids=[n for n, _ in BATTERY])
def test_battery(name, kwargs):
  """Finite, shapes and dtypes kept (float32 and bfloat16 leaves), the right
  state type, int32 count, and convergence on a small quadratic."""
  tx = relax_optax.rgd(**kwargs)
  params = _mixed_params()
  state = tx.init(params)
  leapfrog = kwargs.get("alpha") is not None
  assert isinstance(state, relax_optax.RGDLeapfrogState if leapfrog else relax_optax.RGDState)
  chex.assert_type(state.count, jnp.int32)

  @jax.jit
  def run(params, state):
    def body(carry, _):
      params, state = carry
      updates, state = tx.update(jax.grad(_loss)(params), state, params)
      return (optax.apply_updates(params, updates), state), updates

    (params, state), updates = jax.lax.scan(body, (params, state), length=150)
    return params, state, jax.tree.map(lambda u: u[-1], updates)

  params, state, updates = run(params, state)
  chex.assert_trees_all_equal_shapes_and_dtypes(updates, _mixed_params())
  chex.assert_trees_all_equal_shapes_and_dtypes(state.velocity, _mixed_params())
  chex.assert_tree_all_finite((params, state))
  assert int(state.count) == 150
  x = relax_optax.rgd_eval_params(state, params)
  chex.assert_trees_all_equal_shapes_and_dtypes(x, _mixed_params())
  assert float(_loss({"w": x["w"]})) < 1e-4, (name, x)
  assert float(_loss({"b": x["b"]})) < 1e-3, (name, x)  # bfloat16: 8 bits


# ---------------------------------------------------------------------------
# Transformations: jit, vmap, inject_hyperparams, MultiSteps, chain.


@pytest.mark.parametrize("alpha", [None, 0.8])
def test_jit_compiles_once(alpha):
  tx = relax_optax.rgd(
    optax.linear_schedule(0.1, 0.01, 10), momentum=0.9, speed_limit=0.3, alpha=alpha
  )
  params = _params()
  chex.clear_trace_counter()

  @chex.assert_max_traces(n=1)
  def step(params, state):
    updates, state = tx.update(jax.grad(_loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  jitted = jax.jit(step)
  state = tx.init(params)
  for _ in range(5):  # the count and the schedules change, the trace does not
    params, state = jitted(params, state)
  assert int(state.count) == 5


@pytest.mark.parametrize("alpha", [None, 0.8])
def test_vmap_over_independent_problems_equals_loop(alpha):
  """vmap over params, states and hyperparameters (the benchmark's tuning)."""
  lrs = jnp.array([0.05, 0.1, 0.3])
  cs = jnp.array([0.1, 1.0, jnp.inf])
  x0 = jnp.stack([jnp.linspace(-3, 3, 4), jnp.ones(4), -jnp.arange(4.0)])

  def run(x, lr, c):
    tx = relax_optax.rgd(lr, momentum=0.9, speed_limit=c, alpha=alpha)

    def body(carry, _):
      p, s = carry
      u, s = tx.update(p * jnp.arange(1.0, 5.0), s, p)
      return (optax.apply_updates(p, u), s), None

    (p, s), _ = jax.lax.scan(body, (x, tx.init(x)), length=20)
    return relax_optax.rgd_eval_params(s, p)

  got = jax.jit(jax.vmap(run))(x0, lrs, cs)
  for i in range(3):
    want = jax.jit(run)(x0[i], lrs[i], cs[i])
    chex.assert_trees_all_close(got[i], want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("alpha", [None, 0.8])
def test_inject_hyperparams(alpha):
  kwargs = dict(learning_rate=0.1, momentum=0.9, speed_limit=0.3)
  if alpha is not None:
    kwargs["alpha"] = alpha
  plain = relax_optax.rgd(**kwargs)
  injected = optax.inject_hyperparams(relax_optax.rgd, static_args=("mode",))(**kwargs)
  params = _params()

  steps = {}

  def run(tx, params, state, n):
    if tx not in steps:  # one compilation per optimizer

      @jax.jit
      def step(params, state):
        updates, state = tx.update(jax.grad(_loss)(params), state, params)
        return optax.apply_updates(params, updates), state

      steps[tx] = step
    for _ in range(n):
      params, state = steps[tx](params, state)
    return params, state

  p1, s1 = run(plain, params, plain.init(params), 5)
  p2, s2 = run(injected, params, injected.init(params), 5)
  chex.assert_trees_all_close(p1, p2, rtol=1e-6)
  chex.assert_trees_all_close(
    relax_optax.rgd_eval_params(s1, p1), relax_optax.rgd_eval_params(s2, p2), rtol=1e-6
  )
  # A changed hyperparameter takes effect: lr = 0 and μ = 0 stop the run.
  s2.hyperparams["learning_rate"] = jnp.asarray(0.0)
  s2.hyperparams["momentum"] = jnp.asarray(0.0)
  x_before = relax_optax.rgd_eval_params(s2, p2)
  p3, s3 = run(injected, p2, s2, 2)
  chex.assert_trees_all_close(relax_optax.rgd_eval_params(s3, p3), x_before)


@pytest.mark.parametrize("alpha", [None, 0.8])
def test_multi_steps_equals_the_mean_gradient(alpha):
  """MultiSteps(k=3) on g1, g2, g3 is one step on their mean."""
  tx = relax_optax.rgd(0.2, momentum=0.9, speed_limit=0.5, alpha=alpha)
  multi = optax.MultiSteps(tx, every_k_schedule=3)
  params = _params()
  grads = [jax.tree.map(lambda x, i=i: (i + 1.0) * x - i, params) for i in range(6)]

  def step(tx):
    @jax.jit
    def f(g, state, params):
      u, state = tx.update(g, state, params)
      return optax.apply_updates(params, u), state

    return f

  p_multi, s_multi = params, multi.init(params)
  step_multi = step(multi)
  for g in grads:
    p_multi, s_multi = step_multi(g, s_multi, p_multi)
  p_one, s_one = params, tx.init(params)
  step_one = step(tx)
  for k in (0, 3):
    mean = jax.tree.map(lambda *g: sum(g) / 3, *grads[k : k + 3])
    p_one, s_one = step_one(mean, s_one, p_one)
  chex.assert_trees_all_close(p_multi, p_one, rtol=1e-6)
  chex.assert_trees_all_close(
    relax_optax.rgd_eval_params(s_multi, p_multi),
    relax_optax.rgd_eval_params(s_one, p_one),
    rtol=1e-6,
  )


def test_eval_params_finds_the_state_inside_wrappers():
  params = _params()
  tx = optax.chain(optax.add_decayed_weights(1e-3), relax_optax.rgd(0.1, alpha=0.5))
  state = tx.init(params)
  u, state = jax.jit(tx.update)(jax.grad(_loss)(params), state, params)
  new = optax.apply_updates(params, u)
  x = relax_optax.rgd_eval_params(state, new)
  chex.assert_trees_all_close(x, state[1].iterate)
  assert not np.allclose(x["w"], new["w"])  # x_half ≠ x after a step
  # The simple form: the parameters are the iterate.
  simple = relax_optax.rgd(0.1)
  s = simple.init(params)
  assert relax_optax.rgd_eval_params(s, params) is params


def test_leapfrog_params_at_init_and_after_apply_updates():
  """At init x_half_0 = x_0 = params; after each update the parameters are the
  next x_half = x + R(√μ·v), computed from the state."""
  mu, c = 0.81, 0.2
  tx = relax_optax.rgd(0.5, momentum=mu, speed_limit=c, alpha=0.3)
  params = {"w": jnp.array([3.0, -4.0])}
  state = tx.init(params)
  chex.assert_trees_all_equal(state.iterate, params)
  chex.assert_trees_all_equal(state.velocity, {"w": jnp.zeros(2)})
  update = jax.jit(tx.update)
  for _ in range(4):
    u, state = update({"w": 2 * params["w"]}, state, params)
    params = optax.apply_updates(params, u)
    x_half = state.iterate["w"] + np.asarray(state.velocity["w"]) * 0.9 / np.sqrt(
      1 + 0.81 * np.sum(np.square(state.velocity["w"])) / c**2
    )
    np.testing.assert_allclose(params["w"], x_half, rtol=1e-6, atol=1e-7)


def test_leapfrog_needs_params():
  tx = relax_optax.rgd(0.1, alpha=0.5)
  state = tx.init(_params())
  with pytest.raises(ValueError, match="params"):
    tx.update(_params(), state)


# ---------------------------------------------------------------------------
# Checkpoints: an interrupted run resumes bit for bit (Orbax).


def test_orbax_resume_is_bit_identical(tmp_path):
  """The leapfrog form: its state (count, velocity, iterate) covers the simple form's."""
  alpha = 0.9

  def make():
    inner = relax_optax.rgd(
      optax.cosine_decay_schedule(0.2, 10),
      momentum=0.8,
      speed_limit=optax.linear_schedule(0.1, 1.0, 10),
      alpha=alpha,
    )
    return optax.MultiSteps(inner, every_k_schedule=2)

  def batch(t):
    return jax.tree.map(lambda x: x * (1 + 0.1 * t), _params())

  steps = {}

  def train(tx, params, state, start, stop):
    if tx not in steps:  # one compilation per optimizer object

      @jax.jit
      def step(params, state, target):
        loss = lambda p: optax.tree.norm(optax.tree.sub(p, target), squared=True)
        u, state = tx.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, u), state

      steps[tx] = step
    for t in range(start, stop):
      params, state = steps[tx](params, state, batch(t))
    return params, state

  tx = make()
  params = jax.tree.map(lambda x: -x, _params())
  p_k, s_k = train(tx, params, tx.init(params), 0, 5)  # K = 5: mid-accumulation
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "ckpt", {"params": p_k, "opt_state": s_k})
  checkpointer.wait_until_finished()
  p_t, s_t = train(tx, p_k, s_k, 5, 10)

  fresh = make()  # a new optimizer, restored into its abstract state
  abstract_params = jax.eval_shape(lambda: params)
  abstract = {"params": abstract_params, "opt_state": jax.eval_shape(fresh.init, abstract_params)}
  restored = checkpointer.restore(tmp_path / "ckpt", abstract)
  checkpointer.close()
  assert int(restored["opt_state"].mini_step) == 1
  p_r, s_r = train(fresh, restored["params"], restored["opt_state"], 5, 10)
  chex.assert_trees_all_equal(p_r, p_t, strict=True)
  chex.assert_trees_all_equal(s_r, s_t, strict=True)
  assert jax.tree.structure(s_r) == jax.tree.structure(s_t)


# ---------------------------------------------------------------------------
# Validation at construction time.


@pytest.mark.parametrize(
  ("kwargs", "name"),
  [
    (dict(momentum=1.0), "momentum"),
    (dict(momentum=-0.1), "momentum"),
    (dict(momentum=math.nan), "momentum"),
    (dict(alpha=-0.01), "alpha"),
    (dict(alpha=1.5), "alpha"),
    (dict(alpha=np.float32(2.0)), "alpha"),
    (dict(speed_limit=-1e-30), "speed_limit"),
    (dict(speed_limit=-1.0), "speed_limit"),
    (dict(speed_limit=math.nan), "speed_limit"),
    (dict(speed_limit=jnp.asarray(-1.0)), "speed_limit"),
    (dict(learning_rate=-0.1), "learning_rate"),
    (dict(learning_rate=math.inf), "learning_rate"),
    (dict(mode="per_leaf"), "mode"),
  ],
)
def test_value_errors_name_the_argument(kwargs, name):
  kwargs = {"learning_rate": 0.1, **kwargs}
  with pytest.raises(ValueError, match=name):
    relax_optax.rgd(**kwargs)


@pytest.mark.parametrize(
  ("kwargs", "name"),
  [
    (dict(momentum="0.9"), "momentum"),
    (dict(momentum=lambda t: 0.9), "momentum"),
    (dict(alpha="1"), "alpha"),
    (dict(speed_limit=None), "speed_limit"),
    (dict(learning_rate=True), "learning_rate"),
  ],
)
def test_type_errors_name_the_argument(kwargs, name):
  kwargs = {"learning_rate": 0.1, **kwargs}
  with pytest.raises(TypeError, match=name):
    relax_optax.rgd(**kwargs)


def test_valid_edges_are_accepted():
  relax_optax.rgd(0.0, momentum=0.0, speed_limit=math.inf, alpha=0.0)
  relax_optax.rgd(1.0, momentum=0.999, speed_limit=1e-30, alpha=1.0)
  relax_optax.rgd(optax.constant_schedule(0.1), speed_limit=lambda t: 1.0, alpha=jnp.asarray(0.5))


# ---------------------------------------------------------------------------
# The benchmark runs the authors' methods (float64, as their NumPy code).


@pytest.mark.slow
def test_benchmark_methods_are_the_authors():
  """rgd_paper.py's CM, NAG (optax, evaluated at the authors' x) and RGD
  follow solvers_scaled.py, and its alternating matrix completion follows
  matrix_compl.py, in float64."""
  from benchmarks import rgd_paper

  h = {"stepsize": 0.1, "mu": 0.85, "delta": 0.8, "alpha": 0.9}
  with jax.enable_x64(True):
    problem = rgd_paper.PROBLEMS["corr_quad"]
    inst = problem.make(3)
    q, x0 = inst["Q"], inst["x0"]
    f = lambda x: 0.5 * x @ q @ x
    grad = lambda x: q @ x
    reference = {
      "CM": lambda x, v: authors_classical_momentum(x, v, grad, 0.1, 0.85),
      "NAG": lambda x, v: authors_nesterov(x, v, grad, 0.1, 0.85),
      "RGD": lambda x, v: authors_relativistic2(x, v, grad, 0.1, 0.85, 0.8, 0.9),
    }
    for method, step in reference.items():
      want = [f(x) for x in _authors_run(step, x0, 30)]
      got = rgd_paper.trajectory(problem, method, h, jax.tree.map(jnp.asarray, inst), 30)
      np.testing.assert_allclose(np.asarray(got), want, rtol=1e-9, err_msg=method)

    problem = rgd_paper.PROBLEMS["matrix_completion"]
    inst = problem.make(0)
    m, mask = inst["M"], inst["mask"]
    a, b = inst["x0"]["A"], inst["x0"]["B"]
    hm = {"stepsize": 0.003, "mu": 0.6, "delta": 0.5, "alpha": 0.8}
    got = rgd_paper.trajectory(problem, "RGD", hm, jax.tree.map(jnp.asarray, inst), 20)
    want = [np.linalg.norm(m - a @ b.T)]
    va, vb = np.zeros_like(a), np.zeros_like(b)
    mobs = mask * m
    for _ in range(20):
      a_half = a + np.sqrt(0.6) * va / np.sqrt(0.5 * 0.6 * np.sum(va**2) + 1)
      va_half = np.sqrt(0.6) * va - 0.003 * (-(mask * (mobs - a_half @ b.T)) @ b)
      a = 0.8 * a_half + 0.2 * a + va_half / np.sqrt(0.5 * np.sum(va_half**2) + 1)
      va = np.sqrt(0.6) * va_half
      b_half = b + np.sqrt(0.6) * vb / np.sqrt(0.5 * 0.6 * np.sum(vb**2) + 1)
      vb_half = np.sqrt(0.6) * vb - 0.003 * (-(mask * (mobs - a @ b_half.T)).T @ a)
      b = 0.8 * b_half + 0.2 * b + vb_half / np.sqrt(0.5 * np.sum(vb_half**2) + 1)
      vb = np.sqrt(0.6) * vb_half
      want.append(np.linalg.norm(m - a @ b.T))
    np.testing.assert_allclose(np.asarray(got), np.array(want) / np.linalg.norm(m), rtol=1e-9)


# ---------------------------------------------------------------------------
# The benchmark's quick mode writes the documented JSON.


@pytest.mark.slow
def test_paper_benchmark_quick_json(tmp_path):
  from benchmarks import rgd_paper

  rgd_paper.main(["--quick", "--out", str(tmp_path)])
  data = json.loads((tmp_path / "rgd_paper_quick.json").read_text())
  assert {"config", "problems"} <= set(data)
  assert data["config"]["quick"] is True
  for problem in data["problems"].values():
    for method in ("CM", "NAG", "RGD"):
      entry = problem["tuned"][method]
      assert set(entry) >= {"params", "final_f", "iters_to_tol", "curve", "seeds"}
      assert len(entry["curve"]) == problem["iterations"] + 1


def test_arguments_that_failed_only_at_the_first_update():
  with pytest.raises(TypeError, match="learning_rate must be a real scalar"):
    relax_optax.rgd(fractions.Fraction(1, 10))  # was accepted, then failed in jnp
  with pytest.raises(TypeError, match="momentum must be a real scalar"):
    relax_optax.rgd(0.1, momentum=decimal.Decimal("0.9"))


@pytest.mark.parametrize("alpha", [None, 1.0])
def test_complex_velocity_overflow_stays_finite(alpha):
  # jnp.clip on complex raised; each component is now clipped to the finite range.
  tx = relax_optax.rgd(1e30, momentum=0.9, speed_limit=0.5, alpha=alpha)
  params = jnp.asarray([0.0j, 1.0 + 1.0j], jnp.complex64)
  state = tx.init(params)
  g = jnp.asarray([1e20 + 1e20j, 1.0 - 2.0j], jnp.complex64)
  for _ in range(3):
    updates, state = jax.jit(tx.update)(g, state, params)
    params = optax.apply_updates(params, updates)
  assert np.isfinite(np.asarray(params)).all()
  assert np.isfinite(np.asarray(state.velocity)).all()
