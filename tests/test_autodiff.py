"""Tests for the autodiff comparison: the hand-written accumulations of the textbook
example (examples/autodiff_modes.py) and the cost measurement of the benchmark
(benchmarks/autodiff_modes.py).

Gradients are checked against JAX's own transforms and against the derivative
written out in closed form; costs are checked with XLA's deterministic FLOP
counts (never wall time), so every test is reproducible on any machine.
"""

import itertools
import math
import time

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import given, settings

from benchmarks import autodiff_modes as bench
from examples import autodiff_modes as textbook


# Closed-form gradient of f(x1, x2) = exp(x1)·sin(x2)², in float64.
def _grad_closed_form(x1: float, x2: float) -> tuple[float, float]:
  return (
    math.exp(x1) * math.sin(x2) ** 2,
    2.0 * math.exp(x1) * math.sin(x2) * math.cos(x2),
  )


_jax_grad = jax.jit(jax.grad(textbook.textbook_f, argnums=(0, 1)))
_jax_jvp = jax.jit(lambda x, t: jax.jvp(textbook.textbook_f, x, t)[1])
_jax_vjp = jax.jit(lambda x1, x2: jax.vjp(textbook.textbook_f, x1, x2)[1](jnp.float32(1.0)))

ACCUMULATIONS = [
  ("reverse", textbook.reverse_accumulation),
  ("forward_dense", textbook.forward_accumulation),
  (
    "forward_skip_zeros",
    lambda x1, x2: textbook.forward_accumulation(x1, x2, skip_zero_tangents=True),
  ),
]

_coordinate = st.floats(min_value=-4.0, max_value=4.0, allow_nan=False, width=32)


def _close(actual, expected, scale: float) -> None:
  # float32 arithmetic: relative 1e-5, absolute relative to |f| + |∇f|.
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("name,accumulate", ACCUMULATIONS)
@settings(max_examples=40, deadline=None)
@given(x1=_coordinate, x2=_coordinate)
def test_hand_written_gradient_equals_jax(name, accumulate, x1, x2):
  x1, x2 = jnp.float32(x1), jnp.float32(x2)
  result = accumulate(x1, x2)
  expected = _grad_closed_form(float(x1), float(x2))
  scale = math.exp(float(x1)) * 3.0
  _close(result.value, float(textbook.textbook_f(x1, x2)), scale)
  _close(result.grad, expected, scale)
  _close(result.grad, _jax_grad(x1, x2), scale)
  _close(result.grad, _jax_vjp(x1, x2), scale)
  one, zero = jnp.float32(1.0), jnp.float32(0.0)
  _close(result.grad[0], _jax_jvp((x1, x2), (one, zero)), scale)
  _close(result.grad[1], _jax_jvp((x1, x2), (zero, one)), scale)


def test_textbook_value_corrects_the_chapter():
  # The chapter prints f(9, 10) = -2430.9 and c = sin(10)² = -0.30.
  value = textbook.textbook_f(9.0, 10.0)
  assert value > 0
  np.testing.assert_allclose(value, math.exp(9) * math.sin(10) ** 2, rtol=1e-6)
  np.testing.assert_allclose(value, 2398.18, atol=0.01)
  result = textbook.reverse_accumulation(9.0, 10.0)
  np.testing.assert_allclose(result.grad, (2398.1804, 7397.6720), rtol=1e-6)


@pytest.mark.parametrize(
  "name,accumulate,expected",
  [
    # (primal, partials, accumulation, seeds), written out from section 1.6.1.
    ("reverse", ACCUMULATIONS[0][1], (4, 3, 5, 1)),
    ("forward_dense", ACCUMULATIONS[1][1], (4, 3, 12, 2)),
    ("forward_skip_zeros", ACCUMULATIONS[2][1], (4, 3, 5, 2)),
  ],
)
def test_operation_counts(name, accumulate, expected):
  result = accumulate(0.3, -1.2)
  assert tuple(result.ops) == expected
  assert result.ops.total == sum(expected[:3])
  # One recorded step per counted operation and per seed.
  assert len(result.steps) == sum(expected)


def test_chapter_six_versus_seven_is_chain_rule_plus_seeds():
  reverse = textbook.reverse_accumulation(9.0, 10.0).ops
  chapter_forward = textbook.forward_accumulation(9.0, 10.0, skip_zero_tangents=True).ops
  assert reverse.accumulation + reverse.seeds == 6
  assert chapter_forward.accumulation + chapter_forward.seeds == 7
  assert reverse.accumulation == chapter_forward.accumulation == 5


class AccumulationVariantsTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*[(name, fn) for name, fn in ACCUMULATIONS])
  def test_elementwise_on_arrays(self, accumulate):
    x1 = jnp.linspace(-2.0, 2.0, 5)
    x2 = jnp.linspace(3.0, -1.0, 5)
    grad = self.variant(lambda a, b: accumulate(a, b).grad)(x1, x2)
    expected = jax.vmap(jax.grad(textbook.textbook_f, argnums=(0, 1)))(x1, x2)
    chex.assert_trees_all_close(grad, expected, rtol=1e-5, atol=1e-5)
    chex.assert_shape(grad, [(5,), (5,)])


def test_count_jaxpr_eqns_inlines_nested_jaxprs():
  def fn(x):
    y = jax.jit(lambda z: jnp.sin(z) * 2.0)(x)  # 2 equations inside a jit.
    return jnp.exp(y) + 1.0  # 2 equations.

  jaxpr = jax.make_jaxpr(fn)(jnp.ones(3))
  assert len(jaxpr.eqns) == 3
  assert bench.count_jaxpr_eqns(jaxpr) == 4


def test_cost_report_structure():
  x = jnp.ones(8)
  report = bench.cost_report(bench.fan_in, x, timing=False)
  assert (report.n_inputs, report.n_outputs) == (8, 1)
  assert list(report.costs) == ["f", "jacfwd", "jacrev", "grad"]
  f = report.costs["f"]
  # The counters are XLA's own cost analysis of the compiled function, read unchanged.
  analysis = jax.jit(bench.fan_in).lower(x).compile().cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  assert f.flops == analysis["flops"]
  assert f.transcendentals == analysis["transcendentals"]
  assert f.ops == f.flops + f.transcendentals
  # Σ exp(x)·sin(x)²: exp, sin, square, multiply, reduce_sum.
  assert f.jaxpr_eqns == 5
  assert math.isnan(f.time_s)
  assert report.ratio("f") == 1.0
  assert report.ratio("grad") == pytest.approx(report.costs["grad"].ops / f.ops)
  table = report.table()
  for name in report.costs:
    assert name in table

  vector = bench.cost_report(bench.fan_in_fan_out(3), jnp.ones(2), timing=False)
  assert (vector.n_inputs, vector.n_outputs) == (2, 3)
  assert "grad" not in vector.costs


@pytest.mark.xla_cpu
def test_cost_report_counts_of_xla_cpu():
  # Σ exp(x)·sin(x)² on n elements, as XLA:CPU counts it: n exp + n sin transcendental;
  # n squares, n products and n - 1 additions of the sum are flops.
  for n in (8, 64):
    f = bench.cost_report(bench.fan_in, jnp.ones(n), timing=False).costs["f"]
    assert (f.transcendentals, f.flops) == (2 * n, 3 * n - 1), n


def test_jit_cost_times_blocking_calls():
  # A call that sleeps 20 ms on the host: a median of calls timed to completion is at
  # least that long (a timer that did not wait for the result would see ~0).
  def slow_identity(x):
    def sleep(v):
      time.sleep(0.02)
      return v

    return jax.pure_callback(sleep, jax.ShapeDtypeStruct(x.shape, x.dtype), x)

  cost = bench.jit_cost(slow_identity, jnp.ones(4), repeats=3, min_time_s=0.0)
  assert cost.time_s >= 0.02


def _ops(fn, n: int) -> dict[str, float]:
  x = jnp.linspace(-1.0, 1.0, n)
  report = bench.cost_report(fn, x, timing=False)
  return {name: report.ratio(name) for name in report.costs}


SIZES = (4, 16, 64, 256)


def test_forward_cost_grows_with_n_reverse_does_not():
  ratios = [_ops(bench.fan_in_fan_out(1), n) for n in SIZES]
  forward = [r["jacfwd"] for r in ratios]
  reverse = [r["jacrev"] for r in ratios]
  assert all(a < b for a, b in itertools.pairwise(forward)), forward
  # cost(jacfwd)/cost(f) ∝ n: 64x more inputs, at least 16x more relative cost.
  assert forward[-1] > 16 * forward[0], forward
  assert max(reverse) < 5, reverse
  assert forward[-1] > 20 * reverse[-1]


