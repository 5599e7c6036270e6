"""Forward- vs reverse-mode automatic differentiation, written out by hand and counted.

Section 1.6.1 of *Elements of Networks* (chapter 1) differentiates

    f(x1, x2) = exp(x1) · sin(x2)²

by hand in both orders and argues that reverse mode (adjoints pulled from the
output) needs fewer operations than forward mode (tangents pushed from each
input) because f fans in, ℝ² → ℝ. This script is that derivation as code:

- :func:`textbook_f`: the chapter's example, node by node (a = exp(x1),
  b = sin(x2), c = b², d = a·c).
- :func:`reverse_accumulation`, :func:`forward_accumulation`: its two
  hand-written derivations, step by step, each counting the arithmetic
  operations it performs (:class:`OpCount`) and checked against ``jax.grad``,
  ``jax.jvp`` and ``jax.vjp`` (``tests/test_autodiff.py``).

Run it to print every step of both derivations and the counts::

    python examples/autodiff_modes.py

What the counts say:

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

How the cost of each mode scales with the number of inputs n and outputs m,
measured with XLA's cost analysis and wall time, is the benchmark
``python -m benchmarks.autodiff_modes``.

References:
  Griewank, A. and Walther, A., 2008. Evaluating Derivatives: Principles and
  Techniques of Algorithmic Differentiation, 2nd ed. SIAM.
"""

from __future__ import annotations

import argparse
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

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
    >>> print(f"{float(textbook_f(9.0, 10.0)):.2f}")
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
    >>> result = reverse_accumulation(9.0, 10.0)
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
    >>> forward_accumulation(9.0, 10.0).ops.accumulation
    12
    >>> forward_accumulation(9.0, 10.0, skip_zero_tangents=True).ops.accumulation
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
# The walk-through.
# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Accumulation]:
  """Prints both derivations at (x1, x2), step by step, next to ``jax.grad``."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--x1", type=float, default=9.0)
  parser.add_argument("--x2", type=float, default=10.0)
  args = parser.parse_args(argv)
  x1, x2 = jnp.float32(args.x1), jnp.float32(args.x2)
  print(f"f(x1, x2) = exp(x1) · sin(x2)² at ({args.x1:g}, {args.x2:g}), float32")
  runs = {
    "reverse": reverse_accumulation(x1, x2),
    "forward, as the chapter (zero tangents skipped)": forward_accumulation(
      x1, x2, skip_zero_tangents=True
    ),
    "forward, dense seeds (as jax.jacfwd)": forward_accumulation(x1, x2),
  }
  for name, run in runs.items():
    print(f"\n== {name} ==")
    for step in run.steps:
      print(f"  {step}")
    o = run.ops
    print(
      f"  f = {float(run.value):.2f}, ∇f = ({float(run.grad[0]):.2f}, {float(run.grad[1]):.2f})"
      f"; ops: {o.primal} primal + {o.partials} partials + {o.accumulation} chain rule"
      f" = {o.total}, seeds {o.seeds}"
    )
  grad = jax.grad(textbook_f, argnums=(0, 1))(x1, x2)
  print(f"\njax.grad: ∇f = ({float(grad[0]):.2f}, {float(grad[1]):.2f})")
  rev, chap, dense = (r.ops for r in runs.values())
  print(
    f"chain-rule ops + seeds: reverse {rev.accumulation}+{rev.seeds} = "
    f"{rev.accumulation + rev.seeds}, chapter-style forward {chap.accumulation}+{chap.seeds} = "
    f"{chap.accumulation + chap.seeds} (the chapter's '6 vs 7'); dense forward "
    f"{dense.accumulation}+{dense.seeds}"
  )
  return runs


if __name__ == "__main__":
  main()
