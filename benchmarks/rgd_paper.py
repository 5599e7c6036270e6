"""The experiments of França et al. (2020) for RGD, reproduced with relax_optax.

Relativistic Gradient Descent (``relax_optax.rgd``, the leapfrog form with
``alpha``, as the paper's ``relativistic2``) against classical momentum (CM,
heavy ball: ``optax.sgd(lr, momentum=mu)``) and Nesterov's method (NAG:
``optax.sgd(lr, momentum=mu, nesterov=True)``, evaluated at the authors'
iterate ``x = y + lr·mu·trace``, not at the look-ahead point ``y``), on the
paper's problems, set up as in the authors' scripts (github.com/guisf/rgd):

* ``corr_quad``: ``f = ½xᵀQx``, ``Q_ij = 0.9^|i−j|``, d = 50, ``x0 ~ N(0, 10²)``
  (``corr_quad.py``; ρ = 0.9 as in ``figs/params_quad_corr.txt``);
* ``random_quad``: ``f = ½xᵀAx``, ``A = MᵀΛM``, ``M`` Haar-orthogonal, ``Λ``
  uniform in [1e-3, 1], d = 500, ``x0 = 5·1`` (``random_quad.py``);
* ``rosenbrock``: d = 100, ``x0 = (−2, 2, −2, …)`` (``rosenbrock.py``);
* ``booth``, ``matyas``, ``beale``, ``camel`` (three-hump), ``levi`` (N.13):
  the 2-D functions of ``test_suite.py`` with its starting points;
* ``matrix_completion``: 100 × 100, rank 5, 30 % observed, factors ``A``, ``B``
  updated alternately (``matrix_compl.py``); ``f`` is the relative error
  ``‖M − ABᵀ‖/‖M‖``.

Tuning: a seeded **random search** (the paper used hyperopt's TPE), the same
number of candidates for each method (the authors gave RGD 2–3× more), drawn
uniformly from the authors' ranges for the problem (``stepsize``, ``mu``, and
for RGD ``delta = 1/c²`` and ``alpha``). The search runs in 4 rounds of a
quarter of the budget: the first uniform over the ranges, each later one
uniform in a box around the best so far (half-width 1/4, 1/8, 1/16 of each
range); step sizes uniform as the authors' ``hp.uniform`` (``--log-stepsize``:
log-uniform). A candidate's score is the authors' ``f(x_K)`` at the reported horizon
``K``; where float64 rounding limits ``f`` (all problems but the two
quadratics, whose minimum is at the origin) it is floored at ``1e-30·f(x_0)``
(``1e-14`` for the relative error of matrix completion), and ties at the floor
go to the smaller mean ``log f`` over the run; NaN and inf score worst. All
candidates run at once (``jax.vmap`` over ``lax.scan``), in float64 as the
authors' NumPy code. The tuned values and the
authors' published ones (two quadratics, matrix completion) are then run on the
tuning instance (seed 0) and on held-out instances (seeds 1…4: new ``x0``, new
matrices) for the problems that are random.

Prints the table; writes ``rgd_paper.json`` (everything, including the seed-0 curves)
and ``rgd_paper.png`` (``f(x_k)`` on a log scale) under ``benchmarks/results/scratch/``,
or with ``--commit-results`` under ``benchmarks/results/`` (what the documentation
shows).

Run::

  python -m benchmarks.rgd_paper            # a few minutes on 2 CPU cores
  python -m benchmarks.rgd_paper --quick    # < 30 s: 3 problems, small budget
  python -m benchmarks.rgd_paper --budget 2048 --stem rgd_paper_budget2048
  python -m benchmarks.rgd_paper --search-seed 1 --stem rgd_paper_search1
  python -m benchmarks.rgd_paper --log-stepsize --stem rgd_paper_logstep
  python -m benchmarks.rgd_paper --commit-results   # update benchmarks/results/
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import relax_optax
from benchmarks._common import add_output_args, output_path, run_metadata, run_start, write_json

METHODS = ("CM", "NAG", "RGD")
ROUNDS = 4  # random-search rounds; each later one samples around the best so far

# ---------------------------------------------------------------------------
# The methods (hyperparameters may be traced: they are vmapped over).


def make_tx(method: str, h: dict[str, jax.Array]) -> optax.GradientTransformation:
  if method == "CM":
    return optax.sgd(h["stepsize"], momentum=h["mu"])
  if method == "NAG":
    return optax.sgd(h["stepsize"], momentum=h["mu"], nesterov=True)
  # delta = 1/c²: delta = 0 is c = inf (no limit).
  c = 1 / jnp.sqrt(h["delta"])
  return relax_optax.rgd(h["stepsize"], momentum=h["mu"], speed_limit=c, alpha=h["alpha"])


def eval_point(method: str, h: dict[str, jax.Array], state: Any, params: Any) -> Any:
  """The authors' iterate ``x`` (where ``f`` is reported)."""
  if method == "NAG":
    # optax's Nesterov holds y_k = x_k + mu·V_{k−1}, with V = −lr·trace.
    trace = optax.tree_utils.tree_get(state, "trace")
    return jax.tree.map(lambda y, t: y + h["stepsize"] * h["mu"] * t, params, trace)
  if method == "RGD":
    return relax_optax.rgd_eval_params(state, params)
  return params