def test_reverse_cost_grows_with_m_forward_does_not():
  ratios = [_ops(bench.fan_in_fan_out(m), 1) for m in SIZES]
  forward = [r["jacfwd"] for r in ratios]
  reverse = [r["jacrev"] for r in ratios]
  assert all(a < b for a, b in itertools.pairwise(reverse)), reverse
  assert reverse[-1] > 16 * reverse[0], reverse
  assert max(forward) < 5, forward
  assert reverse[-1] > 20 * forward[-1]


def test_crossover_near_n_equals_m():
  n = 32
  fan_out_heavy = _ops(bench.fan_in_fan_out(4 * n), n)  # m = 4n: forward wins.
  fan_in_heavy = _ops(bench.fan_in_fan_out(n // 4), n)  # m = n/4: reverse wins.
  assert fan_out_heavy["jacfwd"] < fan_out_heavy["jacrev"]
  assert fan_in_heavy["jacrev"] < fan_in_heavy["jacfwd"]


@pytest.mark.parametrize("n", [1, 64, 4096])
def test_cheap_gradient_principle(n):
  # Griewank & Walther: a reverse-mode gradient costs a small constant
  # multiple of f, independent of n.
  ratio = _ops(bench.fan_in, n)["grad"]
  assert 1 <= ratio <= 5, ratio


def test_fan_in_fan_out_jacobian_matches_closed_form():
  m = 5
  x = np.linspace(-1.5, 1.0, 7)
  t = np.linspace(0.5, 1.5, m)
  # s = Σ exp(x)·sin(x)²; y = exp(sin(t·s))·sin(s + t)²; J = ∂y/∂s ⊗ ∂s/∂x.
  s = np.sum(np.exp(x) * np.sin(x) ** 2)
  ds_dx = np.exp(x) * (np.sin(x) ** 2 + 2 * np.sin(x) * np.cos(x))
  dy_ds = np.exp(np.sin(t * s)) * (
    t * np.cos(t * s) * np.sin(s + t) ** 2 + 2 * np.sin(s + t) * np.cos(s + t)
  )
  expected = np.outer(dy_ds, ds_dx)
  fn = bench.fan_in_fan_out(m)
  xs = jnp.asarray(x, jnp.float32)
  np.testing.assert_allclose(fn(xs), np.exp(np.sin(t * s)) * np.sin(s + t) ** 2, rtol=1e-5)
  for jac in (jax.jacfwd(fn), jax.jacrev(fn)):
    np.testing.assert_allclose(jac(xs), expected, rtol=1e-4, atol=1e-4)


def test_fan_out_stays_finite_and_validates_m():
  y = bench.fan_in_fan_out(16)(jnp.full((32,), 10.0))
  chex.assert_shape(y, (16,))
  chex.assert_tree_all_finite(y)
  assert float(jnp.max(y)) <= math.e + 1e-4
  with pytest.raises(ValueError, match="m must be >= 1"):
    bench.fan_in_fan_out(0)


def test_cost_report_without_transcendentals_has_finite_ratios():
  # XLA leaves the "transcendentals" key out of its cost analysis when there are none;
  # a missing counter is 0 (it used to make ops = flops + nan, every ratio nan).
  def polynomial(x):
    return jnp.sum(x * x + 3.0 * x)

  report = bench.cost_report(polynomial, jnp.ones(16), timing=False)
  for name, cost in report.costs.items():
    assert cost.transcendentals == 0, name
    assert cost.flops > 0, name
    assert math.isfinite(report.ratio(name)), name


@pytest.mark.parametrize(
  "output",
  [
    lambda x: {"y": jnp.sum(x, keepdims=True)},  # a dict holding a (1,) array
    lambda x: (jnp.sum(x).reshape(1, 1), jnp.zeros((0,))),  # one element in all
    lambda x: [jnp.sum(jnp.sin(x))],
  ],
)
def test_cost_report_on_pytree_output_with_one_element(output):
  # It used to call jnp.reshape on the whole output, which fails on a dict or tuple.
  x = jnp.linspace(-1.0, 1.0, 5)
  report = bench.cost_report(output, x, timing=False)
  assert (report.n_inputs, report.n_outputs) == (5, 1)
  assert "grad" in report.costs
  for name in report.costs:
    assert math.isfinite(report.ratio(name)), name


@pytest.mark.smoke
def test_walkthrough_prints_every_step(capsys):
  runs = textbook.main(["--x1", "9", "--x2", "10"])
  printed = capsys.readouterr().out
  for run in runs.values():
    for step in run.steps:
      assert step in printed
  assert "reverse 5+1 = 6, chapter-style forward 5+2 = 7" in printed
