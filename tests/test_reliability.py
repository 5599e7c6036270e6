"""Non-finite and extreme updates, ``apply_if_finite``, and arbitrary pytrees.

Every expectation is computed independently in NumPy float64 from the
documented formulas (``_expected``), never by the code under test.
"""

from __future__ import annotations

import dataclasses

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import relax_optax

FORMULAS = relax_optax.FORMULAS
MODES = relax_optax.MODES
LOW_PRECISION = (jnp.float16, jnp.bfloat16, jnp.float32)


# ---------------------------------------------------------------------------
# The independent expectation.
# ---------------------------------------------------------------------------


def _factor(rho2: np.ndarray, formula: str) -> np.ndarray:
  """``f`` with ``v = u · f`` as a function of ``(‖u‖/c)²``, in float64."""
  rho2 = np.asarray(rho2, np.float64)
  rho = np.sqrt(rho2)
  safe = np.where(rho > 0, rho, 1.0)
  if formula == "lorentz":
    return 1.0 / np.sqrt(1.0 + rho2)
  tanh_ratio = np.where(rho < 1e-4, 1.0 - rho2 / 3.0, np.tanh(rho) / safe)
  if formula == "tanh":
    return tanh_ratio
  below = np.sqrt(np.maximum(1.0 - rho2, 0.0))
  return np.where(rho < 1.0, below, tanh_ratio)  # "reference"


# Entries beyond 2^40·c are clipped to ±2^40·c before anything else (documented).
CLAMP = 2.0**40


def _expected(leaves: list, c: float, mode: str, formula: str) -> list[np.ndarray]:
  """The documented result, in float64 (infinite entries count as ±2^40·c)."""
  wide = [np.clip(np.asarray(u, np.float64), -CLAMP * c, CLAMP * c) for u in leaves]
  if mode == "per_component":
    return [u * _factor((u / c) ** 2, formula) for u in wide]
  if mode == "per_param":
    groups = [[i] for i in range(len(wide))]
  else:
    groups = [list(range(len(wide)))]
  out = [None] * len(wide)
  for g in groups:
    # ‖u‖/c from the norm (hypot-like: no overflow of (u/c)² in float64
    # for the magnitudes used here).
    norm = np.sqrt(sum(np.sum(wide[i] ** 2) for i in g))
    f = _factor((norm / c) ** 2, formula)
    for i in g:
      out[i] = wide[i] * f
  return out


def _assert_matches(actual: list, expected: list, dtypes: list) -> None:
  for v, e, dtype in zip(actual, expected, dtypes, strict=True):
    info = jnp.finfo(dtype)
    # A few roundings of the input's dtype (the compute dtype is at least
    # float32), plus the smallest normal number for flushed subnormals. In
    # float64, tanh's series near 0 is exact to 6e-11 (relative), by design.
    rtol = max(4 * float(info.eps), 1e-6) if info.bits < 64 else 1e-10
    np.testing.assert_allclose(np.asarray(v, np.float64), e, rtol=rtol, atol=float(info.tiny))


def _tree_np() -> dict[str, np.ndarray]:
  # ‖b‖ = 1 = 2c: away from the reference formula's jump at ‖u‖ = c.
  return {"a": np.asarray([1.0, -2.0, 0.5, 0.25]), "b": np.asarray([[0.6, -0.8]])}


def _tree(dtype) -> dict[str, jax.Array]:
  return {k: jnp.asarray(v, dtype) for k, v in _tree_np().items()}