# ---------------------------------------------------------------------------
# The problems.


@dataclasses.dataclass(frozen=True)
class Problem:
  name: str
  description: str
  iterations: int  # K, the horizon reported (and tuned on)
  space: dict[str, tuple[float, float]]  # the authors' ranges
  tol: float  # iterations to reach f(x_k) <= tol·f(x_0) (f* = 0 for all)
  random: bool  # whether the instance depends on the seed
  make: Callable[[int], dict[str, np.ndarray]]  # seed -> instance (x0 and data)
  f: Callable[[Any, dict], jax.Array]
  grad: Callable[[Any, dict], Any] | None = None  # None: jax.grad(f)
  published: dict[str, dict[str, float]] | None = None
  alternating: bool = False  # matrix completion: A then B
  # Tuning: f(x_K) below floor·f(x_0) is a tie (float64 rounding decides
  # there), broken by the mean log f. 0 where f keeps its relative precision
  # down to 0 (a quadratic minimised at the origin): the authors' f(x_K).
  floor: float = 1e-30


def _space(stepsize, mu, delta, alpha=(0.0, 1.0)):
  return {"stepsize": stepsize, "mu": mu, "delta": delta, "alpha": alpha}


def _corr_quad(seed):
  d, rho = 50, 0.9
  i = np.arange(d)
  q = rho ** np.abs(i[:, None] - i[None, :])
  return {"x0": np.random.default_rng(seed).normal(0, 10, d), "Q": q}


def _haar(rng, d):
  """A Haar-distributed orthogonal matrix (as scipy's ortho_group)."""
  z = rng.standard_normal((d, d))
  q, r = np.linalg.qr(z)
  return q * np.sign(np.diag(r))


def _random_quad(seed):
  d = 500
  rng = np.random.default_rng(1000 + seed)
  m = _haar(rng, d)
  a = m.T @ np.diag(rng.uniform(1e-3, 1.0, d)) @ m
  return {"x0": 5 * np.ones(d), "A": (a + a.T) / 2}


def _rosenbrock_x0(seed):
  del seed
  x0 = 2 * np.ones(100)
  x0[::2] = -2
  return {"x0": x0}


def _fixed(x0):
  return lambda seed: {"x0": np.asarray(x0, np.float64)}


def _rosenbrock(x, data):
  return jnp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def _booth(z, data):
  x, y = z
  return (x + 2 * y - 7) ** 2 + (2 * x + y - 5) ** 2


def _matyas(z, data):
  x, y = z
  return 0.26 * (x**2 + y**2) - 0.48 * x * y


