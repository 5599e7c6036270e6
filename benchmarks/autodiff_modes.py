"""Forward- vs reverse-mode autodiff, counted and measured: section 1.6.1 of the chapter.

Prints three tables, each ending with its headline ratio:

1. The textbook example f(x1, x2) = exp(x1)·sin(x2)² at (9, 10): value,
   gradient, hand-counted operations of each hand-written accumulation, jaxpr
   equations, XLA flops and median wall time, next to jax.grad/jacrev/jacfwd.
2. A sweep of n and m over 1..1024 on ℝⁿ → ℝᵐ, x ↦ fan_out(fan_in(x), m):
   cost of the Jacobian by jax.jacfwd and jax.jacrev, with log-log slopes and
   the measured crossover.
3. The cheap-gradient ratio cost(grad f) / cost(f) for the fan-in f against
   the bound of automatic differentiation theory (Griewank & Walther).

Writes ``autodiff_modes.json`` (everything) and ``autodiff_modes.png`` under
``benchmarks/results/scratch/``, or with ``--commit-results`` under
``benchmarks/results/`` (what the documentation shows).

It also holds the measurement: :func:`jit_cost` and :func:`cost_report` give, for
any function and example inputs, the jaxpr size, XLA's compiled cost analysis and the
median wall time of f, of its Jacobian by ``jax.jacfwd`` and ``jax.jacrev`` and of
its gradient; :func:`fan_in`, :func:`fan_out` and :func:`fan_in_fan_out` are the
family ℝⁿ → ℝᵐ swept. The hand-written derivations of the textbook example are in
``examples/autodiff_modes.py``.

Usage (from the repository root, about 1-2 minutes on 2 CPU cores)::

  python -m benchmarks.autodiff_modes
  python -m benchmarks.autodiff_modes --commit-results
"""

from __future__ import annotations

import argparse
import datetime
import math
import pathlib
import statistics
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.extend import core as jex_core

from benchmarks._common import (
  add_output_args,
  median_call_time_s,
  output_path,
  pyplot,
  run_metadata,
  run_start,
  write_json,
)
from examples.autodiff_modes import forward_accumulation, reverse_accumulation, textbook_f

GRIEWANK_WALTHER_BOUND = 5.0  # "within a factor of about 4-5" (Griewank & Walther 2008).
CHAPTER_REVERSE_OPS, CHAPTER_FORWARD_OPS = 6, 7  # as printed in section 1.6.1.


# ---------------------------------------------------------------------------
# Measured cost of any function and of its derivatives.
# ---------------------------------------------------------------------------