# ---------------------------------------------------------------------------
# Infinite and overflowing updates: the speed limit in their direction.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("formula", FORMULAS)
@pytest.mark.parametrize("mode", MODES)
def test_infinite_update_maps_to_speed_limit_in_its_direction(mode, formula, dtype):
  c = 0.5
  tree = _tree(dtype)
  exact = [np.asarray(tree[k], np.float64) for k in ("a", "b")]  # rounded to dtype
  tree["a"] = tree["a"].at[2].set(jnp.inf)
  out = relax_optax.relativistic_scale(tree, c, mode=mode, formula=formula)
  chex.assert_tree_all_finite(out)  # never NaN, in any formula
  chex.assert_trees_all_equal_dtypes(out, tree)
  a, b = (np.asarray(out[k], np.float64) for k in ("a", "b"))
  exact[0][2] = np.inf
  expected = _expected(exact, c, mode, formula)
  # The infinite entry takes the whole speed limit; its group's other entries
  # are scaled by about 2^-40 (negligible next to c).
  if mode != "per_component":
    np.testing.assert_allclose(expected[0], [0.0, 0.0, c, 0.0], atol=c * 1e-11)
  # Absolute tolerance: the dtype's rounding of c, and its flushed subnormals.
  atol = c * 4 * float(jnp.finfo(dtype).eps) + float(jnp.finfo(dtype).tiny)
  np.testing.assert_allclose(a, expected[0], rtol=4 * float(jnp.finfo(dtype).eps), atol=atol)
  np.testing.assert_allclose(b, expected[1], rtol=4 * float(jnp.finfo(dtype).eps), atol=atol)


@pytest.mark.parametrize("formula", FORMULAS)
@pytest.mark.parametrize("mode", ["global", "per_param"])
def test_several_infinite_entries_share_the_limit(mode, formula):
  u = {"w": jnp.asarray([-jnp.inf, 3.0, jnp.inf, jnp.inf]), "x": jnp.ones(2)}
  out = relax_optax.relativistic_scale(u, 2.0, mode=mode, formula=formula)
  k = 2.0 / np.sqrt(3.0)
  np.testing.assert_allclose(out["w"], [-k, 0.0, k, k], rtol=1e-6, atol=1e-11)
  chex.assert_tree_all_finite(out)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32], ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("formula", FORMULAS)
@pytest.mark.parametrize("mode", MODES)
def test_finite_update_whose_square_overflows_saturates(mode, formula, dtype):
  # (u/c)² overflows float32 (u/c = 3e38 / 1e-3), so the result is c in the
  # direction of u, computed without overflow.
  c = 1e-3
  u = {"w": jnp.asarray([3e38, -3e38, 1e38, 0.0], dtype)}
  out = np.asarray(
    relax_optax.relativistic_scale(u, c, mode=mode, formula=formula)["w"], np.float64
  )
  # Entries beyond 2^40·c are clipped there first, so the step is c in the
  # direction of the clipped update.
  w = np.clip(np.asarray(u["w"], np.float64), -CLAMP * c, CLAMP * c)
  if mode == "per_component":
    expected = c * np.sign(w)
  else:
    expected = c * w / np.linalg.norm(w)
  _assert_matches([out], [expected], [dtype])


@pytest.mark.parametrize("mode", MODES)
def test_speed_limit_zero_and_update_zero_give_zero(mode):
  formula = FORMULAS[MODES.index(mode)]  # each formula once
  u = {"a": jnp.asarray([jnp.inf, 1.0]), "z": jnp.zeros(3)}
  # A constant c = 0 is rejected; a traced one (a schedule at 0) gives 0.
  scale = jax.jit(relax_optax.relativistic_scale, static_argnames=("mode", "formula"))
  out = scale(u, 0.0, mode=mode, formula=formula)
  chex.assert_trees_all_equal(out, {"a": jnp.zeros(2), "z": jnp.zeros(3)})
  out = relax_optax.relativistic_scale({"z": jnp.zeros(3)}, 1.0, mode=mode, formula=formula)
  chex.assert_trees_all_equal(out, {"z": jnp.zeros(3)})


