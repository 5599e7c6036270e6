"""Tests of relax_optax.relativistic_scale: formulas, modes, numerics."""

import math

import chex
import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import relax_optax

MODES = ("global", "per_param", "per_component")
FORMULAS = ("lorentz", "tanh", "reference")
DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


# An independent float64 NumPy expectation of the DESIGN.md table.
def _np_formula(u: np.ndarray, c: float, formula: str) -> np.ndarray:
  n = np.linalg.norm(u)
  rho = n / c
  if n == 0:
    return u
  if formula == "lorentz":
    return u / np.sqrt(1 + rho**2)
  if formula == "tanh" or rho >= 1:
    return u * np.tanh(rho) / rho
  return u * np.sqrt(1 - rho**2)


def _np_scale(tree, c, mode, formula):
  leaves, treedef = jax.tree.flatten(tree)
  leaves = [np.asarray(x, np.float64) for x in leaves]
  if mode == "global":
    flat = np.concatenate([x.ravel() for x in leaves])
    out_flat = _np_formula(flat, c, formula)
    out, start = [], 0
    for x in leaves:
      out.append(out_flat[start : start + x.size].reshape(x.shape))
      start += x.size
  elif mode == "per_param":
    out = [_np_formula(x.ravel(), c, formula).reshape(x.shape) for x in leaves]
  else:
    out = [
      np.array([_np_formula(e[None], c, formula)[0] for e in x.ravel()]).reshape(x.shape)
      for x in leaves
    ]
  return jax.tree.unflatten(treedef, out)


def _groups(u_tree, v_tree, mode):
  """Pairs (u, v) of float64 vectors, one per group of the mode."""
  us = [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(u_tree)]
  vs = [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(v_tree)]
  if mode == "global":
    return [(np.concatenate(us), np.concatenate(vs))]
  if mode == "per_param":
    return list(zip(us, vs, strict=True))
  return [(u[i : i + 1], v[i : i + 1]) for u, v in zip(us, vs, strict=True) for i in range(u.size)]


def _tree(rng, scale):
  return {
    "w": scale * rng.standard_normal((4, 3)).astype(np.float32),
    "b": scale * rng.standard_normal((3,)).astype(np.float32),
    "s": np.float32(scale * rng.standard_normal()),
  }