class Cost(NamedTuple):
  """Cost of one jit-compiled computation."""

  jaxpr_eqns: int  # primitive applications in its jaxpr, nested jaxprs inlined.
  flops: float  # XLA cost analysis: floating-point ops (nan if no analysis).
  transcendentals: float  # XLA cost analysis: exp, sin, cos, ... (nan if no analysis).
  bytes_accessed: float  # XLA cost analysis: bytes read and written (nan if no analysis).
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
  program; some backends return None (every number is then nan).
  """
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  if not analysis:  # no analysis at all from this backend: unknown, not zero.
    return dict.fromkeys(("flops", "transcendentals", "bytes accessed"), math.nan)
  # XLA leaves out the counters that are zero (a function without exp, sin, ... has
  # no "transcendentals" key): a missing counter is 0, not unknown, or ops = flops +
  # transcendentals would be nan.
  return {
    key: float(analysis.get(key, 0.0)) for key in ("flops", "transcendentals", "bytes accessed")
  }


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
    time_s = median_call_time_s(lambda: jitted(*args), repeats=repeats, min_time_s=min_time_s)
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
    >>> report = cost_report(fan_in, jnp.ones(64), timing=False)
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
    # The output may be any pytree holding one element in all (a dict of a (1,) array,
    # ...): its sum is that element, as a scalar that jax.grad accepts.
    def scalar_fn(*a: Any) -> jax.Array:
      return sum(jnp.sum(leaf) for leaf in jax.tree.leaves(fn(*a)))

    candidates["grad"] = jax.grad(scalar_fn, argnums=argnums)
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


# ---------------------------------------------------------------------------
# The three tables.
# ---------------------------------------------------------------------------


def _fmt(x: float, digits: int = 4) -> str:
  return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def _cost_dict(cost: Cost) -> dict[str, float]:
  return {**cost._asdict(), "ops": cost.ops}


def textbook_table(args: argparse.Namespace) -> dict[str, Any]:
  """The chapter's example, by hand and by JAX, in one table."""
  x1, x2 = jnp.float32(9.0), jnp.float32(10.0)
  timing = {"repeats": args.repeats, "min_time_s": args.min_time_s}
  hand = {
    "reverse, by hand": reverse_accumulation,
    "forward, by hand as chapter (0-tangents skipped)": lambda a, b: forward_accumulation(
      a, b, skip_zero_tangents=True
    ),
    "forward, by hand, dense seeds (as jacfwd)": forward_accumulation,
  }
  argnums = (0, 1)
  by_jax = {
    "jax.grad": jax.grad(textbook_f, argnums=argnums),
    "jax.jacrev": jax.jacrev(textbook_f, argnums=argnums),
    "jax.jacfwd": jax.jacfwd(textbook_f, argnums=argnums),
  }
  rows = []
  primal_ops = reverse_accumulation(x1, x2).ops.primal
  rows.append(
    {
      "mode": "f only",
      "value": float(textbook_f(x1, x2)),
      "grad": None,
      "chain_rule_ops": None,
      "seeds": None,
      "hand_total_ops": primal_ops,
      **_cost_dict(jit_cost(textbook_f, x1, x2, **timing)),
    }
  )
  for mode, accumulate in hand.items():
    result = accumulate(x1, x2)
    cost = jit_cost(lambda a, b, acc=accumulate: acc(a, b)[:2], x1, x2, **timing)
    rows.append(
      {
        "mode": mode,
        "value": float(result.value),
        "grad": [float(g) for g in result.grad],
        "chain_rule_ops": result.ops.accumulation,
        "seeds": result.ops.seeds,
        "hand_total_ops": result.ops.total,
        "steps": list(result.steps),
        **_cost_dict(cost),
      }
    )
  for mode, fn in by_jax.items():
    grad = fn(x1, x2)
    rows.append(
      {
        "mode": mode,
        "value": None,
        "grad": [float(g) for g in grad],
        "chain_rule_ops": None,
        "seeds": None,
        "hand_total_ops": None,
        **_cost_dict(jit_cost(fn, x1, x2, **timing)),
      }
    )

  f64 = math.exp(9.0) * math.sin(10.0) ** 2
  g64 = (f64, 2.0 * math.exp(9.0) * math.sin(10.0) * math.cos(10.0))
  print("\n== 1. Textbook example f(x1, x2) = exp(x1)·sin(x2)² at (9, 10), float32 ==")
  print(
    f"float64 reference: f = {f64:.4f}, ∇f = ({g64[0]:.4f}, {g64[1]:.4f}); "
    f"sin(10)² = {math.sin(10.0) ** 2:.4f}. The chapter prints f = -2430.9, sin(10)² = -0.30."
  )
  header = (
    f"{'mode':49} {'f(9,10)':>9} {'∂f/∂x1':>9} {'∂f/∂x2':>9} {'chain+seed':>10} "
    f"{'hand ops':>8} {'eqns':>5} {'flops':>6} {'transc':>6} {'time µs':>8}"
  )
  print(header)
  print("-" * len(header))
  for r in rows:
    grad = r["grad"] or [math.nan, math.nan]
    chain = "-" if r["chain_rule_ops"] is None else f"{r['chain_rule_ops']}+{r['seeds']}"
    print(
      f"{r['mode']:49} {_fmt(r['value'], 6):>9} {_fmt(grad[0], 6):>9} {_fmt(grad[1], 6):>9} "
      f"{chain:>10} {_fmt(r['hand_total_ops']):>8} {r['jaxpr_eqns']:>5} "
      f"{r['flops']:>6.0f} {r['transcendentals']:>6.0f} {r['time_s'] * 1e6:>8.1f}"
    )
  by_mode = {r["mode"]: r for r in rows}
  rev, chap, dense = (by_mode[m] for m in hand)
  xla = by_mode["jax.jacfwd"]["ops"] / by_mode["jax.jacrev"]["ops"]
  headline = (
    f"headline: chain-rule ops + seeds, reverse {rev['chain_rule_ops']}+{rev['seeds']} = "
    f"{rev['chain_rule_ops'] + rev['seeds']} vs chapter-style forward "
    f"{chap['chain_rule_ops']}+{chap['seeds']} = {chap['chain_rule_ops'] + chap['seeds']} "
    f"(chapter: {CHAPTER_REVERSE_OPS} vs {CHAPTER_FORWARD_OPS}); dense forward/reverse "
    f"chain-rule ops = {dense['chain_rule_ops']}/{rev['chain_rule_ops']} = "
    f"{dense['chain_rule_ops'] / rev['chain_rule_ops']:.1f}x; XLA ops jacfwd/jacrev = {xla:.1f}x"
  )
  print(headline)
  return {
    "rows": rows,
    "float64_reference": {"value": f64, "grad": list(g64)},
    "headline": headline,
  }