def _beale(z, data):
  a, b = z
  return (1.5 - a + a * b) ** 2 + (2.25 - a + a * b**2) ** 2 + (2.625 - a + a * b**3) ** 2


def _camel(z, data):
  x, y = z
  return 2 * x**2 - 1.05 * x**4 + x**6 / 6 + x * y + y**2


def _levi(z, data):
  x, y = z
  s = jnp.sin
  return (
    s(3 * jnp.pi * x) ** 2
    + (x - 1) ** 2 * (1 + s(3 * jnp.pi * y) ** 2)
    + (y - 1) ** 2 * (1 + s(2 * jnp.pi * y) ** 2)
  )


def _matrix_completion(seed, n1=100, n2=100, r=5, sr=0.3):
  rng = np.random.default_rng(2000 + seed)
  p = int(sr * n1 * n2)
  m = rng.normal(1, 2, (n1, r)) @ rng.normal(1, 2, (n2, r)).T
  mask = np.zeros(n1 * n2)
  mask[rng.choice(n1 * n2, p, replace=False)] = 1
  mask = mask.reshape(n1, n2)
  return {
    "x0": {"A": rng.normal(0, 1, (n1, r)), "B": rng.normal(0, 1, (n2, r))},
    "M": m,
    "mask": mask,
  }


def _mc_error(x, data):
  return jnp.linalg.norm(data["M"] - x["A"] @ x["B"].T) / jnp.linalg.norm(data["M"])


def _mc_grads(data):
  """∂/∂A and ∂/∂B of ½‖P_Ω(M − ABᵀ)‖² (the authors' gradients, λ = 0)."""
  mask, mobs = data["mask"], data["mask"] * data["M"]
  grad_a = lambda a, b: -(mask * (mobs - a @ b.T)) @ b
  grad_b = lambda a, b: -(mask * (mobs - a @ b.T)).T @ a
  return grad_a, grad_b


def _paper(cm, nag, rgd):
  keys = ("mu", "stepsize")
  return {
    "CM": dict(zip(keys, cm, strict=True)),
    "NAG": dict(zip(keys, nag, strict=True)),
    "RGD": dict(zip(("alpha", "delta", "mu", "stepsize"), rgd, strict=True)),
  }


