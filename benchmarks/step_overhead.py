"""Time of one optimizer step: ``relativistic_adam`` vs ``optax.adam``.

One step is ``tx.update`` plus ``optax.apply_updates``, jitted, with the
parameters and the optimizer state donated (updated in place), on pytrees of
1e4 to 1e7 float32 entries laid out as a few large leaves or as many small
ones. The variants are timed round-robin (every round times each variant on
the same pytree one after the other), so that a slow moment of a shared
machine hits them alike; each variant's time is the median over rounds and
each ratio is the median of the per-round ratios to ``optax.adam``.

Targets: ``per_component`` <= 1.05x ``optax.adam``; ``per_param``
and ``global`` <= 1.35x. A two-pass update must read the updates again after
their norm is known, so it cannot be a single fused pass like Adam's.

What decides the cost on XLA:CPU is memory passes and temporary buffers.
Adam's step compiles to three passes (first moment, second moment, update)
that read and write only the donated parameters and moments (0 bytes of
scratch). XLA never duplicates an "expensive" producer (Adam's division) into
two consumers, so when the update feeds both a norm and the parameter update,
as in ``optax.chain(scale_by_adam, scale_by_learning_rate,
scale_by_relativistic)`` (the rows ``chain:...``) or Adam followed by
``optax.clip_by_global_norm`` (the row ``adam+clip``), it is written to a
scratch buffer; above glibc's 32 MiB mmap threshold that buffer is returned
to the OS after every call and its pages are faulted in again on the next
(~3 ns per float32 entry here, more than Adam's whole step).
``relativistic_adam`` computes the same chain; on CPU, for leaves of at least
200,000 entries that hold 32 MiB or more together, it takes the norm from
Adam's update computed a second time from Adam's new moments behind an
``optimization_barrier``
(``relax_optax/_recipes.py``): one extra reduction pass over the two moments,
and Adam's update is never written. ``temp MB`` is each
compiled step's preallocated scratch.

With ``--torch PYTHON`` (an interpreter with torch and relativistic-adam
1.0.0), the original PyTorch ``RelativisticAdam`` and ``torch.optim.Adam`` are
timed on the same shapes in a subprocess and reported in ns per parameter.

Run (one core, as the headline numbers were measured)::

  taskset -c 0 python -m benchmarks.step_overhead
  taskset -c 0 python -m benchmarks.step_overhead --commit-results   # update the docs' data

Writes ``step_overhead.{json,png}`` under ``benchmarks/results/scratch/``, or with
``--commit-results`` under ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

# One thread: the numbers are per core, and a second XLA worker thread on a
# pinned core only adds context switches.
os.environ.setdefault(
  "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import jax
import jax.numpy as jnp
import numpy as np
import optax

import relax_optax
from benchmarks._common import (
  add_output_args,
  output_path,
  pyplot,
  run_metadata,
  run_start,
  write_json,
)

TARGETS = {"per_component": 1.05, "per_param": 1.35, "global": 1.35}


def layouts(total: int, many_leaves: int) -> dict[str, list[tuple[int, ...]]]:
  """Leaf shapes with about ``total`` entries: a few matrices, or many vectors."""
  cols = 1024 if total >= 4 * 1024 * 16 else 64
  rows = max(1, total // (4 * cols))
  few = [(rows, cols)] * 4
  n = max(1, total // many_leaves)
  many = [(n,)] * many_leaves
  return {"few_large": few, "many_small": many}


def make_tree(shapes, seed: int) -> dict[str, jax.Array]:
  key = jax.random.key(seed)
  return {
    f"p{i:04d}": jax.random.normal(jax.random.fold_in(key, i), s, jnp.float32)
    for i, s in enumerate(shapes)
  }


def optimizers(formulas: list[str]) -> dict[str, optax.GradientTransformation]:
  txs = {"adam": optax.adam(1e-3)}
  # Optax's own way of bounding a step by a global norm.
  txs["adam+clip"] = optax.chain(optax.adam(1e-3), optax.clip_by_global_norm(1.0))
  for mode in ("per_param", "global"):
    # The plain chain of Optax parts (what relativistic_adam computes, without the recompute).
    txs[f"chain:{mode}/lorentz"] = optax.chain(
      optax.scale_by_adam(),
      optax.scale_by_learning_rate(1e-3),
      relax_optax.scale_by_relativistic(0.1, mode=mode),
    )
  for mode in ("per_component", "per_param", "global"):
    for formula in formulas:
      txs[f"{mode}/{formula}"] = relax_optax.relativistic_adam(
        1e-3, speed_limit=0.1, mode=mode, formula=formula
      )
  return txs


def make_step(tx):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return jax.jit(step, donate_argnums=(0, 1))


def time_variants(txs, shapes, rounds: int, min_batch_s: float):
  """Seconds per step, shape (rounds,), for each variant, timed round-robin;
  and the size in bytes of each compiled step's temporary buffers."""
  grads = make_tree(shapes, 1)
  grads = jax.tree.map(lambda g: 1e-2 * g, grads)
  runs, temp_bytes = {}, {}
  for name, tx in txs.items():
    params = make_tree(shapes, 0)
    state = tx.init(params)
    step = make_step(tx).lower(params, state, grads).compile()
    temp_bytes[name] = int(step.memory_analysis().temp_size_in_bytes)
    params, state = step(params, state, grads)  # warm up
    jax.block_until_ready((params, state))
    runs[name] = [step, params, state]
  # Calls per timed batch, so that a batch lasts at least `min_batch_s`.
  step, params, state = runs["adam"]
  t0 = time.perf_counter()
  for _ in range(3):
    params, state = step(params, state, grads)
  jax.block_until_ready((params, state))
  runs["adam"][1:] = [params, state]
  per_call = (time.perf_counter() - t0) / 3
  calls = max(1, int(min_batch_s / max(per_call, 1e-7)))
  times = {name: np.empty(rounds) for name in txs}
  for r in range(rounds):
    for name, run in runs.items():
      step, params, state = run
      t0 = time.perf_counter()
      for _ in range(calls):
        params, state = step(params, state, grads)
      jax.block_until_ready((params, state))
      times[name][r] = (time.perf_counter() - t0) / calls
      run[1:] = [params, state]
  return times, temp_bytes


