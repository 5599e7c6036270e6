"""Microseconds per training step: examples/circuits.py vs the notebook's PyTorch loop.

Both run on ONE CPU core (the process pins itself, and its PyTorch subprocess, to one
core; XLA and PyTorch are told to use one thread), side by side in the same run and
interleaved task by task, so that load from other processes hits both alike:

    python -m benchmarks.circuits_speed --torch-python /path/to/python-with-torch

* ``pytorch``: the notebook's ``train`` loop verbatim (``torch.rand`` batch, forward,
  ``nn.MSELoss``, ``zero_grad``, ``backward``, ``SGD.step``), without its printing.
* ``jax naive``: the textbook NNX step, ``nnx.Linear`` layers (``x @ W``) and one
  ``@nnx.jit`` call per step (``nnx.Optimizer.update``), batch drawn per step.
* ``jax scan, dot``: the compiled chunked loop of examples/circuits.py, but with
  ``x @ W`` layers in the usual batch-major layout (what a naive port compiles to).
* ``ours``: examples/circuits.py as shipped.

With no PyTorch (neither importable nor ``--torch-python``) the table uses the figure
recorded in ``RECORDED_PYTORCH_US`` and says so. Each figure is the median over
``--repeats`` timed runs of wall time per step (and of CPU time per step: the process's
own CPU seconds, which other processes on the core do not inflate). Writes
``circuits_speed.{json,png}`` under ``benchmarks/results/scratch/``, or with
``--commit-results`` under ``benchmarks/results/`` (what the documentation shows).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
TASK_SIZES = {
  "identity": (1, 2, 1),
  "negation": (1, 2, 1),
  "abs": (1, 2, 1),
  "add": (2, 2, 1),
  "sub": (2, 2, 1),
  "min": (2, 3, 2, 1),
}
# Measured with this script's PyTorch worker (torch 2.13.0 CPU, one thread, one core
# of the 2-core development machine, shared with other jobs): the medians in
# results/circuits_speed.json, wall (CPU) us/step; used only without PyTorch. The load
# slowed PyTorch more than ours: on the same machine with nothing else running, min
# took 150 us per step in PyTorch against 8.7 us for ours (17x, not 33x).
RECORDED_PYTORCH_US = {
  "identity": (114.8, 113.3),
  "negation": (113.1, 113.1),
  "abs": (123.2, 123.1),
  "add": (162.3, 133.2),
  "sub": (271.4, 149.4),
  "min": (360.5, 203.8),
}

# ----------------------------------------------------------------------------- PyTorch

TORCH_TARGETS = {
  "identity": "Xs",
  "negation": "Xs * -1",
  "abs": "torch.abs(Xs)",
  "add": "Xs.sum(dim=1, keepdims=True)",
  "sub": "(Xs[:, 0] - Xs[:, 1]).unsqueeze(1)",
  "min": "Xs.min(dim=1, keepdims=True).values",
}


def torch_worker(task: str, steps: int, repeats: int) -> None:
  """The notebook's loop for one task; prints JSON with per-repeat us/step."""
  import torch
  from torch import nn

  torch.set_num_threads(1)
  torch.manual_seed(0)
  sizes = TASK_SIZES[task]
  layers = []
  for i in range(len(sizes) - 1):
    layers.append(nn.Linear(sizes[i], sizes[i + 1], bias=False))
    if i < len(sizes) - 2:
      layers.append(nn.ReLU())
  model = nn.Sequential(*layers)
  loss_fn = nn.MSELoss()
  optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
  get_ys = eval("lambda Xs: " + TORCH_TARGETS[task], {"torch": torch})

  def run(n):
    for _ in range(n):
      model.train()
      train_x = torch.rand((1000, sizes[0])) * 2 - 1
      train_y = get_ys(train_x)
      loss = loss_fn(model(train_x), train_y)
      optimizer.zero_grad()
      loss.backward()
      optimizer.step()

  run(min(steps, 500))  # warm-up
  wall, cpu = [], []
  for _ in range(repeats):
    t, c = time.perf_counter(), time.process_time()
    run(steps)
    wall.append((time.perf_counter() - t) / steps * 1e6)
    cpu.append((time.process_time() - c) / steps * 1e6)
  print(json.dumps({"wall": wall, "cpu": cpu, "torch": torch.__version__}))