def _slope(xs: Sequence[float], ys: Sequence[float]) -> float:
  """Least-squares slope of log(y) against log(x)."""
  return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def _crossover(sizes: Sequence[int], forward: Sequence[float], reverse: Sequence[float]) -> float:
  """Size of the last change of side of forward/reverse = 1, interpolated in log-log.

  The last change, not the first: at small sizes wall times are dispatch-bound
  (a few µs for every computation), so their ratio wanders around 1 by noise
  before the real crossover. nan if forward/reverse never changes side.
  """
  log_ratio = np.log(np.asarray(forward) / np.asarray(reverse))
  for i in reversed(range(len(sizes) - 1)):
    a, b = log_ratio[i], log_ratio[i + 1]
    if b == 0:
      return float(sizes[i + 1])
    if a * b < 0:
      t = a / (a - b)
      return float(math.exp((1 - t) * math.log(sizes[i]) + t * math.log(sizes[i + 1])))
  return math.nan


def scaling_sweep(args: argparse.Namespace) -> dict[str, Any]:
  """Jacobian cost by jacfwd and jacrev over n and m."""
  sizes = [2**k for k in range(int(math.log2(args.max_size)) + 1)]
  plan = []
  for fixed in args.fixed:
    plan += [("n", fixed, n, fixed) for n in sizes]  # vary n at fixed m.
    plan += [("m", fixed, fixed, m) for m in sizes]  # vary m at fixed n.
  measured: dict[tuple[int, int], CostReport] = {}
  key = jax.random.key(0)
  for n, m in tqdm.tqdm(
    sorted({(n, m) for *_, n, m in plan}), desc="sweep (n, m)", file=sys.stderr
  ):
    x = jax.random.uniform(jax.random.fold_in(key, n), (n,), minval=-1.0, maxval=1.0)
    measured[(n, m)] = cost_report(
      fan_in_fan_out(m), x, repeats=args.repeats, min_time_s=args.min_time_s
    )
  rows = []
  for varied, fixed, n, m in plan:
    report = measured[(n, m)]
    c = report.costs
    rows.append(
      {
        "varied": varied,
        "fixed": fixed,
        "n": n,
        "m": m,
        **{
          f"{metric}_{name}": getattr(c[name], metric)
          for name in ("f", "jacfwd", "jacrev")
          for metric in (
            "jaxpr_eqns",
            "flops",
            "transcendentals",
            "bytes_accessed",
            "ops",
            "time_s",
          )
        },
      }
    )

  print("\n== 2. Jacobian of x ↦ fan_out(fan_in(x), m), ℝⁿ → ℝᵐ: jacfwd vs jacrev ==")
  print("ops = XLA flops + transcendentals; µs = median wall time of one jitted call")
  header = (
    f"{'n':>5} {'m':>5} {'ops f':>8} {'ops fwd':>10} {'ops rev':>10} {'fwd/f':>7} "
    f"{'rev/f':>7} {'fwd/rev':>8} {'µs f':>7} {'µs fwd':>9} {'µs rev':>9} {'t fwd/rev':>9}"
  )
  summary = []
  for varied in ("n", "m"):
    for fixed in args.fixed:
      block = [r for r in rows if r["varied"] == varied and r["fixed"] == fixed]
      other = "m" if varied == "n" else "n"
      print(f"\n-- vary {varied} at {other} = {fixed} --")
      print(header)
      for r in block:
        print(
          f"{r['n']:>5} {r['m']:>5} {r['ops_f']:>8.0f} {r['ops_jacfwd']:>10.0f} "
          f"{r['ops_jacrev']:>10.0f} {r['ops_jacfwd'] / r['ops_f']:>7.1f} "
          f"{r['ops_jacrev'] / r['ops_f']:>7.1f} {r['ops_jacfwd'] / r['ops_jacrev']:>8.2f} "
          f"{r['time_s_f'] * 1e6:>7.1f} {r['time_s_jacfwd'] * 1e6:>9.1f} "
          f"{r['time_s_jacrev'] * 1e6:>9.1f} {r['time_s_jacfwd'] / r['time_s_jacrev']:>9.2f}"
        )
      xs = [r[varied] for r in block]
      entry = {"varied": varied, "fixed": fixed}
      for mode in ("jacfwd", "jacrev"):
        entry[f"slope_ops_{mode}_over_f"] = _slope(
          xs, [r[f"ops_{mode}"] / r["ops_f"] for r in block]
        )
        entry[f"slope_ops_{mode}"] = _slope(xs, [r[f"ops_{mode}"] for r in block])
        entry[f"slope_time_{mode}"] = _slope(xs, [r[f"time_s_{mode}"] for r in block])
      entry["crossover_ops"] = _crossover(
        xs, [r["ops_jacfwd"] for r in block], [r["ops_jacrev"] for r in block]
      )
      entry["crossover_time"] = _crossover(
        xs, [r["time_s_jacfwd"] for r in block], [r["time_s_jacrev"] for r in block]
      )
      entry["fwd_over_rev_ops_at_max"] = block[-1]["ops_jacfwd"] / block[-1]["ops_jacrev"]
      entry["fwd_over_rev_time_at_max"] = block[-1]["time_s_jacfwd"] / block[-1]["time_s_jacrev"]
      summary.append(entry)

  print(
    f"\n-- sweep summary: log-log slopes over sizes 1..{args.max_size}, "
    "crossover = last size where fwd/rev changes side --"
  )
  print(
    f"{'sweep':>14} {'fwd/f':>7} {'rev/f':>7} {'ops fwd':>8} {'ops rev':>8} {'t fwd':>6} "
    f"{'t rev':>6} {'cross ops':>9} {'cross t':>8} {'fwd/rev ops@max':>15} {'t@max':>6}"
  )
  for e in summary:
    other = "m" if e["varied"] == "n" else "n"
    print(
      f"{'vary ' + e['varied'] + ', ' + other + '=' + str(e['fixed']):>14} "
      f"{e['slope_ops_jacfwd_over_f']:>7.2f} {e['slope_ops_jacrev_over_f']:>7.2f} "
      f"{e['slope_ops_jacfwd']:>8.2f} {e['slope_ops_jacrev']:>8.2f} "
      f"{e['slope_time_jacfwd']:>6.2f} {e['slope_time_jacrev']:>6.2f} "
      f"{_fmt(e['crossover_ops'], 3):>9} {_fmt(e['crossover_time'], 3):>8} "
      f"{e['fwd_over_rev_ops_at_max']:>15.3g} {e['fwd_over_rev_time_at_max']:>6.3g}"
    )
  fan_in_end = next(e for e in summary if e["varied"] == "n" and e["fixed"] == 1)
  fan_out_end = next(e for e in summary if e["varied"] == "m" and e["fixed"] == 1)
  crossings = [e for e in summary if e["fixed"] > 1]
  crossing_text = "; ".join(
    f"vary {e['varied']} at {'m' if e['varied'] == 'n' else 'n'}={e['fixed']}: "
    f"{_fmt(e['crossover_ops'], 3)} (time {_fmt(e['crossover_time'], 3)})"
    for e in crossings
  )
  headline = (
    f"headline: jacfwd/jacrev ops at n={args.max_size}, m=1: "
    f"{fan_in_end['fwd_over_rev_ops_at_max']:.3g}x (time "
    f"{fan_in_end['fwd_over_rev_time_at_max']:.3g}x); at n=1, m={args.max_size}: "
    f"{fan_out_end['fwd_over_rev_ops_at_max']:.3g}x (time "
    f"{fan_out_end['fwd_over_rev_time_at_max']:.3g}x); crossover"
    + (f" {crossing_text}" if crossings else ": no fixed size > 1 swept")
  )
  print(headline)
  return {"sizes": sizes, "rows": rows, "summary": summary, "headline": headline}


