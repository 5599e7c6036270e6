"""One set of numerics: each recipe equals the chain its docstring writes out.

``relativistic_adam`` computes ``optax.chain(adam, scale_by_learning_rate,
scale_by_relativistic)``; on CPU, for leaves of at least 200,000 entries, it takes
the group norm from Adam's update computed a second time rather than from a
copy in memory. Over a grid of dtypes, speed limits from 1e-45 to 3e38 and
inf, learning rates and ``eps`` from tiny to large, gradients with 0, 1e-30,
1e30, ±inf and NaN entries, leaves of every size class and every Adam variant,
the recipe's update must equal the chain's written with Optax's public parts:
the same values to rounding, the same finite/NaN pattern, and ``‖v‖ <= c``
wherever the chain keeps it.
"""

from __future__ import annotations

import math
from typing import Any

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings

import relax_optax
from relax_optax import _recipes
from relax_optax._pytorch import scale_by_adam_step_size_correction
from relax_optax._recipes import RECOMPUTE_MIN_SIZE

LARGE = RECOMPUTE_MIN_SIZE  # the size from which the recipe recomputes the update on CPU
SHAPES = [(), (1,), (5,), (LARGE,)]
VARIANTS = [
  {},
  {"nesterov": True},
  {"amsgrad": True},
  {"eps_root": 1e-8},
  {"bias_correction": "step_size"},
  {"bias_correction": "step_size", "amsgrad": True},
  {"weight_decay": 1e-2},
  {"mu_dtype": jnp.bfloat16},
]
PATTERNS = ["zero", "tiny", "huge", "inf", "-inf", "nan", "normal"]


def _chain(lr, c, eps, mode, formula, variant) -> optax.GradientTransformation:
  """The chain of ``relativistic_adam``'s docstring, from public parts."""
  b1, b2 = 0.9, 0.999
  eps_root = variant.get("eps_root", 0.0)
  mu_dtype = variant.get("mu_dtype")
  amsgrad = variant.get("amsgrad", False)
  parts = []
  if "weight_decay" in variant:
    parts.append(optax.add_decayed_weights(variant["weight_decay"]))
  if variant.get("bias_correction") == "step_size":
    parts.append(scale_by_adam_step_size_correction(b1, b2, eps, eps_root, mu_dtype, amsgrad))
  elif amsgrad:
    parts.append(optax.scale_by_amsgrad(b1, b2, eps, eps_root, mu_dtype))
  else:
    parts.append(
      optax.scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=variant.get("nesterov", False))
    )
  parts.append(optax.scale_by_learning_rate(lr))
  parts.append(relax_optax.scale_by_relativistic(c, mode=mode, formula=formula))
  return optax.chain(*parts)


def _gradients(rng, dtype, pattern: str) -> dict[str, jax.Array]:
  """One leaf per shape; the pattern's value in one entry of each leaf."""
  special = {
    "zero": 0.0,
    "tiny": 1e-30,
    "huge": 1e30,
    "inf": math.inf,
    "-inf": -math.inf,
    "nan": math.nan,
    "normal": 1.0,
  }[pattern]
  out = {}
  for i, shape in enumerate(SHAPES):
    x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-3, 1)
    x = np.asarray(x, np.float64)
    if x.size:
      x.reshape(-1)[rng.integers(x.size)] = special
    with np.errstate(over="ignore"):
      out[f"l{i}"] = jnp.asarray(x, dtype)
  return out


def _norms(tree) -> list[float]:
  return [
    float(np.linalg.norm(np.asarray(x, np.float64).reshape(-1))) for x in jax.tree.leaves(tree)
  ]


