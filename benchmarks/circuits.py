"""The circuits experiments of the docs: seed sweeps, notebook comparison, plots, JSON.

The harness around ``examples/circuits.py`` (which holds the Flax NNX model and its
training loop): trains one or more tasks with ``--seeds N`` independent PyTorch-style
initialisations at once (``vmap``), prints a summary table, and writes the curves as
JSON and a plot. Run from the repository root::

  # the notebook comparison (one seed, the notebook's initial weights)
  python -m benchmarks.circuits --plot docs/circuits_notebook_init.png \
      --json benchmarks/results/circuits_notebook_init.json
  # 64 random initialisations per task
  python -m benchmarks.circuits --seeds 64 --steps 300000 --optimizer adam \
      --plot benchmarks/results/circuits_seeds64_adam.png \
      --json benchmarks/results/circuits_seeds64_adam.json
  # overlay earlier runs
  python -m benchmarks.circuits --plot-json benchmarks/results/circuits_min_nb_*.json \
      --plot docs/circuits_min_notebook_init.png

It writes only the files named by ``--json`` and ``--plot`` (``--plot-json`` without
``--plot``: ``benchmarks/results/scratch/circuits.png``).
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
from tqdm import tqdm

from benchmarks._common import SCRATCH, pyplot, run_metadata, run_start, steps_axis, write_json
from examples import circuits
from examples.circuits import NOTEBOOK, NOTEBOOK_LOG_EVERY, SUCCESS_MSE, TASKS, Result


def plot_curves(results: list[Result], path: str, init: str) -> None:
  """Test MSE against step, one panel per task, with the notebook's prints."""
  plt = pyplot()
  n = len(results)
  cols = min(n, 3)
  rows = math.ceil(n / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
  for ax, r in zip(axes.flat, results, strict=False):
    task = TASKS[r.task]
    for curve in r.test_mse:
      ax.semilogy(r.steps, curve, color="C0", alpha=1.0 if len(r.test_mse) == 1 else 0.3)
    ax.plot([], [], color="C0", label="ours (JAX/Flax)")
    if init == "notebook":
      losses = NOTEBOOK[task.name].losses
      ax.semilogy(
        NOTEBOOK_LOG_EVERY * np.arange(len(losses)), losses, "k.", ms=5, label="notebook (PyTorch)"
      )
    ax.axhline(SUCCESS_MSE, color="gray", lw=0.8, ls=":")
    ax.set_title(f"{task.name}: {task.formula}, {task.sizes}")
    steps_axis(ax)
    ax.set_xlabel("step")
    ax.set_ylabel("test MSE")
    ax.legend(fontsize=8)
  for ax in list(axes.flat)[n:]:
    ax.set_visible(False)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_seeds(results: list[Result], path: str, label: str) -> None:
  """The final test MSE of every seed, one column per task."""
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(1.4 * len(results) + 2, 3.6))
  for i, r in enumerate(results):
    final = r.test_mse[:, -1]
    jitter = np.random.default_rng(0).uniform(-0.2, 0.2, len(final))
    ax.scatter(i + jitter, np.maximum(final, 1e-12), s=10, alpha=0.6)
    ax.text(i, 3.0, f"{np.mean(final < SUCCESS_MSE):.0%}", ha="center", fontsize=9)
  ax.set_yscale("log")
  ax.axhline(SUCCESS_MSE, color="gray", lw=0.8, ls=":")
  ax.set_xticks(range(len(results)), [r.task for r in results])
  ax.set_ylabel("final test MSE per seed\n(below 1e-12 drawn at 1e-12)")
  ax.set_ylim(top=10)
  ax.set_title(f"{label}: {len(results[0].test_mse)} seeds (% below {SUCCESS_MSE:g})")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def run_label(d: dict) -> str:
  """A legend label for a run from its JSON: optimizer, lr and (if any) speed limit."""
  label = f"{d['optimizer']} lr {d['lr']:g}"
  if d["optimizer"] == "relativistic_adam":
    label += f", c {d['speed_limit']:g}" + (f", {d['mode']}" if d["mode"] != "per_param" else "")
  return label


def plot_from_json(paths: list[str], out: str) -> None:
  """One panel per task: the test-MSE curves of earlier ``--json`` runs, overlaid."""
  plt = pyplot()
  runs = []
  for path in paths:
    with open(path) as f:
      runs.append(json.load(f))
  names = [n for n in TASKS if any(n in d["tasks"] for d in runs)]
  fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4), squeeze=False)
  for ax, name in zip(axes.flat, names, strict=True):
    task = TASKS[name]
    if any(d["init"] == "notebook" for d in runs):
      losses = NOTEBOOK[name].losses
      ax.semilogy(
        NOTEBOOK_LOG_EVERY * np.arange(len(losses)),
        losses,
        "k.",
        ms=4,
        label="notebook (PyTorch, SGD lr 1e-4)",
      )
    for i, d in enumerate(runs):
      if name in d["tasks"]:
        r = d["tasks"][name]
        curves = np.maximum(np.asarray(r["test_mse"]), 1e-14)
        for j, curve in enumerate(curves):
          ax.semilogy(
            r["steps"],
            curve,
            color=f"C{i}",
            alpha=1.0 if len(curves) == 1 else 0.3,
            label=run_label(d) if j == 0 else None,
          )
    ax.axhline(SUCCESS_MSE, color="gray", lw=0.8, ls=":")
    ax.set_title(f"{task.name}: {task.formula}, {task.sizes}, init {runs[0]['init']}")
    steps_axis(ax)
    ax.set_xlabel("step")
    ax.set_ylabel("test MSE (below 1e-14 drawn at 1e-14)")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)


