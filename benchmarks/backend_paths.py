"""Which path ``relativistic_adam`` compiles to on this backend, and what it buys.

``relativistic_adam`` is ``optax.chain(scale_by_adam, scale_by_learning_rate,
scale_by_relativistic)``. On CPU only (``jax.lax.platform_dependent``), for
leaves of at least 200,000 entries holding 32 MiB or more together, it takes
the ``global`` / ``per_param`` norm from Adam's update computed a second time
behind an ``optimization_barrier`` instead of from a copy written to memory.
This script shows, on the backend it runs on (CPU, GPU, TPU):

- whether the compiled step holds the recompute (more divisions than the
  plain chain's: Adam's is computed twice), which must be so on CPU and not
  elsewhere;
- that the recipe's updates equal the plain chain's (largest relative
  difference over a few steps);
- the step time of ``optax.adam``, the recipe and the plain chain at 1e7
  parameters in 4 leaves and in 256 leaves (median of ``--rounds`` rounds of
  ``--steps`` jitted steps each, interleaved), as ratios to ``optax.adam``.

Run: ``python -m benchmarks.backend_paths`` (about two minutes on one CPU
core); it writes ``backend_paths_<platform>.json`` to the scratch folder, or
to ``benchmarks/results/`` with ``--commit-results``.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import relax_optax
from benchmarks import _common


def _trees(total: int, leaves: int) -> dict[str, jax.Array]:
  n = total // leaves
  key = jax.random.key(0)
  return {f"p{i:03d}": jax.random.normal(jax.random.fold_in(key, i), (n,)) for i in range(leaves)}


def _optimizers(mode: str) -> dict[str, optax.GradientTransformation]:
  lr, c = 1e-3, 1e-2
  return {
    "adam": optax.adam(lr),
    "recipe": relax_optax.relativistic_adam(lr, c, mode=mode),
    "chain": optax.chain(
      optax.scale_by_adam(),
      optax.scale_by_learning_rate(lr),
      relax_optax.scale_by_relativistic(c, mode=mode),
    ),
  }


def _step_fn(tx: optax.GradientTransformation):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return jax.jit(step, donate_argnums=(0, 1))


def measure(total: int, leaves: int, mode: str, rounds: int, steps: int) -> dict:
  params = _trees(total, leaves)
  grads = jax.tree.map(lambda x: 0.01 * x + 1e-3, params)
  txs = _optimizers(mode)
  out: dict = {"parameters": total, "leaves": leaves, "mode": mode}
  fns, states, ps = {}, {}, {}
  for name, tx in txs.items():
    fns[name] = _step_fn(tx)
    ps[name] = jax.tree.map(jnp.copy, params)
    states[name] = tx.init(ps[name])
    hlo = fns[name].lower(ps[name], states[name], grads).compile().as_text()
    out[f"{name}_divides"] = len(re.findall(r"= \S+ divide\(", hlo))
  out["recipe_has_recompute"] = out["recipe_divides"] > out["chain_divides"]
  # Equality of the recipe and the chain over a few steps from the same start.
  a, b = jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, params)
  sa, sb = txs["recipe"].init(a), txs["chain"].init(b)
  worst = 0.0
  for _ in range(3):
    ua, sa = jax.jit(txs["recipe"].update)(grads, sa, a)
    ub, sb = jax.jit(txs["chain"].update)(grads, sb, b)
    for x, y in zip(jax.tree.leaves(ua), jax.tree.leaves(ub), strict=True):
      x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
      worst = max(worst, float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-30)))
  out["max_relative_difference"] = worst
  # Step times, interleaved rounds.
  times: dict[str, list[float]] = {name: [] for name in txs}
  for name in txs:  # warm-up
    ps[name], states[name] = fns[name](ps[name], states[name], grads)
  jax.block_until_ready((ps, states))
  for _ in range(rounds):
    for name in txs:
      t0 = time.perf_counter()
      for _ in range(steps):
        ps[name], states[name] = fns[name](ps[name], states[name], grads)
      jax.block_until_ready((ps[name], states[name]))
      times[name].append((time.perf_counter() - t0) / steps)
  for name in txs:
    out[f"{name}_ms"] = 1e3 * statistics.median(times[name])
  out["recipe_over_adam"] = out["recipe_ms"] / out["adam_ms"]
  out["chain_over_adam"] = out["chain_ms"] / out["adam_ms"]
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--parameters", type=int, default=10_000_000)
  parser.add_argument("--leaves", type=int, nargs="+", default=[4, 256])
  parser.add_argument("--modes", nargs="+", default=["global", "per_param"])
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--steps", type=int, default=10)
  platform = jax.devices()[0].platform
  _common.add_output_args(parser, f"backend_paths_{platform}")
  args = parser.parse_args()
  start = _common.run_start()
  rows = []
  print(f"backend: {platform} ({jax.devices()[0].device_kind}), jax {jax.__version__}")
  print("leaves  mode       recompute  max rel diff  adam ms  recipe/adam  chain/adam")
  for leaves in args.leaves:
    for mode in args.modes:
      r = measure(args.parameters, leaves, mode, args.rounds, args.steps)
      rows.append(r)
      print(
        f"{leaves:6d}  {mode:9s}  {r['recipe_has_recompute']!s:9s}"
        f"  {r['max_relative_difference']:12.1e}  {r['adam_ms']:7.3f}"
        f"  {r['recipe_over_adam']:11.2f}  {r['chain_over_adam']:10.2f}"
      )
  meta = {
    **_common.run_metadata(start),
    "device_kind": jax.devices()[0].device_kind,
    "command": "python -m benchmarks.backend_paths",
  }
  path = _common.output_path(args).with_suffix(".json")
  _common.write_json(path, {"meta": meta, "rows": rows}, indent=1)
  print(f"wrote {path}")
  recipes = [r["recipe_over_adam"] for r in rows]
  lo, hi = min(recipes), max(recipes)
  print(f"recipe / optax.adam at {args.parameters:.0e} parameters: {lo:.2f}-{hi:.2f}x")


if __name__ == "__main__":
  main()