PROBLEMS = {
  p.name: p
  for p in [
    Problem(
      "corr_quad",
      "correlated quadratic, d=50, rho=0.9",
      1000,
      _space((1e-4, 0.9), (0.5, 0.99), (0.0, 20.0)),
      1e-10,
      True,
      _corr_quad,
      lambda x, d: 0.5 * x @ (d["Q"] @ x),
      lambda x, d: d["Q"] @ x,
      # figs/params_quad_corr.txt
      _paper(
        (0.8499379865297774, 0.135174828572651),
        (0.912707662292255, 0.06871232717323399),
        (0.9319966444617991, 0.8482795660957748, 0.809296220797109, 0.11633421099281825),
      ),
      floor=0.0,
    ),
    Problem(
      "random_quad",
      "random quadratic, d=500, eigenvalues U[1e-3, 1]",
      700,
      _space((1e-3, 1.0), (0.5, 0.99), (0.0, 10.0)),
      1e-10,
      True,
      _random_quad,
      lambda x, d: 0.5 * x @ (d["A"] @ x),
      lambda x, d: d["A"] @ x,
      _paper(
        (0.9323589706206022, 0.9623689765680231),
        (0.934081124374479, 0.9995448130658978),
        (0.9514602317617766, 0.2218261041691867, 0.9098808541704211, 0.946991502473767),
      ),
      floor=0.0,
    ),
    Problem(
      "rosenbrock",
      "Rosenbrock, d=100, x0=(-2,2,...)",
      2000,
      _space((1e-5, 1e-2), (0.9, 0.99), (0.0, 30.0)),
      1e-6,
      False,
      _rosenbrock_x0,
      _rosenbrock,
    ),
    Problem(
      "booth",
      "Booth, x0=(10,10)",
      300,
      _space((1e-4, 1e-2), (0.7, 0.99), (0.0, 20.0)),
      1e-10,
      False,
      _fixed([10.0, 10.0]),
      _booth,
    ),
    Problem(
      "matyas",
      "Matyas, x0=(10,-7)",
      400,
      _space((1e-4, 1e-1), (0.7, 0.99), (0.0, 15.0)),
      1e-10,
      False,
      _fixed([10.0, -7.0]),
      _matyas,
    ),
    Problem(
      "beale",
      "Beale, x0=(-3,-3)",
      2000,
      _space((1e-7, 1e-2), (0.7, 0.99), (0.0, 50.0)),
      1e-10,
      False,
      _fixed([-3.0, -3.0]),
      _beale,
    ),
    Problem(
      "camel",
      "three-hump camel, x0=(5,5)",
      200,
      _space((1e-5, 1e-1), (0.7, 0.99), (0.0, 20.0)),
      1e-10,
      False,
      _fixed([5.0, 5.0]),
      _camel,
    ),
    Problem(
      "levi",
      "Levi N.13, x0=(10,-10)",
      400,
      _space((1e-5, 1e-2), (0.8, 0.99), (0.0, 10.0)),
      1e-10,
      False,
      _fixed([10.0, -10.0]),
      _levi,
    ),
    Problem(
      "matrix_completion",
      "matrix completion 100x100, rank 5, 30% observed (f: relative error)",
      200,
      _space((1e-5, 1e-2), (0.3, 0.99), (0.0, 10.0)),
      1e-6,
      True,
      _matrix_completion,
      _mc_error,
      None,
      # matrix_compl.py's printed output, in the repository's params file
      _paper(
        (0.5617183959321935, 0.002953057411167435),
        (0.7401660517168485, 0.0027652416724099856),
        (0.9323359949015209, 0.0041986853734918145, 0.524999672544746, 0.004601952783120207),
      ),
      alternating=True,
      floor=1e-14,  # the relative error bottoms out near 1e-16
    ),
  ]
}
QUICK = ("corr_quad", "booth", "matrix_completion")


# ---------------------------------------------------------------------------
# Running: f(x_0), …, f(x_K) for one method, hyperparameters and instance.


def trajectory(problem: Problem, method: str, h: dict, inst: dict, iterations: int) -> jax.Array:
  data = {k: v for k, v in inst.items() if k != "x0"}
  f = lambda x: problem.f(x, data)
  x0 = inst["x0"]
  if problem.alternating:
    grad_a, grad_b = _mc_grads(data)
    tx = make_tx(method, h)  # one optimizer per factor, each with its own norm

    def body(carry, _):
      (pa, sa), (pb, sb) = carry
      b = eval_point(method, h, sb, pb)
      ua, sa = tx.update(grad_a(pa, b), sa, pa)
      pa = optax.apply_updates(pa, ua)
      a = eval_point(method, h, sa, pa)
      ub, sb = tx.update(grad_b(a, pb), sb, pb)
      pb = optax.apply_updates(pb, ub)
      b = eval_point(method, h, sb, pb)
      return ((pa, sa), (pb, sb)), f({"A": a, "B": b})

    init = ((x0["A"], tx.init(x0["A"])), (x0["B"], tx.init(x0["B"])))
  else:
    grad = (lambda x: problem.grad(x, data)) if problem.grad else jax.grad(f)
    tx = make_tx(method, h)

    def body(carry, _):
      params, state = carry
      updates, state = tx.update(grad(params), state, params)
      params = optax.apply_updates(params, updates)
      return (params, state), f(eval_point(method, h, state, params))

    init = (x0, tx.init(x0))
  _, fs = jax.lax.scan(body, init, length=iterations)
  return jnp.concatenate([f(x0)[None], fs])