class TestAgainstNumPy(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_the_formula_table(self):
    rng = np.random.default_rng(0)
    for mode in MODES:
      for formula in FORMULAS:
        fn = self.variant(
          lambda t, c, mode=mode, formula=formula: relax_optax.relativistic_scale(
            t, c, mode=mode, formula=formula
          )
        )
        for scale in (1e-3, 0.05, 0.3, 3.0, 1e3):
          tree = _tree(rng, scale)
          got = fn(tree, 0.5)
          want = _np_scale(tree, 0.5, mode, formula)
          chex.assert_trees_all_close(got, want, rtol=2e-5, atol=1e-30)


@pytest.mark.parametrize(
  "ratio, speed",
  [
    (0.5, 0.433),
    (0.707, 0.500),
    (0.9, 0.392),
    (0.99, 0.140),
    (0.999, 0.045),
    (1.0, 0.762),
    (2.0, 0.964),
  ],
)
def test_reference_formula_reproduces_design_table(ratio, speed):
  # The measured table of DESIGN.md: the original formula is neither
  # continuous nor monotone.
  c = 1.0
  u = jnp.array([ratio * 0.6, ratio * 0.8])  # ‖u‖ = ratio
  v = relax_optax.relativistic_scale(u, c, formula="reference")
  assert float(jnp.linalg.norm(v)) / c == pytest.approx(speed, abs=6e-4)


def test_reference_formula_is_discontinuous_and_lorentz_is_not():
  below = jnp.array([1.0 - 1e-4])
  above = jnp.array([1.0])
  ref = [
    float(relax_optax.relativistic_scale(x, 1.0, formula="reference")[0]) for x in (below, above)
  ]
  lor = [float(relax_optax.relativistic_scale(x, 1.0)[0]) for x in (below, above)]
  assert ref[1] - ref[0] > 0.7
  assert abs(lor[1] - lor[0]) < 1e-4


@pytest.mark.parametrize("formula", FORMULAS)
def test_global_on_one_leaf_equals_per_param(formula):
  u = {"w": jnp.arange(-3.0, 3.0).reshape(2, 3)}
  for c in (0.1, 1.0, 100.0):
    chex.assert_trees_all_close(
      relax_optax.relativistic_scale(u, c, mode="global", formula=formula),
      relax_optax.relativistic_scale(u, c, mode="per_param", formula=formula),
    )


@pytest.mark.parametrize("formula", FORMULAS)
def test_per_component_on_scalars_equals_per_param(formula):
  u = [jnp.float32(x) for x in (-5.0, -0.3, 0.0, 0.05, 2.0)]
  chex.assert_trees_all_close(
    relax_optax.relativistic_scale(u, 0.5, mode="per_component", formula=formula),
    relax_optax.relativistic_scale(u, 0.5, mode="per_param", formula=formula),
  )


@pytest.mark.parametrize("formula", FORMULAS)
@pytest.mark.parametrize("c", [1e-30, 1e-3, 0.5, 1e3, 1e20])
def test_per_component_per_entry_form_equals_the_general_factor(formula, c):
  """per_component's per-entry form (c·tanh(u/c), ...) against per_param's f(q).

  One array of entries from 1e-38 to 1e38 times c, both signs, 0 and ±inf,
  under jit; per_param on size-1 leaves evaluates the general factor. (Up to
  c = 1e20: above about 3e26, 2^40·c overflows and per_param's clamp of an
  infinite entry no longer reaches c.)
  """
  mags = np.concatenate([[0.0], 10.0 ** np.arange(-38, 39, 1.0), [np.inf]])
  x = np.concatenate([mags, -mags]) * c
  x = x[(np.abs(x) < 3e38) | np.isinf(x)].astype(np.float32)  # float32 numbers and ±inf
  scale = jax.jit(relax_optax.relativistic_scale, static_argnames=("mode", "formula"))
  per_entry = scale(jnp.asarray(x), c, mode="per_component", formula=formula)
  general = scale([jnp.asarray(e) for e in x], c, mode="per_param", formula=formula)
  np.testing.assert_allclose(per_entry, np.stack(general), rtol=2e-6, atol=0)
  assert np.all(np.abs(per_entry) <= np.float32(c) * (1 + 1e-6))


@pytest.mark.parametrize("formula", FORMULAS)
def test_per_component_without_a_limit_is_the_identity_with_a_finite_gradient(formula):
  u = jnp.array([-3.0, 0.0, 1e-3, 2e30])
  f = lambda u: jnp.sum(
    relax_optax.relativistic_scale(u, jnp.inf, mode="per_component", formula=formula)
  )
  chex.assert_trees_all_equal(
    relax_optax.relativistic_scale(u, jnp.inf, mode="per_component", formula=formula), u
  )
  chex.assert_trees_all_close(jax.grad(f)(u), jnp.ones(4))


def test_global_is_one_factor_for_the_whole_tree():
  u = {"a": jnp.array([3.0]), "b": jnp.array([4.0])}  # global ‖u‖ = 5
  v = relax_optax.relativistic_scale(u, 5.0, mode="global")
  chex.assert_trees_all_close(v, jax.tree.map(lambda x: x / math.sqrt(2), u), rtol=1e-6)
  # Per leaf, each is scaled by its own norm instead: 3/hypot(1, 3/5), ...
  w = relax_optax.relativistic_scale(u, 5.0, mode="per_param")
  chex.assert_trees_all_close(
    w,
    {"a": jnp.array([3.0 / math.hypot(1, 0.6)]), "b": jnp.array([4.0 / math.hypot(1, 0.8)])},
    rtol=1e-6,
  )


def test_none_and_masked_leaves_pass_through():
  u = {"a": jnp.ones(3), "none": None, "masked": optax.MaskedNode()}
  for mode in MODES:
    v = relax_optax.relativistic_scale(u, 0.1, mode=mode)
    assert v["none"] is None
    assert isinstance(v["masked"], optax.MaskedNode)
    chex.assert_trees_all_close(v["a"], relax_optax.relativistic_scale(u["a"], 0.1, mode=mode))


# ---------------------------------------------------------------------------
# Numerics.


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("formula", FORMULAS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dtype_kept_and_large_updates_finite(mode, formula, dtype):
  u = {"w": jnp.full((4, 4), 1e4, dtype), "b": jnp.full((4,), -1e4, dtype)}
  v = relax_optax.relativistic_scale(u, 0.1, mode=mode, formula=formula)
  chex.assert_trees_all_equal_dtypes(v, u)
  chex.assert_tree_all_finite(v)
  eps = float(jnp.finfo(dtype).eps)
  for _, vg in _groups(u, v, mode):
    assert np.linalg.norm(vg) <= 0.1 * (1 + 4 * eps)
    assert np.linalg.norm(vg) >= 0.1 * 0.75  # saturated, not collapsed


def test_float16_update_of_1e4_is_finite_and_within_the_limit():
  u = jnp.full((1000,), 1e4, jnp.float16)  # Σu² = 1e11 overflows float16
  v = relax_optax.relativistic_scale(u, 0.1)
  assert v.dtype == jnp.float16
  assert bool(jnp.all(jnp.isfinite(v)))
  assert float(jnp.linalg.norm(v.astype(jnp.float32))) <= 0.1 * (1 + 4 * 2**-10)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("formula", FORMULAS)
def test_zero_update_and_zero_speed_limit_give_zero(mode, formula):
  zeros = {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)}
  ones = jax.tree.map(jnp.ones_like, zeros)
  chex.assert_trees_all_equal(
    relax_optax.relativistic_scale(zeros, 0.1, mode=mode, formula=formula), zeros
  )
  # A constant c must be > 0; a traced one (a schedule that starts at 0, or
  # goes negative) gives a zero update.
  scale = jax.jit(relax_optax.relativistic_scale, static_argnames=("mode", "formula"))
  for c in (0.0, -1.0, 1e-40):
    chex.assert_trees_all_equal(scale(zeros, c, mode=mode, formula=formula), zeros)
    chex.assert_trees_all_equal(scale(ones, c, mode=mode, formula=formula), zeros)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("formula", ("lorentz", "tanh"))
def test_differentiable_everywhere_including_zero(mode, formula):
  def f(u, c):
    v = relax_optax.relativistic_scale({"u": u}, c, mode=mode, formula=formula)["u"]
    return jnp.sum(v * jnp.arange(1.0, 4.0))

  for u in (jnp.zeros(3), jnp.array([1e-4, 0.0, -1e-4]), jnp.array([3.0, -2.0, 1.0])):
    gu, gc = jax.grad(f, argnums=(0, 1))(u, 1.0)
    chex.assert_tree_all_finite((gu, gc))
  # At u = 0 the map is the identity to first order: its Jacobian is I.
  jac = jax.jacobian(lambda u: relax_optax.relativistic_scale(u, 1.0, mode=mode, formula=formula))(
    jnp.zeros(3)
  )
  chex.assert_trees_all_close(jac, jnp.eye(3), atol=1e-6)


def test_norms_accumulate_in_float32_for_bfloat16():
  # 4096 equal entries: a bfloat16 accumulator would lose most of the sum.
  u = jnp.full((4096,), 0.01, jnp.bfloat16)
  v = relax_optax.relativistic_scale(u, 1.0)  # ‖u‖ = 0.64 in exact arithmetic
  n = float(jnp.linalg.norm(u.astype(jnp.float32)))
  expect = 0.01 / math.sqrt(1 + n**2)
  assert float(v[0]) == pytest.approx(expect, rel=2**-7)


# ---------------------------------------------------------------------------
# Argument validation.


def test_invalid_arguments_raise_value_errors():
  u = jnp.ones(3)
  with pytest.raises(ValueError, match=r"mode must be one of .*per_component"):
    relax_optax.relativistic_scale(u, 1.0, mode="layer")
  with pytest.raises(ValueError, match=r"formula must be one of .*lorentz"):
    relax_optax.relativistic_scale(u, 1.0, formula="sigmoid")
  for bad in (
    -1.0,
    float("nan"),
    -float("inf"),
    jnp.array(-0.1),
    jnp.array(jnp.nan),
    np.float32(-1e-30),
  ):
    with pytest.raises(ValueError, match=r"speed_limit must be a number in \[0, inf\]"):
      relax_optax.relativistic_scale(u, bad)
  for bad in (None, "1.0", [1.0], True, jnp.ones(2), 1j):
    with pytest.raises(TypeError, match="speed_limit"):
      relax_optax.relativistic_scale(u, bad)
  with pytest.raises(TypeError, match="floating-point"):
    relax_optax.relativistic_scale(jnp.arange(3), 1.0)
  # Concrete NumPy and JAX scalars are checked like floats, and valid ones pass.
  for good in (np.float32(0.5), jnp.array(0.5), 1, float("inf")):
    relax_optax.relativistic_scale(u, good)


# ---------------------------------------------------------------------------
# Properties that hold for every input (hypothesis).


# A few shapes, so that the jit cache is reused across examples.
_SHAPES = ((), (1,), (3,), (2, 3))
_scale = jax.jit(relax_optax.relativistic_scale, static_argnames=("mode", "formula"))


@st.composite
def updates_trees(draw):
  """A pytree of 1-2 arrays of one dtype with magnitudes from 1e-8 to 1e8."""
  dtype = draw(st.sampled_from(DTYPES))
  lo, hi = (-4.0, 4.0) if dtype == jnp.float16 else (-8.0, 8.0)
  leaves = []
  for _ in range(draw(st.integers(1, 2))):
    shape = draw(st.sampled_from(_SHAPES))
    size = int(np.prod(shape))
    exponents = draw(hnp.arrays(np.float64, size, elements=st.floats(lo, hi)))
    signs = draw(hnp.arrays(np.float64, size, elements=st.sampled_from([-1.0, 1.0])))
    zero = draw(hnp.arrays(np.bool_, size))
    x = np.where(zero & (size > 1), 0.0, signs * 10.0**exponents).reshape(shape)
    leaves.append(jnp.asarray(x, dtype))
  return leaves, dtype


_SETTINGS = hypothesis.settings(max_examples=50, deadline=None)
speed_limits = st.floats(1e-3, 1e3)


@_SETTINGS
@hypothesis.given(
  data=updates_trees(),
  c=speed_limits,
  mode=st.sampled_from(MODES),
  formula=st.sampled_from(FORMULAS),
)
def test_speed_limit_direction_and_contraction(data, c, mode, formula):
  u, dtype = data
  v = _scale(u, c, mode=mode, formula=formula)
  chex.assert_trees_all_equal_dtypes(v, u)
  chex.assert_tree_all_finite(v)
  eps = float(jnp.finfo(dtype).eps)
  c_rounded = float(jnp.asarray(c, jnp.float32))
  for ug, vg in _groups(u, v, mode):
    nv, nu = np.linalg.norm(vg), np.linalg.norm(ug)
    # The speed limit: ‖v‖ <= c to rounding of the output dtype.
    assert nv <= c_rounded * (1 + 4 * eps)
    # Never enlarges an update.
    assert nv <= nu * (1 + 4 * eps)
    # Parallel: v = α u with α >= 0 (rounding of each entry aside).
    if nu > 0:
      alpha = vg @ ug / (ug @ ug)
      assert alpha >= 0
      assert np.linalg.norm(vg - alpha * ug) <= 4 * eps * nv + 1e-37


@_SETTINGS
@hypothesis.given(
  data=updates_trees(),
  c=speed_limits,
  mode=st.sampled_from(MODES),
  formula=st.sampled_from(FORMULAS),
)
def test_odd(data, c, mode, formula):
  u, _ = data
  v = _scale(u, c, mode=mode, formula=formula)
  v_neg = _scale(jax.tree.map(jnp.negative, u), c, mode=mode, formula=formula)
  chex.assert_trees_all_equal(v_neg, jax.tree.map(jnp.negative, v))


@_SETTINGS
@hypothesis.given(
  data=updates_trees(),
  c=speed_limits,
  mode=st.sampled_from(MODES),
  formula=st.sampled_from(("lorentz", "tanh")),
  t=st.floats(1.0, 1e3),
)
def test_monotone_in_the_norm(data, c, mode, formula, t):
  u, dtype = data
  hypothesis.assume(dtype == jnp.float32)  # scaling by t must not round u.
  v1 = _scale(u, c, mode=mode, formula=formula)
  v2 = _scale(jax.tree.map(lambda x: x * np.float32(t), u), c, mode=mode, formula=formula)
  for (_, g1), (_, g2) in zip(_groups(u, v1, mode), _groups(u, v2, mode), strict=True):
    assert np.linalg.norm(g2) >= np.linalg.norm(g1) * (1 - 1e-6)


@_SETTINGS
@hypothesis.given(data=updates_trees(), c=speed_limits, mode=st.sampled_from(MODES))
def test_lorentz_changes_small_updates_by_at_most_half_the_squared_ratio(data, c, mode):
  u, dtype = data
  v = _scale(u, c, mode=mode)
  eps = float(jnp.finfo(dtype).eps)
  for ug, vg in _groups(u, v, mode):
    nu = np.linalg.norm(ug)
    if nu == 0 or nu > c:
      continue
    rel = np.linalg.norm(vg - ug) / nu
    assert rel <= (nu / c) ** 2 / 2 + 4 * eps


# ---------------------------------------------------------------------------
# Regressions found by adversarial testing (issue 12).


@pytest.mark.parametrize("formula", FORMULAS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(), (1,), (2,)])
def test_tiny_update_and_tiny_limit_under_jit(mode, formula, shape):
  # Was NaN under jit for global/per_param (scalar and size-1 leaves).
  u = {"s": jnp.full(shape, -1e-25, jnp.float32)}
  for fn in (relax_optax.relativistic_scale, _scale):
    out = fn(u, 1e-20, mode=mode, formula=formula)["s"]
    # |u|/c = 1e-5: the factor is 1 to float32 precision.
    np.testing.assert_allclose(np.asarray(out), np.full(shape, -1e-25), rtol=1e-6)