def cheap_gradient(args: argparse.Namespace) -> dict[str, Any]:
  """cost(grad f) / cost(f) for the fan-in f over n."""
  rows = []
  key = jax.random.key(1)
  grad_fn = jax.grad(fan_in)
  timing = {"repeats": args.repeats, "min_time_s": args.min_time_s}
  for n in tqdm.tqdm(args.grad_sizes, desc="cheap gradient n", file=sys.stderr):
    x = jax.random.uniform(jax.random.fold_in(key, n), (n,), minval=-1.0, maxval=1.0)
    # f and grad f are timed alternately, args.rounds times each, so that both
    # see the same machine load; the reported time is the median over rounds.
    rounds = {"f": [], "grad": []}
    for _ in range(args.rounds):
      rounds["f"].append(jit_cost(fan_in, x, **timing))
      rounds["grad"].append(jit_cost(grad_fn, x, **timing))
    row = {"n": n}
    for name, costs in rounds.items():
      median = statistics.median(c.time_s for c in costs)
      row |= {f"{k}_{name}": v for k, v in _cost_dict(costs[0]._replace(time_s=median)).items()}
      row[f"round_times_s_{name}"] = [c.time_s for c in costs]
    rows.append(row)
  print("\n== 3. Cheap gradient: cost(grad f) / cost(f), f(x) = Σ exp(xᵢ)·sin(xᵢ)² ==")
  print(f"times: median over {args.rounds} alternating rounds of f and grad f")
  header = (
    f"{'n':>8} {'ops f':>9} {'ops grad':>9} {'flops':>6} {'transc':>6} {'ops':>6} "
    f"{'bytes':>6} {'µs f':>9} {'µs grad':>9} {'time':>6}"
  )
  print(f"{'':36}{'--- ratio grad/f ---':>20}")
  print(header)
  for r in rows:
    print(
      f"{r['n']:>8} {r['ops_f']:>9.0f} {r['ops_grad']:>9.0f} "
      f"{r['flops_grad'] / r['flops_f']:>6.2f} "
      f"{r['transcendentals_grad'] / r['transcendentals_f']:>6.2f} "
      f"{r['ops_grad'] / r['ops_f']:>6.2f} "
      f"{r['bytes_accessed_grad'] / r['bytes_accessed_f']:>6.2f} "
      f"{r['time_s_f'] * 1e6:>9.1f} {r['time_s_grad'] * 1e6:>9.1f} "
      f"{r['time_s_grad'] / r['time_s_f']:>6.2f}"
    )
  ops = [r["ops_grad"] / r["ops_f"] for r in rows]
  times = [r["time_s_grad"] / r["time_s_f"] for r in rows]
  big = rows[-1]
  headline = (
    f"headline: cheap-gradient ratio cost(grad f)/cost(f) at n={big['n']}: XLA ops "
    f"{ops[-1]:.2f}x, time {times[-1]:.2f}x (over all n: ops {min(ops):.2f}-{max(ops):.2f}x, "
    f"time {min(times):.2f}-{max(times):.2f}x) vs the Griewank-Walther bound of about 4-5x: "
    f"{'within' if max(max(ops), max(times)) <= GRIEWANK_WALTHER_BOUND else 'NOT within'}"
  )
  print(headline)
  return {"rows": rows, "headline": headline, "bound": GRIEWANK_WALTHER_BOUND}