# ---------------------------------------------------------------------------
# NaN stays in its group.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("formula", FORMULAS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("also_inf", [False, True], ids=["nan", "nan+inf"])
def test_nan_stays_in_its_group(mode, formula, also_inf):
  c = 0.5
  tree = _tree(jnp.float32)
  tree["a"] = tree["a"].at[1].set(jnp.nan)
  if also_inf:
    tree["a"] = tree["a"].at[3].set(jnp.inf)
  out = relax_optax.relativistic_scale(tree, c, mode=mode, formula=formula)
  a, b = np.asarray(out["a"]), np.asarray(out["b"])
  if mode == "global":
    assert np.isnan(a).all() and np.isnan(b).all()  # one group: everything
    return
  clean_b = _expected([_tree_np()["b"]], c, mode, formula)[0]
  _assert_matches([b], [clean_b], [jnp.float32])  # other groups untouched
  if mode == "per_param":
    assert np.isnan(a).all()
  else:
    assert np.isnan(a[1])
    expected = _expected([_tree_np()["a"]], c, mode, formula)[0]
    if also_inf:
      expected[3] = c
    keep = np.arange(4) != 1
    _assert_matches([a[keep]], [expected[keep]], [jnp.float32])


# ---------------------------------------------------------------------------
# optax.apply_if_finite: a NaN step is as if it had not happened.
# ---------------------------------------------------------------------------


def _loss(params, batch):
  x, y = batch
  return jnp.mean((x @ params["w"] + params["b"][None] - y) ** 2)


def _batches(n: int, bad_at: int | None, bad_value: float):
  rng = np.random.default_rng(0)
  batches = []
  for _ in range(n):
    x = rng.normal(size=(8, 3)).astype(np.float32)
    batches.append((x, (x @ np.asarray([[1.0], [-2.0], [0.5]], np.float32)) + 0.1))
  if bad_at is not None:
    x, y = batches[bad_at]
    x = x.copy()
    x[0, 0] = bad_value
    batches.insert(bad_at, (x, y))
  return batches


def _run(tx, step, batches):
  params = {"w": jnp.zeros((3, 1)), "b": jnp.zeros(1)}
  state = tx.init(params)
  history = []
  for batch in batches:
    params, state = step(params, state, batch)
    history.append((params, state))
  return params, state, history


@pytest.mark.parametrize(
  ("mode", "bad_value"),
  [("global", np.nan), ("per_param", np.inf), ("per_component", np.nan)],
)
def test_apply_if_finite_skips_a_bad_step_exactly(mode, bad_value):
  # A warm-up schedule and Adam's count: neither may advance on the skipped step.
  tx = optax.apply_if_finite(
    relax_optax.relativistic_adam(
      0.1, speed_limit=relax_optax.speed_limit_warmup(0.05, 4), mode=mode
    ),
    max_consecutive_errors=3,
  )

  @jax.jit
  def step(params, state, batch):
    grads = jax.grad(_loss)(params, batch)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  bad_at = 2
  clean_params, clean_state, _ = _run(tx, step, _batches(6, None, bad_value))
  params, state, history = _run(tx, step, _batches(6, bad_at, bad_value))
  # The bad step itself changed nothing but the error counters.
  before, after = history[bad_at - 1], history[bad_at]
  chex.assert_trees_all_equal(after[0], before[0])
  chex.assert_trees_all_equal(after[1].inner_state, before[1].inner_state)
  assert int(after[1].notfinite_count) == 1 and not bool(after[1].last_finite)
  # Training continued exactly as if the step had not happened.
  chex.assert_trees_all_equal(params, clean_params)
  chex.assert_trees_all_equal(state.inner_state, clean_state.inner_state)
  assert int(state.total_notfinite) == 1 and int(state.notfinite_count) == 0
  assert not np.array_equal(params["w"], np.zeros((3, 1)))  # it did train


# ---------------------------------------------------------------------------
# Magnitudes 1e-30 … 1e30 in every float dtype never overflow (hypothesis).
# ---------------------------------------------------------------------------

# Decimal exponent range per dtype, "where the dtype allows" (float16 holds
# 6e-8 … 65504).
_EXPONENTS = {
  "float16": (-7.0, 4.8),
  "bfloat16": (-30.0, 30.0),
  "float32": (-30.0, 30.0),
  "float64": (-30.0, 30.0),
}
_SHAPES = ((5,), (2, 3))