def main(argv: list[str] | None = None) -> list[Result]:
  args = parse_args(argv)
  if args.plot_json:
    out = args.plot or str(SCRATCH / "circuits.png")
    SCRATCH.mkdir(parents=True, exist_ok=True)
    plot_from_json(args.plot_json, out)
    print(f"wrote {out}")
    return []
  start = run_start()
  init = args.init or ("notebook" if args.seeds == 1 else "random")
  if init == "notebook" and args.seeds > 1:
    raise SystemExit("--init notebook gives one initialisation; use --seeds 1")
  device = circuits.setup_device(args.platform, not args.no_pin)
  names = list(TASKS) if "all" in args.task else args.task
  tx = circuits.make_optimizer(args.optimizer, args.lr, args.speed_limit, args.mode)
  lr = circuits.DEFAULT_LR[args.optimizer] if args.lr is None else args.lr
  extra = f", speed_limit {args.speed_limit}, mode {args.mode}" * (
    args.optimizer == "relativistic_adam"
  )
  print(
    f"optimizer {args.optimizer} lr {lr:g}{extra}; batch {args.batch_size}; "
    f"init {init}; seeds {args.seeds}"
  )
  results = []
  total = sum(args.steps or TASKS[n].steps for n in names)
  with tqdm(total=total, unit="step", unit_scale=True, dynamic_ncols=True) as bar:
    for name in names:
      task = TASKS[name]
      steps = args.steps or task.steps
      if init == "notebook":
        models = [circuits.make_model(task, "notebook")]
      else:
        models = [circuits.make_model(task, "random", args.seed + s) for s in range(args.seeds)]
      data_key, test_key = circuits.task_keys(task, args.seed)
      bar.set_description(name)
      r = circuits.train(
        models,
        task,
        tx,
        steps,
        data_key=data_key,
        test_key=test_key,
        batch_size=args.batch_size,
        log_every=args.log_every,
        progress=bar.update,
      )
      results.append(r)
      final = r.test_mse[:, -1]
      bar.write(
        f"  {name}: {np.mean(final < SUCCESS_MSE):.0%} of {len(final)} reach test "
        f"MSE < {SUCCESS_MSE:g}; median {np.median(final):.3g}; wall {r.seconds:.1f} s"
      )

  print(
    f"\n| task | steps | success (test MSE < {SUCCESS_MSE:g}) | median final test MSE | wall s |"
  )
  print("| --- | ---: | ---: | ---: | ---: |")
  for r in results:
    final = r.test_mse[:, -1]
    print(
      f"| {r.task} | {r.steps[-1]:,} | {np.mean(final < SUCCESS_MSE):.0%} "
      f"({np.sum(final < SUCCESS_MSE)}/{len(final)}) | {np.median(final):.3g} "
      f"| {r.seconds:.1f} |"
    )
  print(f"total wall time {sum(r.seconds for r in results):.1f} s")

  if args.plot:
    if args.seeds > 1:
      plot_seeds(results, args.plot, f"{args.optimizer} lr {lr:g}{extra}")
    else:
      plot_curves(results, args.plot, init)
    print(f"wrote {args.plot}")
  if args.json:
    write_json(
      args.json,
      {
        "device": str(device),
        "optimizer": args.optimizer,
        "lr": lr,
        "speed_limit": args.speed_limit,
        "mode": args.mode,
        "init": init,
        "seeds": args.seeds,
        "batch_size": args.batch_size,
        "tasks": {
          r.task: {
            "steps": r.steps,
            "test_mse": r.test_mse.tolist(),
            "kernels": [k.tolist() for k in r.kernels],
            "seconds": r.seconds,
          }
          for r in results
        },
        "run": run_metadata(start),
      },
    )
    print(f"wrote {args.json}")
  return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
  )
  circuits.add_training_args(p)
  p.add_argument(
    "--seeds", type=int, default=1, help="train N independent initialisations at once (vmap)"
  )
  p.add_argument(
    "--init",
    choices=["notebook", "random"],
    default=None,
    help="notebook: the weights the notebook printed; random: PyTorch's "
    "nn.Linear default (default: notebook for one seed, else random)",
  )
  p.add_argument(
    "--plot",
    default=None,
    help="write loss curves (or, with --seeds, the distribution of final losses) to this PNG",
  )
  p.add_argument("--json", default=None, help="write the results to this JSON file")
  p.add_argument(
    "--plot-json",
    nargs="+",
    default=None,
    metavar="JSON",
    help="train nothing: overlay the curves of earlier --json runs in --plot",
  )
  return p.parse_args(argv)


if __name__ == "__main__":
  main()
