"""Forward- vs reverse-mode automatic differentiation, counted by hand and measured.

Section 1.6.1 of *Elements of Networks* (chapter 1) differentiates

    f(x1, x2) = exp(x1) · sin(x2)²

by hand in both orders and argues that reverse mode (adjoints pulled from the
output) needs fewer operations than forward mode (tangents pushed from each
input) because f fans in, ℝ² → ℝ; that forward-mode cost grows with the number
of inputs n and reverse-mode cost with the number of outputs m. This module
turns that argument into code and numbers:

- :func:`textbook_f`, :func:`forward_accumulation`, :func:`reverse_accumulation`:
  the chapter's example and its two hand-written derivations, step by step,
  each counting the arithmetic operations it performs (:class:`OpCount`).
- :func:`jit_cost`, :func:`cost_report`: for any function and example inputs,
  jaxpr size, XLA's compiled cost analysis and median wall time of f, of its
  Jacobian by ``jax.jacfwd`` and ``jax.jacrev``, and of its gradient.
- :func:`fan_in`, :func:`fan_out`, :func:`fan_in_fan_out`: a family ℝⁿ → ℝᵐ
  built from the same exp/sin primitives, for scaling sweeps in n and m.

What the counts say (all reproduced by ``benchmarks/autodiff_modes.py``):

- The chapter's printed values are wrong: f(9, 10) = exp(9)·sin(10)² =
  8103.08 · 0.29596 = 2398.18..., not -2430.9, and c = sin(10)² = 0.296, not
  -0.30 (a square cannot be negative). The gradient is
  (f, 2·exp(x1)·sin(x2)·cos(x2)) = (2398.18..., 7397.67...).
- The chapter's code has typos: its reverse pass assigns ``dd_dx1`` twice (the
  second is ∂d/∂x2) and its forward pass reads ``dc_dc`` / ``dc_dx_2``
  (meaning ∂c/∂b and dc/dx2). The code here fixes them.
- Counted exactly as the chapter writes them, both orders perform 5
  multiplications in the chain rule. The chapter's "6 vs 7" is reproduced only
  by adding the seeds: one adjoint seed dd/dd = 1 in reverse mode, two tangent
  seeds dx1/dx1 = dx2/dx2 = 1 in forward mode (one per pass). The chapter's
  forward pass also silently skips tangents that are known to be zero (the
  x1 → d and x2 → d paths are disjoint). Forward mode with dense seeds (1, 0)
  and (0, 1), which is what ``jax.jacfwd`` does, pushes each tangent through
  every node: 12 chain-rule operations against reverse mode's 5.

References:
  Griewank, A. and Walther, A., 2008. Evaluating Derivatives: Principles and
  Techniques of Algorithmic Differentiation, 2nd ed. SIAM.

  Baur, W. and Strassen, V., 1983. The complexity of partial derivatives.
  Theoretical Computer Science 22(3), 317-330.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

__all__ = (
  "Accumulation",
  "Cost",
  "CostReport",
  "OpCount",
  "cost_report",
  "count_jaxpr_eqns",
  "fan_in",
  "fan_in_fan_out",
  "fan_out",
  "forward_accumulation",
  "jit_cost",
  "reverse_accumulation",
  "textbook_f",
)


# ---------------------------------------------------------------------------
# The textbook example and its two hand-written accumulations.
# ---------------------------------------------------------------------------


def textbook_f(x1: jax.typing.ArrayLike, x2: jax.typing.ArrayLike) -> jax.Array:
  """The chapter's example f(x1, x2) = exp(x1) · sin(x2)², written as its graph.

  Args:
    x1: first input, any real array (broadcast against ``x2``).
    x2: second input, any real array.

  Returns:
    ``d = a · c`` with ``a = exp(x1)``, ``b = sin(x2)``, ``c = b²``, elementwise.
    At (9, 10) that is 2398.18..., not the chapter's -2430.9 (whose
    intermediate c = sin(10)² = -0.30 cannot be negative; it is 0.296).

  Examples:
    >>> from relax_optax import autodiff
    >>> print(f"{float(autodiff.textbook_f(9.0, 10.0)):.2f}")
    2398.18
  """
  a = jnp.exp(x1)
  b = jnp.sin(x2)
  c = b**2
  d = a * c
  return d


class OpCount(NamedTuple):
  """Arithmetic operations of a hand-written accumulation, split by phase."""

  primal: int  # exp, sin, b·b, a·c: evaluating f itself (4 for textbook_f).
  partials: int  # local derivatives ∂a/∂x1, ∂c/∂b, ∂b/∂x2 (∂d/∂a, ∂d/∂c are free).
  accumulation: int  # multiplications and additions of the chain rule.
  seeds: int  # seeds set to 1, one per pass: n tangent seeds or m adjoint seeds.

  @property
  def total(self) -> int:
    """All arithmetic operations: primal + partials + accumulation (seeds are not)."""
    return self.primal + self.partials + self.accumulation


class Accumulation(NamedTuple):
  """Value, gradient and operation count of a hand-written accumulation."""

  value: jax.Array  # f(x1, x2).
  grad: tuple[jax.Array, jax.Array]  # (∂f/∂x1, ∂f/∂x2).
  ops: OpCount
  steps: tuple[str, ...]  # every counted operation, in order, as an equation.


class _Tape:
  """Counts the operations of a hand-written derivation and records them."""

  def __init__(self) -> None:
    self.counts = {"primal": 0, "partials": 0, "accumulation": 0, "seeds": 0}
    self.steps: list[str] = []

  def record(self, phase: str, step: str, value: Any, ops: int = 1) -> Any:
    self.counts[phase] += ops
    self.steps.append(f"[{phase}] {step}")
    return value

  def result(self, value: jax.Array, grad: tuple[jax.Array, jax.Array]) -> Accumulation:
    return Accumulation(value, grad, OpCount(**self.counts), tuple(self.steps))


class _Partials(NamedTuple):
  a: jax.Array
  c: jax.Array
  d: jax.Array
  dd_da: jax.Array
  dd_dc: jax.Array
  da_dx1: jax.Array
  dc_db: jax.Array
  db_dx2: jax.Array


def _primal_and_partials(tape: _Tape, x1: jax.Array, x2: jax.Array) -> _Partials:
  """Evaluates f and its local derivatives exactly as the chapter does."""
  a = tape.record("primal", "a = exp(x1)", jnp.exp(x1))
  b = tape.record("primal", "b = sin(x2)", jnp.sin(x2))
  c = tape.record("primal", "c = b * b", b * b)
  d = tape.record("primal", "d = a * c", a * c)
  # d(a, c) := a·c  ==>  ∂d/∂a = c, ∂d/∂c = a: read off, no arithmetic.
  dd_da, dd_dc = c, a
  # The chapter recomputes exp(x1) rather than reusing a; we mirror it (JAX's
  # derivative rule for exp reuses the primal output instead).
  da_dx1 = tape.record("partials", "∂a/∂x1 = exp(x1)", jnp.exp(x1))
  dc_db = tape.record("partials", "∂c/∂b = 2 * b", 2.0 * b)
  db_dx2 = tape.record("partials", "∂b/∂x2 = cos(x2)", jnp.cos(x2))
  return _Partials(a, c, d, dd_da, dd_dc, da_dx1, dc_db, db_dx2)


def reverse_accumulation(x1: jax.typing.ArrayLike, x2: jax.typing.ArrayLike) -> Accumulation:
  """Gradient of :func:`textbook_f` by reverse mode, written out by hand.

  Mirrors the chapter's "outputs to inputs" derivation: one adjoint seed
  dd/dd = 1 at the single output is pulled back through every node, and the
  adjoint dd/dd is reused for both inputs (one pass for m = 1 output)::

    dd/dd  = 1                      (seed)
    dd/da  = dd/dd · ∂d/∂a          dd/dc = dd/dd · ∂d/∂c
    dd/dx1 = dd/da · ∂a/∂x1         (done for the x1 → d path)
    dd/db  = dd/dc · ∂c/∂b
    dd/dx2 = dd/db · ∂b/∂x2         (done for the x2 → d path)

  Multiplications by the unit seed are counted, as the chapter writes them.
  The chapter's second ``dd_dx1`` is a typo for ``dd_dx2``, fixed here.

  Args:
    x1: first input, a real scalar or array (evaluated elementwise).
    x2: second input, broadcastable against ``x1``.

  Returns:
    An :class:`Accumulation`: f(x1, x2), (∂f/∂x1, ∂f/∂x2), the operation
    count (4 primal, 3 partials, 5 accumulation, 1 seed) and the steps.

  References:
    Griewank, A. and Walther, A., 2008. Evaluating Derivatives, 2nd ed.,
    chapter 3 (fundamentals of forward and reverse). SIAM.

  Examples:
    >>> from relax_optax import autodiff
    >>> result = autodiff.reverse_accumulation(9.0, 10.0)
    >>> result.ops
    OpCount(primal=4, partials=3, accumulation=5, seeds=1)
    >>> print(f"{float(result.grad[1]):.1f}")
    7397.7
  """
  tape = _Tape()
  p = _primal_and_partials(tape, jnp.asarray(x1), jnp.asarray(x2))
  dd_dd = tape.record("seeds", "dd/dd = 1", jnp.ones_like(p.d))
  dd_da = tape.record("accumulation", "dd/da = dd/dd * ∂d/∂a", dd_dd * p.dd_da)
  dd_dc = tape.record("accumulation", "dd/dc = dd/dd * ∂d/∂c", dd_dd * p.dd_dc)
  dd_dx1 = tape.record("accumulation", "dd/dx1 = dd/da * ∂a/∂x1", dd_da * p.da_dx1)
  dd_db = tape.record("accumulation", "dd/db = dd/dc * ∂c/∂b", dd_dc * p.dc_db)
  dd_dx2 = tape.record("accumulation", "dd/dx2 = dd/db * ∂b/∂x2", dd_db * p.db_dx2)
  return tape.result(p.d, (dd_dx1, dd_dx2))


def forward_accumulation(
  x1: jax.typing.ArrayLike,
  x2: jax.typing.ArrayLike,
  *,
  skip_zero_tangents: bool = False,
) -> Accumulation:
  """Gradient of :func:`textbook_f` by forward mode, written out by hand.

  One pass per input (n = 2 passes): the pass for input i seeds the tangents
  (dx1/dxi, dx2/dxi) = eᵢ and pushes them from the inputs to the output::

    da/dxi = ∂a/∂x1 · dx1/dxi
    db/dxi = ∂b/∂x2 · dx2/dxi
    dc/dxi = ∂c/∂b  · db/dxi
    dd/dxi = ∂d/∂a · da/dxi + ∂d/∂c · dc/dxi

  which is 6 operations per pass, 12 for the gradient: this is what
  ``jax.jvp`` with a dense basis tangent (and hence ``jax.jacfwd``) computes.

  With ``skip_zero_tangents=True`` the seeds that are 0 are treated as
  structural zeros and every product or sum with them is skipped. That is what
  the chapter's "inputs to outputs" code does: it only follows the x1 → a → d
  path in the first pass and the x2 → b → c → d path in the second, 5
  operations in all. (Its ``dc_dc`` and ``dc_dx_2`` are typos for ``dc_db`` and
  ``dc_dx2``.) It only helps because the two paths here are disjoint.

  Args:
    x1: first input, a real scalar or array (evaluated elementwise).
    x2: second input, broadcastable against ``x1``.
    skip_zero_tangents: skip operations on tangents that are structurally
      zero, as the chapter's code does, instead of multiplying by 0.

  Returns:
    An :class:`Accumulation`: f(x1, x2), (∂f/∂x1, ∂f/∂x2), the operation
    count (4 primal, 3 partials, 12 or 5 accumulation, 2 seeds) and the steps.

  References:
    Griewank, A. and Walther, A., 2008. Evaluating Derivatives, 2nd ed.,
    chapter 3 (fundamentals of forward and reverse). SIAM.

  Examples:
    >>> from relax_optax import autodiff
    >>> autodiff.forward_accumulation(9.0, 10.0).ops.accumulation
    12
    >>> autodiff.forward_accumulation(9.0, 10.0, skip_zero_tangents=True).ops.accumulation
    5
  """
  tape = _Tape()
  p = _primal_and_partials(tape, jnp.asarray(x1), jnp.asarray(x2))
  zero = None if skip_zero_tangents else jnp.zeros_like(p.d)  # None: structural zero.

  def times(step: str, partial: jax.Array, tangent: jax.Array | None) -> jax.Array | None:
    if tangent is None:
      return None
    return tape.record("accumulation", step, partial * tangent)

  def plus(step: str, t1: jax.Array | None, t2: jax.Array | None) -> jax.Array | None:
    if t1 is None or t2 is None:
      return t2 if t1 is None else t1
    return tape.record("accumulation", step, t1 + t2)

  grad = []
  for i in (1, 2):
    one = tape.record("seeds", f"dx{i}/dx{i} = 1", jnp.ones_like(p.d))
    dx1, dx2 = (one, zero) if i == 1 else (zero, one)
    da = times(f"da/dx{i} = ∂a/∂x1 * dx1/dx{i}", p.da_dx1, dx1)
    db = times(f"db/dx{i} = ∂b/∂x2 * dx2/dx{i}", p.db_dx2, dx2)
    dc = times(f"dc/dx{i} = ∂c/∂b * db/dx{i}", p.dc_db, db)
    dd = plus(
      f"dd/dx{i} = (∂d/∂a * da/dx{i}) + (∂d/∂c * dc/dx{i})",
      times(f"∂d/∂a * da/dx{i}", p.dd_da, da),
      times(f"∂d/∂c * dc/dx{i}", p.dd_dc, dc),
    )
    # dd is never a structural zero here: every input reaches d.
    grad.append(dd)
  return tape.result(p.d, (grad[0], grad[1]))


# ---------------------------------------------------------------------------
# Measured cost of any function and of its derivatives.
# ---------------------------------------------------------------------------


class Cost(NamedTuple):
  """Cost of one jit-compiled computation."""

  jaxpr_eqns: int  # primitive applications in its jaxpr, nested jaxprs inlined.
  flops: float  # XLA cost analysis: floating-point ops (nan if not reported).
  transcendentals: float  # XLA cost analysis: exp, sin, cos, ... (nan if not reported).
  bytes_accessed: float  # XLA cost analysis: bytes read and written (nan if not reported).
  time_s: float  # median wall time of one call in seconds (nan if not timed).

  @property
  def ops(self) -> float:
    """Arithmetic operations as XLA counts them: flops + transcendentals."""
    return self.flops + self.transcendentals


def count_jaxpr_eqns(jaxpr: Any) -> int:
  """Number of primitive applications in a (closed) jaxpr.

  An equation that carries sub-jaxprs (``jit``, ``custom_jvp_call``, ``scan``,
  ``cond``, ...) counts as the equations inside them instead of as one; loop
  bodies count once, not once per iteration.

  Args:
    jaxpr: a ``ClosedJaxpr`` (as returned by ``jax.make_jaxpr``) or a ``Jaxpr``.

  Returns:
    The static number of equations.
  """
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  count = 0
  for eqn in jaxpr.eqns:
    inner = list(jex_core.jaxprs_in_params(eqn.params))
    count += sum(count_jaxpr_eqns(sub) for sub in inner) if inner else 1
  return count


def _xla_cost_analysis(compiled: jax.stages.Compiled) -> dict[str, float]:
  """XLA's cost analysis as one dict; best effort, as JAX documents it.

  jax >= 0.4.30 returns a dict; older versions a list with one dict per
  program; some backends return None. Missing numbers become nan.
  """
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  analysis = analysis or {}
  return {
    key: float(analysis.get(key, math.nan))
    for key in ("flops", "transcendentals", "bytes accessed")
  }


def _median_call_time_s(
  call: Callable[[], Any], *, repeats: int, min_time_s: float, max_calls: int = 100_000
) -> float:
  """Median wall time of one blocking ``call()``, after three warm-up calls.

  Times each call separately (``block_until_ready`` included) until at least
  ``repeats`` calls and ``min_time_s`` seconds in all have passed, then takes
  the median: on a shared machine, calls interrupted by other processes are
  outliers that a median ignores and a mean would not.
  """
  for _ in range(3):  # warm-up: compile, first dispatch, caches.
    jax.block_until_ready(call())
  times: list[float] = []
  deadline = time.perf_counter() + min_time_s
  while len(times) < max_calls and (len(times) < repeats or time.perf_counter() < deadline):
    start = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def jit_cost(
  fn: Callable[..., Any],
  *args: Any,
  timing: bool = True,
  repeats: int = 7,
  min_time_s: float = 0.05,
) -> Cost:
  """Measures the cost of ``jax.jit(fn)(*args)``.

  Args:
    fn: a function of arrays that JAX can trace.
    *args: example inputs (arrays or pytrees of arrays).
    timing: whether to measure wall time; ``False`` sets ``time_s`` to nan and
      only traces and compiles (deterministic, for tests).
    repeats: minimum number of timed calls, >= 1.
    min_time_s: keep timing calls until this many seconds have passed.

  Returns:
    A :class:`Cost` with the jaxpr size, XLA's compiled cost analysis and the
    median wall time of one call over all timed calls, ``block_until_ready``
    included.
  """
  jitted = jax.jit(fn)
  eqns = count_jaxpr_eqns(jax.make_jaxpr(fn)(*args))
  xla = _xla_cost_analysis(jitted.lower(*args).compile())
  time_s = math.nan
  if timing:
    time_s = _median_call_time_s(lambda: jitted(*args), repeats=repeats, min_time_s=min_time_s)
  return Cost(eqns, xla["flops"], xla["transcendentals"], xla["bytes accessed"], time_s)


class CostReport(NamedTuple):
  """Cost of a function and of its derivatives at example inputs."""

  n_inputs: int  # n: total number of input elements.
  n_outputs: int  # m: total number of output elements.
  costs: dict[str, Cost]  # "f", "jacfwd", "jacrev" and, for m = 1, "grad".

  def ratio(self, name: str, metric: str = "ops") -> float:
    """cost(name) / cost(f) for ``metric`` in {"ops", "flops", "time_s", ...}."""
    return getattr(self.costs[name], metric) / getattr(self.costs["f"], metric)

  def table(self) -> str:
    """The report as a fixed-width text table, one row per computation."""
    header = (
      f"n={self.n_inputs} inputs, m={self.n_outputs} outputs\n"
      f"{'':8} {'eqns':>6} {'flops':>10} {'transc.':>9} {'bytes':>10} "
      f"{'time µs':>9} {'ops/f':>7} {'time/f':>7}"
    )
    rows = [header]
    for name, c in self.costs.items():
      rows.append(
        f"{name:8} {c.jaxpr_eqns:>6d} {c.flops:>10.0f} {c.transcendentals:>9.0f} "
        f"{c.bytes_accessed:>10.0f} {c.time_s * 1e6:>9.1f} "
        f"{self.ratio(name):>7.2f} {self.ratio(name, 'time_s'):>7.2f}"
      )
    return "\n".join(rows)

  def __str__(self) -> str:
    return self.table()


def cost_report(
  fn: Callable[..., Any],
  *args: Any,
  timing: bool = True,
  repeats: int = 7,
  min_time_s: float = 0.05,
) -> CostReport:
  """Cost of ``fn``, its Jacobian in both modes and (for m = 1) its gradient.

  Forward mode (``jax.jacfwd``) pushes one tangent per input, so its cost is
  about n times that of f; reverse mode (``jax.jacrev``) pulls one adjoint
  per output, about m times that of f plus the memory to keep the primal
  values. For a scalar output, ``jax.grad`` is one reverse pass: by the
  cheap-gradient principle it costs a small constant multiple of f, whatever n.

  All positional arguments are differentiated. Each computation is jitted
  separately and measured with :func:`jit_cost`.

  Args:
    fn: a function of arrays with floating-point inputs and outputs.
    *args: example inputs.
    timing: whether to measure wall time (``False``: only trace and compile).
    repeats: minimum number of timed calls.
    min_time_s: keep timing calls until this many seconds have passed.

  Returns:
    A :class:`CostReport`; ``print(report)`` prints it as a table.

  Examples:
    >>> import jax.numpy as jnp
    >>> from relax_optax import autodiff
    >>> report = autodiff.cost_report(autodiff.fan_in, jnp.ones(64), timing=False)
    >>> report.ratio("jacfwd") > 10 * report.ratio("jacrev")
    True
  """
  args = jax.tree.map(jnp.asarray, args)
  argnums = tuple(range(len(args)))
  n = sum(leaf.size for leaf in jax.tree.leaves(args))
  m = sum(leaf.size for leaf in jax.tree.leaves(jax.eval_shape(fn, *args)))
  candidates = {
    "f": fn,
    "jacfwd": jax.jacfwd(fn, argnums=argnums),
    "jacrev": jax.jacrev(fn, argnums=argnums),
  }
  if m == 1:
    candidates["grad"] = jax.grad(lambda *a: jnp.reshape(fn(*a), ()), argnums=argnums)
  costs = {
    name: jit_cost(g, *args, timing=timing, repeats=repeats, min_time_s=min_time_s)
    for name, g in candidates.items()
  }
  return CostReport(n, m, costs)


# ---------------------------------------------------------------------------
# A family ℝⁿ → ℝᵐ from the same primitives, for scaling sweeps.
# ---------------------------------------------------------------------------


def fan_in(x: jax.typing.ArrayLike) -> jax.Array:
  """Fan-in ℝⁿ → ℝ: s = Σᵢ f(xᵢ, xᵢ) = Σᵢ exp(xᵢ) · sin(xᵢ)², f = :func:`textbook_f`.

  About 4n operations (2n of them transcendental). Its gradient costs a
  constant multiple of that; its forward-mode Jacobian n times as much.

  Args:
    x: the n inputs, any shape (all elements are summed).

  Returns:
    The scalar s.
  """
  x = jnp.asarray(x)
  return jnp.sum(textbook_f(x, x))


def fan_out(s: jax.typing.ArrayLike, m: int) -> jax.Array:
  """Fan-out ℝ → ℝᵐ: yⱼ = f(sin(tⱼ·s), s + tⱼ) = exp(sin(tⱼ·s)) · sin(s + tⱼ)².

  ``tⱼ`` are m fixed frequencies evenly spaced in [0.5, 1.5]; the inner sin
  keeps exp bounded (yⱼ ≤ e), so no output overflows whatever s is.

  Args:
    s: a scalar input.
    m: number of outputs, >= 1.

  Returns:
    The m outputs, shape ``(m,)``.
  """
  if m < 1:
    raise ValueError(f"m must be >= 1, got {m}.")
  t = jnp.asarray(np.linspace(0.5, 1.5, m), dtype=jnp.result_type(float))
  s = jnp.asarray(s)
  return textbook_f(jnp.sin(t * s), s + t)


def fan_in_fan_out(m: int) -> Callable[[jax.Array], jax.Array]:
  """The family ℝⁿ → ℝᵐ, x ↦ fan_out(fan_in(x), m), for scaling sweeps.

  Evaluating it costs O(n + m); its Jacobian is a dense m x n matrix (of rank
  one, through the scalar s). Forward mode needs n tangent passes and reverse
  mode m adjoint passes, each of cost O(n + m), so cost(jacfwd)/cost(f) grows
  like n and cost(jacrev)/cost(f) like m, and they cross near n = m.

  Args:
    m: number of outputs, >= 1 (n is the size of the argument).

  Returns:
    The function ``x -> fan_out(fan_in(x), m)``.
  """
  if m < 1:
    raise ValueError(f"m must be >= 1, got {m}.")

  def fn(x: jax.Array) -> jax.Array:
    return fan_out(fan_in(x), m)

  return fn
