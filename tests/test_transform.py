"""Tests of relax_optax.scale_by_relativistic as an Optax transformation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import relax_optax

MODES = ("global", "per_param", "per_component")


def _updates(scale=1.0):
  rng = np.random.default_rng(1)
  return {
    "w": jnp.asarray(scale * rng.standard_normal((5, 4)), jnp.float32),
    "b": jnp.asarray(scale * rng.standard_normal(4), jnp.float32),
  }


class ScaleByRelativisticTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_applies_relativistic_scale(self):
    for mode in MODES:
      for formula in relax_optax.FORMULAS:
        tx = relax_optax.scale_by_relativistic(0.3, mode=mode, formula=formula)
        u = _updates()
        state = tx.init(u)
        assert isinstance(state, optax.EmptyState)
        got, new_state = self.variant(tx.update)(u, state)
        want = relax_optax.relativistic_scale(u, 0.3, mode=mode, formula=formula)
        chex.assert_trees_all_close(got, want)
        assert isinstance(new_state, optax.EmptyState)

  @chex.variants(with_jit=True, without_jit=True)
  def test_schedule_counts_steps_in_int32(self):
    schedule = lambda count: 0.1 * (count + 1)
    tx = relax_optax.scale_by_relativistic(schedule, mode="global")
    u = _updates(scale=100.0)  # far above every limit: ‖v‖ ≈ c_t.
    state = tx.init(u)
    assert isinstance(state, relax_optax.ScaleByRelativisticState)
    chex.assert_type(state.count, jnp.int32)
    chex.assert_shape(state.count, ())
    update = self.variant(tx.update)
    for t in range(4):
      assert int(state.count) == t
      v, state = update(u, state)
      norm = float(optax.tree.norm(v))
      assert norm == pytest.approx(0.1 * (t + 1), rel=1e-4)
      assert norm <= 0.1 * (t + 1)
    assert int(state.count) == 4

  def test_no_retracing_across_steps(self):
    tx = relax_optax.scale_by_relativistic(optax.linear_schedule(0.01, 1.0, 10))
    u = _updates()
    state = tx.init(u)

    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(u, state):
      return tx.update(u, state)

    for i in range(5):
      _, state = step(jax.tree.map(lambda x, i=i: x * (i + 1), u), state)

  def test_vmap_equals_loop(self):
    tx = relax_optax.scale_by_relativistic(0.5, mode="global")
    batch = jax.tree.map(lambda x: jnp.stack([x, 0.1 * x, 10 * x]), _updates())
    state = tx.init(_updates())
    got, _ = jax.vmap(tx.update, in_axes=(0, None))(batch, state)
    for i in range(3):
      one = jax.tree.map(lambda x, i=i: x[i], batch)
      chex.assert_trees_all_close(
        jax.tree.map(lambda x, i=i: x[i], got), tx.update(one, state)[0], rtol=1e-6
      )

  def test_validation_at_construction(self):
    for bad in (-0.1, float("nan"), -float("inf"), np.float32(-1.0), jnp.array(-1e-30)):
      with pytest.raises(ValueError, match=r"speed_limit must be a number in \[0, inf\]"):
        relax_optax.scale_by_relativistic(bad)
    for bad in (None, "0.1", [0.1], False, jnp.ones(3)):
      with pytest.raises(TypeError, match="speed_limit"):
        relax_optax.scale_by_relativistic(bad)
    with pytest.raises(ValueError, match="mode must be one of"):
      relax_optax.scale_by_relativistic(0.1, mode="per_tensor")
    with pytest.raises(ValueError, match="formula must be one of"):
      relax_optax.scale_by_relativistic(0.1, formula="relu")

  def test_traced_speed_limit_is_not_validated(self):
    # Values traced under jit (as inject_hyperparams passes them) are accepted.
    @jax.jit
    def f(c, u):
      tx = relax_optax.scale_by_relativistic(c)
      return tx.update(u, tx.init(u))[0]

    v = f(jnp.float32(0.2), _updates(10.0))
    assert float(jnp.linalg.norm(v["w"])) <= 0.2

  def test_composes_after_any_optimizer(self):
    # The docstring's composition: v = scale(-lr · adam(g)).
    g = _updates()
    tx = optax.chain(
      optax.scale_by_adam(),
      optax.scale_by_learning_rate(0.5),
      relax_optax.scale_by_relativistic(0.1),
    )
    adam = optax.adam(0.5)
    v, _ = tx.update(g, tx.init(g))
    u, _ = adam.update(g, adam.init(g))
    chex.assert_trees_all_close(v, relax_optax.relativistic_scale(u, 0.1), rtol=1e-6)