def plot(results: dict[str, Any], path: pathlib.Path) -> None:
  """Log-log plot: ops and wall time against n and m, and the cheap gradient."""
  plt = pyplot()
  sweep = results["sweep"]
  fig, axes = plt.subplots(2, 3, figsize=(16, 9), constrained_layout=True)
  colors = {"f": "0.5", "jacfwd": "tab:blue", "jacrev": "tab:orange"}
  labels = {"f": "f", "jacfwd": "jacfwd (forward)", "jacrev": "jacrev (reverse)"}
  styles = ["-", "--", ":", "-."]
  for col, varied in enumerate(("n", "m")):
    other = "m" if varied == "n" else "n"
    for row, (metric, unit) in enumerate(
      (("ops", "XLA ops (flops + transc.)"), ("time_s", "median wall time [s]"))
    ):
      ax = axes[row, col]
      for k, fixed in enumerate(sorted({r["fixed"] for r in sweep["rows"]})):
        block = [r for r in sweep["rows"] if r["varied"] == varied and r["fixed"] == fixed]
        xs = [r[varied] for r in block]
        for name in ("f", "jacfwd", "jacrev"):
          ax.loglog(
            xs,
            [r[f"{metric}_{name}"] for r in block],
            styles[k % len(styles)],
            marker="o",
            ms=3,
            color=colors[name],
            label=f"{labels[name]}, {other}={fixed}",
          )
        if fixed > 1:
          ax.axvline(fixed, color="0.8", lw=1, zorder=0)
      ax.set_xscale("log", base=2)
      ax.set_xlabel(f"{varied} ({'inputs' if varied == 'n' else 'outputs'})")
      ax.set_ylabel(unit)
      ax.set_title(f"Jacobian of ℝⁿ → ℝᵐ, vary {varied}")
      ax.grid(True, which="both", alpha=0.3)
      ax.legend(fontsize=7)
  grad_rows = results["cheap_gradient"]["rows"]
  ns = [r["n"] for r in grad_rows]
  for row, metric in enumerate(("ops", "time_s")):
    ax = axes[row, 2]
    ax.loglog(ns, [r[f"{metric}_f"] for r in grad_rows], "o-", color="0.5", label="f")
    ax.loglog(
      ns,
      [r[f"{metric}_grad"] for r in grad_rows],
      "o-",
      color="tab:orange",
      label="grad f (reverse)",
    )
    ax.loglog(
      ns,
      [results["cheap_gradient"]["bound"] * r[f"{metric}_f"] for r in grad_rows],
      ":",
      color="tab:red",
      label="5 x f (cheap-gradient bound)",
    )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("n (inputs), m = 1")
    ax.set_ylabel("XLA ops (flops + transc.)" if metric == "ops" else "median wall time [s]")
    ax.set_title("Cheap gradient: Σ exp(xᵢ)·sin(xᵢ)²")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
  meta = results["meta"]
  fig.suptitle(
    f"Forward vs reverse mode, jit-compiled (jax {meta['jax']}, "
    f"{meta['device']}, {meta.get('cpus', meta.get('cpu_count'))} CPU cores)"
  )
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--max-size",
    type=int,
    default=1024,
    help="sweep n and m over powers of two up to this (default 1024)",
  )
  parser.add_argument(
    "--fixed",
    type=int,
    nargs="+",
    default=[1, 64],
    help="the other dimension's values in the sweep (default 1 64)",
  )
  parser.add_argument(
    "--grad-sizes",
    type=int,
    nargs="+",
    default=[1, 32, 1024, 32768, 1048576],
    help="n for the cheap-gradient table (default 1 .. 2^20)",
  )
  parser.add_argument(
    "--rounds", type=int, default=5, help="alternating f/grad rounds in the cheap-gradient table"
  )
  parser.add_argument("--repeats", type=int, default=7, help="minimum number of timed calls")
  parser.add_argument(
    "--min-time-s",
    type=float,
    default=0.05,
    help="time each computation for at least this long; the median call is reported",
  )
  add_output_args(parser, "autodiff_modes")
  args = parser.parse_args(argv)

  start = run_start()
  device = jax.devices()[0]
  meta = run_metadata() | {
    "command": " ".join(["python -m benchmarks.autodiff_modes", *sys.argv[1:]]),
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "device": getattr(device, "device_kind", str(device)),
    "repeats": args.repeats,
    "min_time_s": args.min_time_s,
    "rounds": args.rounds,
  }
  print(
    f"jax {meta['jax']} on {meta['backend']} ({meta['device']}), "
    f"{meta['cpus']} CPU cores; times are medians of one call, timed for "
    f">= {args.min_time_s} s and >= {args.repeats} calls each"
  )
  results = {"meta": meta}
  results["textbook"] = textbook_table(args)
  results["sweep"] = scaling_sweep(args)
  results["cheap_gradient"] = cheap_gradient(args)

  meta |= run_metadata(start)
  stem = output_path(args)
  write_json(stem.with_suffix(".json"), results, indent=1)
  plot(results, stem.with_suffix(".png"))
  print(f"\nwrote {stem}.png and .json")
  print(results["cheap_gradient"]["headline"])
  return results


if __name__ == "__main__":
  main()
