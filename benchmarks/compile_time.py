"""Compile time of one optimizer step, against ``optax.adam`` and Adam + global-norm clipping.

One step is ``tx.update`` plus ``optax.apply_updates``, jitted with the
parameters and the state donated, on a transformer-shaped pytree: blocks of
four attention kernels (d x d), two LayerNorm scales (d), an MLP kernel
(d x 4d) with its bias (4d), a second kernel (4d x d) with its bias (d), ten
leaves a block, repeated up to the number of leaves asked for. The time is
``jit(...).lower(...)`` plus ``.compile()``, each optimizer in a fresh Python
process (so no cache is shared), the median over ``--repeats`` processes. The
optimized HLO's instruction count (the instructions of every computation,
fusions included) is reported too: compile time follows it.

Rows:

- ``adam``: ``optax.adam``; ``adam+clip``: ``optax.chain(optax.adam,
  optax.clip_by_global_norm)``, Optax's own way of taking a global norm (the
  target for ``global`` and ``per_param``; ``per_component`` should stay
  within 1.5x ``adam``).
- ``radam:MODE:FORMULA``: ``relax_optax.relativistic_adam``.
- ``chain:MODE:FORMULA``: ``optax.chain(optax.adam, relax_optax.scale_by_relativistic)``.

Run (on a quiet machine; the README says under what load its table was taken)::

  python -m benchmarks.compile_time                  # 10, 100, 500, 2000 leaves
  python -m benchmarks.compile_time --quick          # 10 and 100 leaves, lorentz only

Writes ``compile_time.{json,png}`` under ``benchmarks/results/scratch/``, or with
``--commit-results`` under ``benchmarks/results/`` (what the documentation shows).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._common import add_output_args, output_path, run_metadata, run_start, write_json

MODES = ("global", "per_param", "per_component")
FORMULAS = ("lorentz", "tanh", "reference")


def leaf_shapes(n_leaves: int, d: int = 64) -> list[tuple[int, ...]]:
  """Transformer-shaped leaves: ten per block (attention, LayerNorm, MLP)."""
  block = [(d, d)] * 4 + [(d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
  return [block[i % len(block)] for i in range(n_leaves)]


def make_optimizer(name: str):
  """The optimizer named by a row of the table."""
  import optax

  import relax_optax

  if name == "adam":
    return optax.adam(1e-3)
  if name == "adam+clip":
    return optax.chain(optax.adam(1e-3), optax.clip_by_global_norm(1.0))
  kind, mode, formula = name.split(":")
  if kind == "radam":
    return relax_optax.relativistic_adam(1e-3, speed_limit=0.1, mode=mode, formula=formula)
  if kind == "chain":
    return optax.chain(
      optax.adam(1e-3), relax_optax.scale_by_relativistic(0.1, mode=mode, formula=formula)
    )
  raise ValueError(f"unknown optimizer {name!r}")


def hlo_instructions(hlo_text: str) -> int:
  """The number of instructions in an HLO module's text (fusion bodies included)."""
  return sum(
    1 for line in hlo_text.splitlines() if line.startswith("  ") and " = " in line.split("{")[0]
  )


def compile_once(name: str, n_leaves: int) -> dict[str, float]:
  """Lowers and compiles one step in this process; returns the times and HLO size."""
  import jax
  import jax.numpy as jnp
  import optax

  tx = make_optimizer(name)
  params = {f"p{i:04d}": jnp.zeros(s, jnp.float32) for i, s in enumerate(leaf_shapes(n_leaves))}
  state = tx.init(params)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  t0 = time.perf_counter()
  lowered = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  return {
    "lower_s": t1 - t0,
    "compile_s": t2 - t1,
    "total_s": t2 - t0,
    "hlo_instructions": hlo_instructions(compiled.as_text()),
  }