def _all_variants(tree, c):
  return {
    (mode, formula): relax_optax.relativistic_scale(tree, c, mode=mode, formula=formula)
    for mode in MODES
    for formula in FORMULAS
  }


_all_variants_jit = jax.jit(_all_variants)


@st.composite
def _magnitudes(draw, dtype_name: str):
  lo, hi = _EXPONENTS[dtype_name]
  leaves = []
  for shape in _SHAPES:
    size = int(np.prod(shape))
    exps = draw(st.lists(st.floats(lo, hi), min_size=size, max_size=size))
    signs = draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=size, max_size=size))
    zeros = draw(st.lists(st.booleans(), min_size=size, max_size=size))
    values = np.asarray(signs) * 10.0 ** np.asarray(exps) * ~np.asarray(zeros)
    leaves.append(values.reshape(shape))
  c = 10.0 ** draw(st.floats(-30.0, 30.0))
  return leaves, c


def _check_extremes(dtype, leaves, c):
  tree = {f"l{i}": jnp.asarray(u, dtype) for i, u in enumerate(leaves)}
  # The exact inputs (after rounding to the dtype) are the reference's inputs.
  exact = [np.asarray(tree[f"l{i}"], np.float64) for i in range(len(leaves))]
  info = jnp.finfo(dtype)
  for (mode, formula), out in _all_variants_jit(tree, c).items():
    chex.assert_trees_all_equal_shapes_and_dtypes(out, tree)
    got = [np.asarray(out[f"l{i}"], np.float64) for i in range(len(leaves))]
    assert all(np.isfinite(v).all() for v in got), (mode, formula, got)
    # Never longer than the limit, in any group (up to output rounding).
    bound = c * (1 + 2 * float(info.eps)) + 4 * float(info.tiny)
    if mode == "global":
      assert np.sqrt(sum(np.sum(v**2) for v in got)) <= bound
    elif mode == "per_param":
      assert all(np.linalg.norm(v) <= bound for v in got)
    else:
      assert all(np.abs(v).max() <= bound for v in got)
    if formula != "reference":  # reference is discontinuous at ‖u‖ = c
      # A finite c above 2^(m-41) acts as 2^(m-41) (m: the compute dtype's
      # largest exponent; 2^87 for float32), documented.
      compute = jnp.promote_types(dtype, jnp.float32)
      c_eff = min(c, 2.0 ** (jnp.finfo(compute).maxexp - 41))
      _assert_matches(got, _expected(exact, c_eff, mode, formula), [dtype] * len(got))


_HYPOTHESIS = settings(
  max_examples=30,
  deadline=None,
  derandomize=True,
  suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=lambda d: jnp.dtype(d).name)
def test_extreme_magnitudes_never_overflow(dtype):
  @_HYPOTHESIS
  @given(_magnitudes(jnp.dtype(dtype).name))
  def check(leaves_and_c):
    _check_extremes(dtype, *leaves_and_c)

  check()


def test_extreme_magnitudes_never_overflow_float64():
  @_HYPOTHESIS
  @given(_magnitudes("float64"))
  def check(leaves_and_c):
    with jax.enable_x64(True):
      _check_extremes(jnp.float64, *leaves_and_c)

  check()
  assert not jax.config.jax_enable_x64  # the rest of the suite stays 32-bit


# ---------------------------------------------------------------------------
# Structure fuzzing: arbitrary pytrees through every mode.
# ---------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Pair:
  """A custom pytree node (as a Flax/Equinox module or chex dataclass would be)."""

  first: object
  second: object
  name: str = dataclasses.field(default="pair", metadata={"static": True})


_LEAF_SHAPES = ((), (0,), (3,), (2, 3), (0, 2), (1,))