def run_torch(python: str, task: str, steps: int, repeats: int) -> dict | None:
  # The worker imports nothing but the standard library and torch.
  out = subprocess.run(
    [
      python,
      "-m",
      "benchmarks.circuits_speed",
      "--torch-worker",
      task,
      "--torch-steps",
      str(steps),
      "--repeats",
      str(repeats),
    ],
    capture_output=True,
    text=True,
    check=True,
    cwd=ROOT,
  )
  return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- JAX


def jax_variants(task_name: str, steps: int):
  """{name: callable running ``steps`` steps and blocking}; compiled before returning."""
  import jax
  import jax.numpy as jnp
  import optax
  from flax import nnx
  from jax import lax

  from examples import circuits

  task = circuits.TASKS[task_name]
  tx = optax.sgd(1e-4)
  data_key, test_key = jax.random.split(jax.random.key(0))
  test_x, test_y = circuits.test_set(task, test_key)
  variants = {}

  # ours: examples/circuits.py's block, as ``train`` runs it for one seed.
  model = circuits.make_model(task, "notebook")
  graphdef, params = nnx.split(model)
  block = jax.jit(circuits.make_block(graphdef, task, tx, steps, 1000))
  state = [params, tx.init(params)]

  def ours():
    p, s, m = block(*state, data_key, jnp.int32(0), test_x, test_y)
    jax.block_until_ready((p, s, m))

  # naive: nnx.Linear (x @ W, batch-major) and one @nnx.jit call per step.
  class DotCircuit(nnx.Module):
    def __init__(self, sizes, rngs):
      self.layers = nnx.List(
        [nnx.Linear(a, b, use_bias=False, rngs=rngs) for a, b in itertools.pairwise(sizes)]
      )

    def __call__(self, x):
      for layer in self.layers[:-1]:
        x = jax.nn.relu(layer(x))
      return self.layers[-1](x)

  def batch_major_target(x):
    return task.target(x.T).T

  dmodel = DotCircuit(task.sizes, nnx.Rngs(0))
  optimizer = nnx.Optimizer(dmodel, tx, wrt=nnx.Param)

  @nnx.jit
  def naive_step(model, optimizer, key):
    x = jax.random.uniform(key, (1000, task.sizes[0]), minval=-1.0, maxval=1.0)

    def loss_fn(model):
      return jnp.mean((model(x) - batch_major_target(x)) ** 2)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  naive_keys = list(jax.random.split(data_key, 64))

  def naive(n=steps):
    for i in range(n):
      loss = naive_step(dmodel, optimizer, naive_keys[i % 64])
    jax.block_until_ready(loss)

  # scan, dot: the same compiled loop but with x @ W on batch-major (B, K) batches.
  dgraph, dparams = nnx.split(dmodel)

  def dstep(carry, key):
    p, s = carry
    x = jax.random.uniform(key, (1000, task.sizes[0]), minval=-1.0, maxval=1.0)
    g = jax.grad(lambda p: jnp.mean((nnx.merge(dgraph, p)(x) - batch_major_target(x)) ** 2))(p)
    u, s = tx.update(g, s, p)
    return (optax.apply_updates(p, u), s), None

  dscan = jax.jit(lambda p, s, k: lax.scan(dstep, (p, s), jax.random.split(k, steps))[0])
  dstate = [dparams, tx.init(dparams)]

  def scan_dot():
    jax.block_until_ready(dscan(*dstate, data_key))

  variants = {"ours": (ours, steps), "jax scan, dot": (scan_dot, steps), "jax naive": (naive, None)}
  ours()
  scan_dot()
  naive(200)
  return variants


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--tasks", nargs="+", default=list(TASK_SIZES))
  p.add_argument("--steps", type=int, default=30_000, help="steps per timed JAX run")
  p.add_argument("--torch-steps", type=int, default=2_000)
  p.add_argument("--naive-steps", type=int, default=2_000)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument(
    "--torch-python",
    default=None,
    help="a Python with torch installed, to run the PyTorch loop with "
    "(default: this one, if it can import torch)",
  )
  p.add_argument("--core", type=int, default=0, help="the CPU core to pin to")
  p.add_argument("--torch-worker", default=None, help=argparse.SUPPRESS)
  args, _ = p.parse_known_args(argv)

  if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {args.core})  # inherited by the PyTorch subprocess
  if args.torch_worker:
    torch_worker(args.torch_worker, args.torch_steps, args.repeats)
    return
  # Only now the JAX side: the worker above runs where only torch is installed.
  from benchmarks._common import (
    add_output_args,
    output_path,
    pyplot,
    run_metadata,
    run_start,
    us_per_step,
    write_json,
  )

  add_output_args(p, "circuits_speed")
  args = p.parse_args(argv)
  start = run_start()
  # Single-threaded Eigen for XLA:CPU, set before JAX starts (the affinity above
  # already keeps every thread of the process on one core).
  os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
  torch_python = args.torch_python
  if torch_python is None:
    try:
      import torch  # noqa: F401

      torch_python = sys.executable
    except ImportError:
      torch_python = None
  import jax

  device = jax.devices()[0]
  print(
    f"XLA device: {device.platform.upper()} ({device}); pinned to core {args.core}; "
    f"PyTorch: {torch_python or 'not available, using the recorded figures'}"
  )

  rows = {}
  for task in args.tasks:
    variants = jax_variants(task, args.steps)
    res = {}
    if torch_python:
      res["pytorch"] = run_torch(torch_python, task, args.torch_steps, args.repeats)
    else:
      wall, cpu = RECORDED_PYTORCH_US[task]
      res["pytorch"] = {"wall": [wall], "cpu": [cpu], "recorded": True}
    for name, (fn, n) in variants.items():
      if n is None:
        res[name] = us_per_step(lambda fn=fn: fn(args.naive_steps), args.naive_steps, args.repeats)
      else:
        res[name] = us_per_step(fn, n, args.repeats)
    med = {k: {m: statistics.median(v[m]) for m in ("wall", "cpu")} for k, v in res.items()}
    rows[task] = {"runs": res, "median": med}
    print(f"  {task}: " + ", ".join(f"{k} {v['wall']:.1f}" for k, v in med.items()), flush=True)

  names = ["pytorch", "jax naive", "jax scan, dot", "ours"]
  print(f"\nus/step on one CPU core (median of {args.repeats}; wall, CPU time in brackets)")
  print("| task | " + " | ".join(names) + " | ours vs PyTorch (wall) | (CPU) |")
  print("| --- |" + " ---: |" * (len(names) + 2))
  ratios_wall, ratios_cpu = [], []
  for task, r in rows.items():
    med = r["median"]
    rw = med["pytorch"]["wall"] / med["ours"]["wall"]
    rc = med["pytorch"]["cpu"] / med["ours"]["cpu"]
    ratios_wall.append(rw)
    ratios_cpu.append(rc)
    r["ratio_wall"], r["ratio_cpu"] = rw, rc
    cells = [f"{med[n]['wall']:.1f} ({med[n]['cpu']:.1f})" for n in names]
    print(f"| {task} | " + " | ".join(cells) + f" | {rw:.1f}x | {rc:.1f}x |")
  recorded = " (PyTorch: recorded figure, not measured here)" * (torch_python is None)
  print(
    f"\nheadline: ours takes >= {min(ratios_wall):.1f}x fewer us/step than the "
    f"notebook's PyTorch loop on every task (wall; CPU time: >= "
    f"{min(ratios_cpu):.1f}x){recorded}"
  )

  out = output_path(args)
  write_json(
    out.with_suffix(".json"),
    {
      "device": str(device),
      "core": args.core,
      "steps": args.steps,
      "torch_steps": args.torch_steps,
      "repeats": args.repeats,
      "torch_python": torch_python,
      "tasks": rows,
      "run": run_metadata(start),
    },
    indent=1,
  )
  import numpy as np

  plt = pyplot()

  fig, ax = plt.subplots(figsize=(8, 3.8))
  x = np.arange(len(rows))
  for i, n in enumerate(names):
    ax.bar(x + (i - 1.5) * 0.2, [r["median"][n]["wall"] for r in rows.values()], 0.2, label=n)
  ax.set_yscale("log")
  ax.set_xticks(x, list(rows))
  ax.set_ylabel("us / step (one core, wall, median)")
  ax.set_title("Mathematical circuits: one SGD step, batch 1000")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out.with_suffix(".png"), dpi=110)
  plt.close(fig)
  print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
  main()