@pytest.mark.parametrize("formula", FORMULAS)
@pytest.mark.parametrize("c", [1e-20, 1e-30, 1e-37])
def test_per_component_saturates_at_minus_c_for_tiny_limits(formula, c):
  # Was -0.0 instead of -c.
  out = _scale({"u": jnp.asarray([-1.0, 1.0, -jnp.inf])}, c, mode="per_component", formula=formula)
  np.testing.assert_allclose(np.asarray(out["u"]), [-c, c, -c], rtol=1e-6)


@pytest.mark.parametrize("formula", FORMULAS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [jnp.complex64, jnp.complex128])
def test_complex_updates_use_the_modulus_and_keep_the_phase(mode, formula, dtype):
  # Was a crash in every mode (cond branch types; clip of a complex value).
  rng = np.random.default_rng(0)
  a = (rng.standard_normal(5) + 1j * rng.standard_normal(5)).astype(np.complex128)
  b = np.asarray([3.0 - 4.0j])
  c = 0.7
  with jax.enable_x64(dtype == jnp.complex128):
    tree = {"a": jnp.asarray(a, dtype), "b": jnp.asarray(b, dtype)}
    out = relax_optax.relativistic_scale(tree, c, mode=mode, formula=formula)
    got = {k: np.asarray(v) for k, v in out.items()}
    assert all(v.dtype == np.dtype(dtype) for v in got.values())
  # The independent expectation: the real formula on the moduli, the phase kept.
  mods = {"a": np.abs(a), "b": np.abs(b)}
  if mode == "per_component":
    norms = {k: m for k, m in mods.items()}
  elif mode == "per_param":
    norms = {k: np.linalg.norm(m) for k, m in mods.items()}
  else:
    total = np.sqrt(sum(np.sum(m**2) for m in mods.values()))
    norms = {k: total for k in mods}
  for k, x in (("a", a), ("b", b)):
    q = (norms[k] / c) ** 2
    rho = np.sqrt(q)
    f = {
      "lorentz": 1 / np.sqrt(1 + q),
      "tanh": np.tanh(rho) / rho,
      "reference": np.where(q < 1, np.sqrt(np.maximum(1 - q, 0)), np.tanh(rho) / rho),
    }[formula]
    np.testing.assert_allclose(got[k], x * f, rtol=2e-6, atol=1e-7)