def sample(
  space: dict,
  method: str,
  n: int,
  rng: np.random.Generator,
  around: dict | None,
  width: float,
  log_stepsize: bool = False,
) -> dict[str, np.ndarray]:
  """``n`` candidates, uniform in the authors' ranges, or (``around`` given) in
  the box of half-width ``width``·range around ``around``, clipped to them.
  With ``log_stepsize`` the step size is uniform in its logarithm instead."""
  names = ("stepsize", "mu") if method != "RGD" else ("stepsize", "mu", "delta", "alpha")
  out = {}
  for k in names:
    lo, hi = space[k]
    log = log_stepsize and k == "stepsize"
    if log:
      lo, hi = np.log(lo), np.log(hi)
    if around is not None:
      centre = np.log(around[k]) if log else around[k]
      half = width * (hi - lo)
      lo, hi = max(lo, centre - half), min(hi, centre + half)
    out[k] = np.exp(rng.uniform(lo, hi, n)) if log else rng.uniform(lo, hi, n)
  return out


def score(curves: np.ndarray, floor: float) -> np.ndarray:
  """Candidates from best to worst: by the floored f(x_K), then the mean log f."""
  f0 = curves[:, :1]
  floor = np.maximum(floor * f0, np.finfo(np.float64).tiny)
  bad = ~np.all(np.isfinite(curves), axis=1)
  final = np.maximum(curves[:, -1], floor[:, 0])
  with np.errstate(invalid="ignore", divide="ignore"):
    mean_log = np.mean(np.log10(np.maximum(curves, floor)), axis=1)
  final = np.where(bad, np.inf, final)
  mean_log = np.where(bad, np.inf, mean_log)
  return np.lexsort((mean_log, final))


def iters_to_tol(curve: np.ndarray, tol: float) -> int | None:
  hit = np.nonzero(curve <= tol * curve[0])[0]
  return int(hit[0]) if hit.size else None


def _summary(curve: np.ndarray, tol: float) -> dict:
  return {"final_f": float(curve[-1]), "iters_to_tol": iters_to_tol(curve, tol)}