def measure(name: str, n_leaves: int, repeats: int) -> dict[str, float]:
  """The median of ``repeats`` fresh processes' :func:`compile_once`."""
  runs = []
  for _ in range(repeats):
    out = subprocess.run(
      [sys.executable, "-m", "benchmarks.compile_time", "--worker", name, str(n_leaves)],
      capture_output=True,
      text=True,
      check=True,
      cwd=Path(__file__).resolve().parents[1],
    )
    runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
  return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def plot(rows: list[dict], names: list[str], path: Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for name in names:
    points = sorted((r["leaves"], r["total_s"]) for r in rows if r["name"] == name)
    style = {"adam": "k-", "adam+clip": "k--"}.get(name, "-")
    ax.plot(
      *zip(*points, strict=True),
      style,
      marker="o",
      ms=3,
      label=name,
      lw=1.5 if name in ("adam", "adam+clip") else 1,
    )
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("leaves (transformer-shaped)")
  ax.set_ylabel("lower + compile (s)")
  ax.set_title("Compile time of one step (fresh process, median)")
  ax.legend(fontsize=6, ncol=2)
  ax.grid(True, which="both", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--worker", nargs=2, metavar=("NAME", "LEAVES"), help=argparse.SUPPRESS)
  parser.add_argument("--leaves", type=int, nargs="+", default=[10, 100, 500, 2000])
  parser.add_argument("--formulas", nargs="+", default=list(FORMULAS))
  parser.add_argument("--kinds", nargs="+", default=["radam", "chain"])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--quick", action="store_true", help="10 and 100 leaves, lorentz, 1 repeat")
  add_output_args(parser, "compile_time")
  args = parser.parse_args(argv)
  if args.worker:
    print(json.dumps(compile_once(args.worker[0], int(args.worker[1]))))
    return
  if args.quick:
    args.leaves, args.formulas, args.repeats = [10, 100], ["lorentz"], 1

  from tqdm import tqdm

  start = run_start()
  names = ["adam", "adam+clip"] + [
    f"{kind}:{mode}:{formula}" for kind in args.kinds for mode in MODES for formula in args.formulas
  ]
  rows = []
  jobs = [(n, name) for n in args.leaves for name in names]
  for n, name in tqdm(jobs, desc="compiling"):
    rows.append({"name": name, "leaves": n, **measure(name, n, args.repeats)})

  print(f"\nlower + compile, seconds (median of {args.repeats} fresh processes)")
  header = f"{'optimizer':34s}" + "".join(f"{n:>10d}" for n in args.leaves)
  print(header + "   x adam+clip at " + str(args.leaves[-1]))
  by = {(r["name"], r["leaves"]): r for r in rows}
  for name in names:
    ratio = by[(name, args.leaves[-1])]["total_s"] / by[("adam+clip", args.leaves[-1])]["total_s"]
    cells = "".join(f"{by[(name, n)]['total_s']:10.2f}" for n in args.leaves)
    print(f"{name:34s}{cells}{ratio:10.2f}")
  print("\nHLO instructions per leaf (optimized module / leaves)")
  for name in names:
    cells = "".join(f"{by[(name, n)]['hlo_instructions'] / n:10.1f}" for n in args.leaves)
    print(f"{name:34s}{cells}")
  big = args.leaves[-1]
  clip = by[("adam+clip", big)]["total_s"]
  adam = by[("adam", big)]["total_s"]
  group = max(by[(n, big)]["total_s"] for n in names if ":per_component:" not in n and ":" in n)
  comp = max(by[(n, big)]["total_s"] for n in names if ":per_component:" in n)
  print(
    f"\nheadline at {big} leaves: slowest global/per_param {group / clip:.2f}x adam+clip"
    f" (target <= 1); slowest per_component {comp / adam:.2f}x adam (target <= 1.5)"
  )
  out = output_path(args)
  meta = {"leaves": args.leaves, "repeats": args.repeats} | run_metadata(start)
  write_json(out.with_suffix(".json"), {"meta": meta, "rows": rows}, indent=1)
  plot(rows, names, out.with_suffix(".png"))
  print(f"wrote {out.with_suffix('.json')} and .png")


if __name__ == "__main__":
  main()