def torch_times(python: str, shapes, rounds: int) -> dict[str, float] | None:
  """ns/param of the original RelativisticAdam and torch.optim.Adam, one thread."""
  code = r"""
import json, sys, time, statistics, torch
from relativistic_adam import RelativisticAdam
torch.set_num_threads(1)
shapes, rounds = json.loads(sys.argv[1]), int(sys.argv[2])
n = sum(torch.Size(s).numel() for s in shapes)
out = {}
def make(kind):
  g = torch.Generator().manual_seed(0)
  ps = [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in shapes]
  for p in ps:
    p.grad = 1e-2 * torch.randn(*p.shape, generator=g)
  if kind == "adam":
    return torch.optim.Adam(ps, lr=1e-3)
  if kind == "adam_foreach":
    return torch.optim.Adam(ps, lr=1e-3, foreach=True)
  return RelativisticAdam(ps, lr=1e-3, speed_limit=0.1, relativistic_mode=kind)
kinds = ["adam", "adam_foreach", "per_component", "per_param", "global"]
opts = {k: make(k) for k in kinds}
for o in opts.values():
  o.step()
per = opts["adam"]
t0 = time.perf_counter(); per.step(); dt = time.perf_counter() - t0
calls = max(1, int(0.05 / max(dt, 1e-6)))
res = {k: [] for k in kinds}
for _ in range(rounds):
  for k, o in opts.items():
    t0 = time.perf_counter()
    for _ in range(calls):
      o.step()
    res[k].append((time.perf_counter() - t0) / calls / n * 1e9)
print(json.dumps({k: statistics.median(v) for k, v in res.items()}))
"""
  try:
    proc = subprocess.run(
      [python, "-c", code, json.dumps(shapes), str(rounds)],
      capture_output=True,
      text=True,
      timeout=1800,
      check=True,
    )
  except (OSError, subprocess.SubprocessError) as e:
    print(f"  (torch timing skipped: {e})", file=sys.stderr)
    return None
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e5, 1e6, 1e7])
  parser.add_argument(
    "--many-leaves", type=int, default=256, help="number of leaves of the many_small layout"
  )
  parser.add_argument("--formulas", nargs="+", default=list(relax_optax.FORMULAS))
  parser.add_argument("--rounds", type=int, default=25)
  parser.add_argument(
    "--min-batch-s",
    type=float,
    default=0.05,
    help="each timed batch of steps lasts at least this long",
  )
  parser.add_argument(
    "--torch",
    default=None,
    metavar="PYTHON",
    help="interpreter with torch + relativistic-adam for the original",
  )
  add_output_args(parser, "step_overhead")
  args = parser.parse_args(argv)

  start = run_start()
  txs = optimizers(args.formulas)
  names = [n for n in txs if n != "adam"]
  affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
  cpu = platform.processor() or platform.machine()
  print(
    f"jax {jax.__version__}, optax {optax.__version__}, {cpu}, CPU cores usable:"
    f" {affinity}; XLA_FLAGS={os.environ.get('XLA_FLAGS')!r}"
  )
  print(
    "The machine may be shared with other processes: times are medians over"
    f" {args.rounds} round-robin rounds, ratios medians of per-round ratios.\n"
  )
  rows = []
  for size in args.sizes:
    total = int(size)
    for layout, shapes in layouts(total, args.many_leaves).items():
      n = int(sum(np.prod(s) for s in shapes))
      times, temp_bytes = time_variants(txs, shapes, args.rounds, args.min_batch_s)
      adam = times["adam"]
      row = {
        "size": total,
        "entries": n,
        "layout": layout,
        "leaves": len(shapes),
        "adam_ms": float(np.median(adam) * 1e3),
        "adam_ns_per_param": float(np.median(adam) / n * 1e9),
      }
      for name in names:
        row[f"{name}_ms"] = float(np.median(times[name]) * 1e3)
        row[f"{name}_ratio"] = float(np.median(times[name] / adam))
        q25, q75 = np.percentile(times[name] / adam, [25, 75])
        row[f"{name}_ratio_iqr"] = [float(q25), float(q75)]
        row[f"{name}_temp_mb"] = temp_bytes[name] / 1e6
      if args.torch:
        tt = torch_times(args.torch, [list(s) for s in shapes], max(5, args.rounds // 3))
        if tt:
          row.update({f"torch_{k}_ns_per_param": v for k, v in tt.items()})
      rows.append(row)
      print_row(row, names, header=len(rows) == 1)
  summarise(rows, names, args, start)


def print_row(row, names, header: bool) -> None:
  if header:
    cols = "".join(f" {n.replace('per_component', 'per_comp'):>21s}" for n in names)
    print(f"{'entries':>9s} {'layout':>10s} {'leaves':>6s} {'adam ms':>9s} {'ns/param':>8s}{cols}")
  cells = "".join(f" {row[f'{n}_ratio']:>20.2f}x" for n in names)
  print(
    f"{row['entries']:>9.1e} {row['layout']:>10s} {row['leaves']:>6d}"
    f" {row['adam_ms']:>9.3f} {row['adam_ns_per_param']:>8.2f}{cells}",
    flush=True,
  )


def summarise(rows, names, args, start) -> None:
  largest = max(r["size"] for r in rows)
  print("\nRatio to optax.adam at the largest size (median of per-round ratios):")
  print(
    f"{'variant':>26s} {'few_large':>10s} {'many_small':>11s} {'target':>7s}  met"
    "  temp MB (XLA scratch per step; Adam: 0)"
  )
  worst = {}
  for name in names:
    mode = name.split("/")[0].removeprefix("chain:")
    vals = {r["layout"]: r[f"{name}_ratio"] for r in rows if r["size"] == largest}
    target = TARGETS.get(mode, float("nan"))  # adam+clip: a reference, no target
    met = all(v <= target for v in vals.values())
    if not name.startswith("chain:") and mode in TARGETS:
      worst[mode] = max(worst.get(mode, 0.0), *vals.values())
    temps = [r[f"{name}_temp_mb"] for r in rows if r["size"] == largest]
    print(
      f"{name:>26s} {vals.get('few_large', float('nan')):>9.2f}x"
      f" {vals.get('many_small', float('nan')):>10.2f}x {target:>6.2f}x"
      f"  {'yes' if met else 'NO ':<4s} {max(temps):>8.1f}"
    )
  torch_rows = [r for r in rows if "torch_adam_ns_per_param" in r]
  if torch_rows:
    print("\nOriginal relativistic-adam 1.0.0 (PyTorch, 1 thread) vs this library, ns/param:")
    print(
      f"{'entries':>9s} {'layout':>10s} {'torch Adam':>10s} {'torch per_param':>15s}"
      f" {'torch per_comp':>14s} {'optax adam':>10s} {'ours per_param':>14s}"
      f" {'ours per_comp':>13s}"
    )
    for r in torch_rows:
      n = r["entries"]
      print(
        f"{n:>9.1e} {r['layout']:>10s} {r['torch_adam_ns_per_param']:>10.2f}"
        f" {r['torch_per_param_ns_per_param']:>15.2f}"
        f" {r['torch_per_component_ns_per_param']:>14.2f}"
        f" {r['adam_ns_per_param']:>10.2f} {r['per_param/lorentz_ms'] / n * 1e6:>14.2f}"
        f" {r['per_component/lorentz_ms'] / n * 1e6:>13.2f}"
      )
  out = output_path(args)
  meta = {
    "xla_flags": os.environ.get("XLA_FLAGS"),
    "rounds": args.rounds,
    "targets": TARGETS,
    "cpu_affinity": sorted(os.sched_getaffinity(0)),
    "shared_scalars": shared_scalars(args.rounds),
  } | run_metadata(start)
  write_json(out.with_suffix(".json"), {"meta": meta, "rows": rows}, indent=1)
  plot(rows, names, out.with_suffix(".png"))
  headline = ", ".join(f"{m} {worst[m]:.2f}x (target {TARGETS[m]:.2f}x)" for m in TARGETS)
  print(f"\nWorst ratio to optax.adam at {largest:.0e} entries: {headline}")


def shared_scalars(rounds: int, leaves: int = 4, shape=(2500, 1000)) -> dict[str, float]:
  """What ``relax_optax._groups.isolate`` buys on XLA:CPU (printed and returned).

  The reduction ``relativistic_adam`` runs for its norms, one per leaf, over
  ``leaves`` leaves of one shape (1e7 entries): with its scalars shared by the
  leaves, XLA materialises their broadcasts as leaf-sized buffers read by
  every reduction; with each leaf's scalars behind its own barrier it does not.
  """
  isolate = jax.lax.optimization_barrier  # what relativistic_adam does per large leaf

  def make(isolated: bool):
    def f(ms, vs, k, e):
      out = []
      for m, v in zip(ms, vs, strict=True):
        kk, ee, bb = k, e, jnp.float32(2.0**40)
        if isolated:
          (kk, ee, bb), m, v = isolate(((kk, ee, bb), m, v))
        t = kk * m / (jnp.sqrt(v) + ee)
        out.append(jnp.sum(jnp.square(jnp.minimum(jnp.abs(t), bb))))
      return out

    return jax.jit(f)

  ms = [jnp.full(shape, i + 1.0) for i in range(leaves)]
  vs = [jnp.ones(shape)] * leaves
  args = (ms, vs, jnp.float32(3.0), jnp.float32(1e-8))
  fns = {"shared": make(False), "isolated": make(True)}
  out = {}
  for name, fn in fns.items():
    out[f"{name}_temp_mb"] = fn.lower(*args).compile().memory_analysis().temp_size_in_bytes / 1e6
    jax.block_until_ready(fn(*args))
  times = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append(time.perf_counter() - t0)
  for name in fns:
    out[f"{name}_ms"] = float(np.median(times[name]) * 1e3)
  print(
    f"\nShared scalars (the norms' reduction, {leaves} leaves of {shape}): shared"
    f" {out['shared_ms']:.2f} ms ({out['shared_temp_mb']:.0f} MB scratch), isolated per leaf"
    f" {out['isolated_ms']:.2f} ms ({out['isolated_temp_mb']:.0f} MB):"
    f" {out['shared_ms'] / out['isolated_ms']:.2f}x"
  )
  return out


def plot(rows, names, path: Path) -> None:
  plt = pyplot()

  fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
  for ax, layout in zip(axes, ("few_large", "many_small"), strict=True):
    rs = sorted((r for r in rows if r["layout"] == layout), key=lambda r: r["entries"])
    x = [r["entries"] for r in rs]
    for name in names:
      mode = name.split("/")[0]
      if mode.startswith("chain:"):
        continue  # The table has them; the plot shows what users run.
      style = {"per_component": "-", "per_param": "--", "global": ":", "adam+clip": "k-."}[mode]
      ax.plot(x, [r[f"{name}_ratio"] for r in rs], style, marker="o", label=name)
    for mode, t in TARGETS.items():
      ax.axhline(t, color="grey", lw=0.8, ls="-" if mode == "per_component" else "--")
    ax.set_xscale("log")
    ax.set_xlabel("entries in the parameter pytree")
    ax.set_title(f"{layout} ({rs[0]['leaves']} leaves)")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("step time / optax.adam step time")
  axes[1].legend(fontsize=7, ncol=1)
  fig.suptitle("relativistic_adam step overhead (jit, donated buffers, XLA:CPU, 1 core)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  print(f"wrote {path} and .json")


if __name__ == "__main__":
  main()