def run_problem(
  problem: Problem,
  budget: int,
  seeds: list[int],
  iterations: int,
  search_seed: int,
  log_stepsize: bool,
  bar,
) -> dict:
  inst0 = jax.tree.map(jnp.asarray, problem.make(0))
  held = [s for s in seeds if s != 0] if problem.random else []
  insts = [jax.tree.map(jnp.asarray, problem.make(s)) for s in held]
  out = {
    "description": problem.description,
    "iterations": iterations,
    "tol": problem.tol,
    "floor": problem.floor,
    "space": problem.space,
    "random_instance": problem.random,
    "held_out_seeds": held,
    "tuned": {},
    "published": {},
  }
  for m_index, method in enumerate(METHODS):
    rng = np.random.default_rng([search_seed, list(PROBLEMS).index(problem.name), m_index])
    run = jax.jit(functools.partial(trajectory, problem, method, iterations=iterations))
    tune = jax.jit(jax.vmap(run, in_axes=(0, None)))
    best, cands, all_curves = None, [], []
    for r in range(ROUNDS):
      cand = sample(problem.space, method, budget // ROUNDS, rng, best, 0.5**r / 2, log_stepsize)
      cands.append(cand)
      all_curves.append(np.asarray(tune(cand, inst0)))
      cand = {k: np.concatenate([c[k] for c in cands]) for k in cand}
      curves = np.concatenate(all_curves)
      order = score(curves, problem.floor)
      best = {k: float(v[order[0]]) for k, v in cand.items()}
    finite = float(np.mean(np.all(np.isfinite(curves), axis=1)))
    bar.update(1)

    settings = {"tuned": best}
    if problem.published:
      settings["published"] = problem.published[method]
    for source, h in settings.items():
      curve = np.asarray(curves[order[0]]) if source == "tuned" else None
      hj = {k: jnp.asarray(v) for k, v in h.items()}
      if curve is None:
        curve = np.asarray(run(hj, inst0))
      per_seed = [np.asarray(run(hj, inst)) for inst in insts]
      entry = {
        "params": h,
        **_summary(curve, problem.tol),
        "curve": [float(f"{v:.4g}") for v in curve],
        "seeds": {
          "seed": held,
          "final_f": [float(c[-1]) for c in per_seed],
          "iters_to_tol": [iters_to_tol(c, problem.tol) for c in per_seed],
        },
      }
      if source == "tuned":
        entry["tuning"] = {"candidates": budget, "finite_fraction": finite}
      out[source][method] = entry
  return out


# ---------------------------------------------------------------------------
# Report.


def _fmt_iters(k, iterations):
  return f">{iterations}" if k is None else str(k)


def _median_iters(ks, iterations):
  if not ks:
    return "-"
  vals = np.array([iterations + 1 if k is None else k for k in ks])
  med = float(np.median(vals))
  return f">{iterations}" if med > iterations else f"{med:.0f}"


def _iters_key(ks: list, iterations: int) -> float:
  return float(np.median([iterations + 1 if k is None else k for k in ks]))


def _fastest(iters: dict[str, float], k: int) -> str | None:
  """The method(s) with the fewest iterations ("NAG=RGD" for a tie); None if
  no method reached the tolerance."""
  low = min(iters.values())
  if low > k:
    return None
  return "=".join(m for m in METHODS if iters[m] == low)


def table(results: dict) -> tuple[str, dict]:
  """The table, and per problem the best tuned method by f(x_K) and by iterations."""
  lines = [
    f"{'problem':<18} {'method':<6} {'params':<9} {'f(x_K)':>10} {'iters':>6}"
    f" {'held-out f(x_K)':>15} {'iters':>6} {'finite':>6}  best by",
  ]
  best = {}
  for name, prob in results["problems"].items():
    k, tuned = prob["iterations"], prob["tuned"]
    curves = np.array([tuned[m]["curve"] for m in METHODS], float)
    by_f = METHODS[score(curves, prob["floor"])[0]]
    best[name] = {"f(x_K)": by_f}
    iters = {m: _iters_key([tuned[m]["iters_to_tol"]], k) for m in METHODS}
    best[name]["iters_to_tol"] = _fastest(iters, k)
    if prob["held_out_seeds"]:
      held = {m: _iters_key(tuned[m]["seeds"]["iters_to_tol"], k) for m in METHODS}
      best[name]["held_out_iters_to_tol"] = _fastest(held, k)
    for source in ("tuned", "published"):
      for method in METHODS:
        if method not in prob[source]:
          continue
        e = prob[source][method]
        seeds = e["seeds"]
        med_f = f"{np.median(seeds['final_f']):.3g}" if seeds["final_f"] else "-"
        # the share of tuning candidates whose run stayed finite
        finite = f"{100 * e['tuning']['finite_fraction']:.0f}%" if "tuning" in e else ""
        marks = (
          []
          if source != "tuned"
          else [
            label
            for label, key in (
              ("f", "f(x_K)"),
              ("iters", "iters_to_tol"),
              ("held-out", "held_out_iters_to_tol"),
            )
            if method in (best[name].get(key) or "").split("=")
          ]
        )
        lines.append(
          f"{name:<18} {method:<6} {source:<9} {e['final_f']:>10.3g}"
          f" {_fmt_iters(e['iters_to_tol'], k):>6} {med_f:>15}"
          f" {_median_iters(seeds['iters_to_tol'], k):>6} {finite:>6}  {', '.join(marks)}"
        )
  count = lambda key, m: sum(1 for b in best.values() if b.get(key) == m)
  total = lambda key: sum(1 for b in best.values() if b.get(key) is not None)
  ties = lambda key: sum(1 for b in best.values() if "=" in (b.get(key) or ""))
  lines.append(
    "tuned RGD best "
    + ", ".join(
      f"by {label} on {count(key, 'RGD')} of {total(key)}"
      f" (CM {count(key, 'CM')}, NAG {count(key, 'NAG')}, ties {ties(key)})"
      for label, key in (
        ("f(x_K)", "f(x_K)"),
        ("iterations to tol", "iters_to_tol"),
        ("held-out iterations", "held_out_iters_to_tol"),
      )
    )
  )
  return "\n".join(lines), best


def plot(results: dict, path: Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  probs = results["problems"]
  cols = 3
  rows = -(-len(probs) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
  colors = {"CM": "tab:blue", "NAG": "tab:green", "RGD": "black"}
  for ax, (name, prob) in zip(axes.flat, probs.items(), strict=False):
    for source, style in (("tuned", "-"), ("published", ":")):
      for method in METHODS:
        if method in prob[source]:
          curve = np.asarray(prob[source][method]["curve"], float)
          curve = np.where(np.isfinite(curve) & (curve > 0), curve, np.nan)
          label = method if source == "tuned" else f"{method} (paper's values)"
          ax.plot(curve, style, color=colors[method], label=label, lw=1.3)
    f0 = prob["tuned"]["CM"]["curve"][0]
    ax.axhline(prob["tol"] * f0, color="0.6", lw=0.8, ls="--", label="tolerance")
    ax.set_yscale("log")
    ax.set_title(name, fontsize=10)
    ax.set_xlabel("k")
    ax.set_ylabel("f(x_k)" if name != "matrix_completion" else "‖M − ABᵀ‖/‖M‖")
    ax.legend(fontsize=7)
  for ax in list(axes.flat)[len(probs) :]:
    ax.axis("off")
  fig.suptitle(
    f"RGD vs CM vs NAG, random search ({results['config']['budget']} candidates each), seed 0"
  )
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="3 problems, 16 candidates, < 30 s")
  parser.add_argument("--budget", type=int, default=None, help="candidates per method (512)")
  parser.add_argument("--seeds", type=int, default=5, help="instances 0..n-1 (0 is tuned on)")
  parser.add_argument("--problems", nargs="*", default=None, choices=list(PROBLEMS))
  parser.add_argument("--search-seed", type=int, default=0, help="seed of the random search")
  parser.add_argument(
    "--log-stepsize", action="store_true", help="sample step sizes log-uniformly (not uniformly)"
  )
  add_output_args(parser, "rgd_paper", directory=True)
  parser.add_argument("--stem", default=None, help="file names (rgd_paper, or rgd_paper_quick)")
  args = parser.parse_args(argv)

  names = args.problems or (list(QUICK) if args.quick else list(PROBLEMS))
  budget = args.budget or (16 if args.quick else 512)
  seeds = list(range(2 if args.quick else args.seeds))
  run_started = run_start()
  start = time.perf_counter()
  results = {"problems": {}}
  with jax.enable_x64(True), tqdm(total=len(names) * len(METHODS), unit="tuning") as bar:
    for name in names:
      problem = PROBLEMS[name]
      iterations = min(problem.iterations, 60) if args.quick else problem.iterations
      bar.set_description(name)
      results["problems"][name] = run_problem(
        problem, budget, seeds, iterations, args.search_seed, args.log_stepsize, bar
      )
  elapsed = time.perf_counter() - start
  results["config"] = {
    "quick": args.quick,
    "budget": budget,
    "search_seed": args.search_seed,
    "stepsize_prior": "log-uniform" if args.log_stepsize else "uniform (the authors')",
    "search": "seeded uniform random search over the authors' ranges, same budget per method",
    "seeds": seeds,
    "dtype": "float64",
    "command": "python -m benchmarks.rgd_paper "
    + " ".join(argv if argv is not None else sys.argv[1:]),
  }
  text, best = table(results)
  results["best"] = best
  print(text)
  print(f"({elapsed:.0f} s)")
  results["config"] |= run_metadata(run_started)
  stem = output_path(args) / (args.stem or ("rgd_paper_quick" if args.quick else "rgd_paper"))
  write_json(stem.with_suffix(".json"), results, indent=1)
  plot(results, stem.with_suffix(".png"))
  return results


if __name__ == "__main__":
  main()