def _check(dtype, lr, c, eps, mode, formula, variant, pattern, seed) -> None:
  rng = np.random.default_rng(seed)
  params = {f"l{i}": jnp.full(shape, 0.5, dtype) for i, shape in enumerate(SHAPES)}
  recipe = relax_optax.relativistic_adam(lr, c, eps=eps, mode=mode, formula=formula, **variant)
  chain = _chain(lr, c, eps, mode, formula, variant)
  states = [recipe.init(params), chain.init(params)]
  steps = [jax.jit(recipe.update), jax.jit(chain.update)]
  info = jnp.finfo(dtype)
  for t in range(2):  # a first step, and a second from the moments it left
    grads = _gradients(rng, dtype, pattern if t == 1 else "normal")
    (u, states[0]), (v, states[1]) = (
      step(grads, s, params) for step, s in zip(steps, states, strict=True)
    )
    for key in u:
      a = np.asarray(u[key], np.float64)
      b = np.asarray(v[key], np.float64)
      np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=f"NaN pattern, {key}")
      np.testing.assert_array_equal(np.isinf(a), np.isinf(b), err_msg=f"inf pattern, {key}")
      finite = np.isfinite(a)
      # The two may differ by the rounding XLA gives the same expression in
      # two fusions: a few ulps of the factor, in the update's dtype.
      np.testing.assert_allclose(
        a[finite], b[finite], rtol=8 * float(info.eps), atol=4 * float(info.tiny), err_msg=key
      )
    # ‖v‖ <= c wherever the chain keeps it (per leaf, or for the whole tree).
    c_eff = min(c, 2.0 ** (jnp.finfo(jnp.promote_types(dtype, jnp.float32)).maxexp - 41))
    slack = 1 + 16 * float(info.eps)
    if mode == "global":
      groups_u, groups_v = (
        [sum(n**2 for n in _norms(u)) ** 0.5],
        [sum(n**2 for n in _norms(v)) ** 0.5],
      )
    else:
      groups_u, groups_v = _norms(u), _norms(v)
    for nu, nv in zip(groups_u, groups_v, strict=True):
      if nv <= c_eff * slack + 4 * float(info.tiny):
        assert nu <= c_eff * slack + 4 * float(info.tiny), (nu, nv, c)
    for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1]), strict=True):
      np.testing.assert_allclose(
        np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=8 * float(info.eps), atol=0
      )


def _cases(dtype_name: str):
  tiny_eps = 1e-50 if dtype_name == "float64" else 1e-30
  return st.tuples(
    st.sampled_from([1e-30, 1e-6, 1e-2, 1.0, 1e3]),  # learning rate
    st.sampled_from([1e-45, 1e-30, 1e-20, 1e-3, 0.1, 1.0, 1e19, 1e30, 3e38, math.inf]),  # c
    st.sampled_from([tiny_eps, 1e-8, 1.0]),  # eps
    st.sampled_from(["global", "per_param"]),
    st.sampled_from(["lorentz", "tanh", "reference"]),
    st.sampled_from(VARIANTS),
    st.sampled_from(PATTERNS),
    st.integers(0, 2**16),
  )


@pytest.fixture(autouse=True)
def _recompute_every_large_leaf(monkeypatch):
  """The recompute runs from RECOMPUTE_MIN_SIZE-entry leaves holding 32 MiB or more
  together; here one such leaf is enough, so that the grid stays small."""
  monkeypatch.setattr(_recipes, "RECOMPUTE_MIN_BYTES", 0)


_SETTINGS = settings(
  max_examples=12,
  deadline=None,
  derandomize=True,
  suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32], ids=str)
def test_the_recipe_equals_the_chain(dtype):
  @_SETTINGS
  @given(_cases(jnp.dtype(dtype).name))
  def check(case: tuple[Any, ...]):
    with np.errstate(over="ignore", invalid="ignore"):
      _check(dtype, *case)

  check()


@pytest.mark.slow
def test_the_recipe_equals_the_chain_float64():
  @_SETTINGS
  @given(_cases("float64"))
  def check(case: tuple[Any, ...]):
    with jax.enable_x64(True), np.errstate(over="ignore", invalid="ignore"):
      _check(jnp.float64, *case)

  check()
  assert not jax.config.jax_enable_x64  # the rest of the suite stays 32-bit


@pytest.mark.parametrize("mode", ["global", "per_param"])
@pytest.mark.parametrize(
  "dtype, lr, c, grads",
  [
    # float16 Adam is ±inf where v underflows: both saturate at c, never inf.
    (jnp.float16, 1e-3, 0.1, [1e-4, 0.5, -0.5]),
    (jnp.float16, 1e-3, 1e-3, [1e-4, 0.5, -0.5]),
    # k·n overflowed while ν was already inf: inf/inf in every entry.
    (jnp.float32, 1e-2, 1e-20, [1e30, 1.0, 1.0]),
  ],
)
def test_regressions_against_the_chain_on_large_leaves(mode, dtype, lr, c, grads):
  """Cases where the old norm from Adam's moments left the chain (NaN, or ‖v‖ = 1e6·c)."""
  g = jnp.full(LARGE, 0.5, dtype).at[: len(grads)].set(jnp.asarray(grads, dtype))
  p = jnp.zeros(LARGE, dtype)
  recipe = relax_optax.relativistic_adam(lr, c, mode=mode)
  chain = _chain(lr, c, 1e-8, mode, "lorentz", {})
  u, _ = jax.jit(recipe.update)(g, recipe.init(p), p)
  v, _ = jax.jit(chain.update)(g, chain.init(p), p)
  np.testing.assert_array_equal(np.asarray(u[:3], np.float64), np.asarray(v[:3], np.float64))
  assert np.isfinite(np.asarray(u[:3], np.float64)).all()
  assert abs(float(u[0])) <= c * (1 + 1e-3)