@st.composite
def _array_leaf(draw):
  shape = draw(st.sampled_from(_LEAF_SHAPES))
  dtype = draw(st.sampled_from([np.float32, jnp.bfloat16]))
  values = draw(hnp.arrays(np.float32, shape, elements=st.floats(-100, 100, width=32)))
  if draw(st.booleans()) and shape == ():
    return float(values)  # a Python scalar leaf
  return jnp.asarray(values, dtype)


_EMPTY = st.sampled_from([{}, [], (), None])
_pytrees = st.recursive(
  st.one_of(_array_leaf(), _EMPTY),
  lambda children: st.one_of(
    st.dictionaries(st.sampled_from(["w", "b", "kernel", "scale"]), children, max_size=3),
    st.lists(children, max_size=3),
    st.lists(children, max_size=3).map(tuple),
    st.builds(Pair, children, children),
  ),
  max_leaves=6,
)


def _leaf_dtype(x):
  return jnp.asarray(x).dtype


@settings(
  max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
  _pytrees,
  st.sampled_from(MODES),
  st.sampled_from(FORMULAS),
  st.floats(0.01, 100.0),
  st.integers(0, 2),
)
def test_arbitrary_pytrees_through_every_mode(tree, mode, formula, c, which_tx):
  out = relax_optax.relativistic_scale(tree, c, mode=mode, formula=formula)
  assert jax.tree.structure(out) == jax.tree.structure(tree)
  leaves, out_leaves = jax.tree.leaves(tree), jax.tree.leaves(out)
  for u, v in zip(leaves, out_leaves, strict=True):
    assert jnp.shape(v) == jnp.shape(u) and _leaf_dtype(v) == _leaf_dtype(u)
  if leaves and formula != "reference":  # reference: ill-conditioned near ‖u‖ = c
    expected = _expected(leaves, c, mode, formula)
    _assert_matches(out_leaves, expected, [_leaf_dtype(u) for u in leaves])

  # The transformation (constant or scheduled limit) or an optimizer built
  # from it, on the same tree.
  tx = (
    relax_optax.scale_by_relativistic(c, mode=mode, formula=formula),
    relax_optax.scale_by_relativistic(optax.constant_schedule(c), mode=mode, formula=formula),
    relax_optax.relativistic_adam(0.1, speed_limit=c, mode=mode, formula=formula),
  )[which_tx]
  updates, _ = tx.update(tree, tx.init(tree), tree)
  assert jax.tree.structure(updates) == jax.tree.structure(tree)
  chex.assert_tree_all_finite(updates)


@pytest.mark.parametrize(
  "bad",
  [
    {"a": jnp.ones(2)},  # a missing key
    {"a": jnp.ones(2), "c": jnp.ones(3)},  # a different key
    [jnp.ones(2), jnp.ones(3)],  # a list instead of a dict
    {"a": jnp.ones(2), "b": (jnp.ones(3),)},  # a tuple instead of a leaf
  ],
  ids=["missing-key", "other-key", "list", "extra-level"],
)
@pytest.mark.parametrize("wrapper", ["none", "multi_steps", "apply_if_finite"])
def test_mismatched_updates_and_state_raise_a_clear_error(bad, wrapper):
  tx = relax_optax.relativistic_adam(
    speed_limit=relax_optax.speed_limit_warmup(0.1, 1000), mode="global"
  )
  if wrapper == "multi_steps":
    tx = optax.MultiSteps(tx, every_k_schedule=2)
  elif wrapper == "apply_if_finite":
    tx = optax.apply_if_finite(tx, max_consecutive_errors=2)
  params = {"a": jnp.ones(2), "b": jnp.ones(3)}
  state = tx.init(params)
  with pytest.raises(ValueError, match="pytree structure"):
    tx.update(bad, state, params)


def test_mismatched_leaf_shape_raises():
  tx = relax_optax.relativistic_adam()
  state = tx.init({"a": jnp.ones(2)})
  with pytest.raises((TypeError, ValueError), match="shape"):
    tx.update({"a": jnp.ones(3)}, state)