def test_speed_limit_inf_is_the_identity():
  u = {"a": jnp.asarray([1e30, -2.0, 0.0]), "b": jnp.asarray(3.0)}
  for mode in MODES:
    for formula in FORMULAS:
      out = relax_optax.relativistic_scale(u, float("inf"), mode=mode, formula=formula)
      chex.assert_trees_all_equal(out, u)


# ---------------------------------------------------------------------------
# Edges found by adversarial testing, each failing before its fix.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(), (1,)])
@pytest.mark.parametrize(
  "u, c, want",
  [
    (0.0, 1e-20, 0.0),  # was NaN under jit: (z·k)² rewritten as z²·k², k² = inf
    (1.0, 1e-20, 1e-20),  # was 0
    (1e30, 1e20, 1e20),  # was NaN
    (1e19, 1e19, 1e19 / math.sqrt(2)),  # was not scaled at all (k² flushed to 0)
  ],
)
def test_per_component_far_from_one_under_jit(shape, u, c, want):
  x = jnp.full(shape, u, jnp.float32)
  v = jax.jit(lambda x: relax_optax.relativistic_scale(x, c, mode="per_component"))(x)
  np.testing.assert_allclose(np.asarray(v, np.float64), np.full(shape, want), rtol=1e-6)


@pytest.mark.parametrize("formula", FORMULAS)
def test_per_component_gradient_at_zero_is_one(formula):
  def f(x):
    return relax_optax.relativistic_scale(x, 1e-20, mode="per_component", formula=formula).sum()

  for shape in [(), (1,)]:
    g = jax.jit(jax.grad(f))(jnp.zeros(shape))
    np.testing.assert_allclose(np.asarray(g), np.ones(shape))  # was NaN


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("c", [9e37, 3e38, 1e39, 1e300])
def test_a_huge_speed_limit_still_limits(mode, c):
  # 1/c was flushed to 0 for c above 8.5e37 (the limit vanished: NaN or u passed
  # through), and a Python c above float32's range became inf.
  u = jnp.asarray([jnp.inf, 1.0, -3e38])
  v = np.asarray(jax.jit(lambda u: relax_optax.relativistic_scale(u, c, mode=mode))(u))
  assert np.isfinite(v).all()
  norm = np.abs(v).max() if mode == "per_component" else np.linalg.norm(v.astype(np.float64))
  assert 0 < norm <= min(c, 2.0**87) * (1 + 1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_a_complex_infinite_entry_saturates_in_eager_mode_too(mode):
  u = {"z": jnp.asarray([jnp.inf + 0j, 1 + 1j, 0j], jnp.complex64)}
  for fn in (lambda u: relax_optax.relativistic_scale(u, 1.0, mode=mode), None):
    out = (fn or jax.jit(lambda u: relax_optax.relativistic_scale(u, 1.0, mode=mode)))(u)["z"]
    out = np.asarray(out)
    assert np.isfinite(out).all()  # was NaN (inf·(1/c) is inf + NaN·i) without jit
    np.testing.assert_allclose(out[0], 1.0, rtol=1e-6)
