"""The renaming test of ``per_component.py``, stated before the runs, and its tables and plot.

Every arm is read on the sweep that sets its step size: the learning rate for the
uncapped arms (AdamW, AdamW + qk-layernorm, Adam-atan2, Lion), the cap c at lr = 1 for
the capped ones (``per_component`` lorentz and tanh, AdamW + ``optax.clip``, ``global``).
The c grid is the LR grid divided by 10, so both sweeps cover the same per-entry steps
and the sensitivities (``benchmarks._common.lr_sensitivity``) are comparable.

The test, per size (width 64, 128, 192, and width 128 trained twice as long):

1. **Stabiliser**: ``per_component``'s sensitivity in c is below AdamW's sensitivity in
   the learning rate, in every seed (seeds are paired: same initialisation, same
   batches), at every size.
2. **Renaming**: the best c (per seed, the grid point of lowest final validation loss)
   moves across sizes as AdamW's best learning rate does: the offset
   ``log10(10·c_best / lr_best)``, in grid steps, stays the same.
3. **Its twin**: of the elementwise twins (``adamw+clip``, ``adam_atan2``, ``lion``), the
   arm with the same best step (lr, or 10·c) as ``per_component`` in
   the most seeds and, among those, the closest sensitivity (mean absolute difference
   over paired seeds); if the hard elementwise cap (``adamw+clip``) matches it, the soft
   cap is a hard cap by another name.

Reported with it: the best validation loss (per seed the lowest over the sweep and its
evaluations; mean over seeds) and the largest attention logit over training, at each
seed's best grid point and at the top of the grid (the largest lr, or the largest c at
lr = 1), median over seeds.

``python -m benchmarks.lm_stability.renaming RESULTS.json [--replot]`` prints the tables
(and redraws the plot next to the JSON).
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

SUBJECT, REFERENCE = "relativistic per_component", "adamw"
TWINS = ("adamw+clip", "adam_atan2", "lion")  # bounded entry by entry, not by this library


def sweep(r: dict) -> tuple[str, dict, list[float]]:
  """The sweep that sets an arm's step size: ("c", c_sweep, c sensitivity) for a capped
  arm, else ("lr", lr_sweep, LR sensitivity)."""
  if "c_sweep" in r:
    return "c", r["c_sweep"], r["c_sensitivity"]
  return "lr", r["lr_sweep"], r["lr_sensitivity"]


def arm_summary(res: dict, name: str) -> dict:
  """Per-seed sensitivity, best grid point and best loss, and the largest logit, of one
  arm of one part."""
  kind, s, sens = sweep(res["arms"][name])
  grid = np.asarray(res["c_entry"] if kind == "c" else res["lrs"], float)
  final = np.asarray(s["final_val"], float)  # (points, seeds)
  best_idx = np.argmin(np.where(np.isfinite(final), final, np.inf), 0)
  logits = np.asarray(s["max_attn_logit"], float)  # (points, seeds); NaN: diverged
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    best = np.nanmin(np.asarray(s["best_val"], float), 0)
  # Per-entry step: the LR, or 10·c (the c grid is the LR grid / 10).
  step = grid * (10.0 if kind == "c" else 1.0)
  return {
    "kind": kind,
    "sensitivity": np.asarray(sens, float),
    "best_step": step[best_idx],
    "best_loss": best,
    "logit_at_best": float(np.median(logits[best_idx, np.arange(logits.shape[1])])),
    "logit_at_top": float(np.median(logits[-1])),
  }


def renaming_test(data: dict) -> dict:
  """The three questions of the module doc, per part, from a study's results."""
  rows = []
  for res in data["results"]:
    arms = {name: arm_summary(res, name) for name in res["arms"]}
    subject, ref = arms[SUBJECT], arms[REFERENCE]
    offset = np.log10(subject["best_step"] / ref["best_step"]) / np.log10(3.0)  # ~grid steps
    twins = {}
    for name, a in arms.items():
      if name not in TWINS:
        continue
      same = np.isclose(a["best_step"], subject["best_step"])
      twins[name] = {
        "sensitivity_gap": float(np.mean(np.abs(a["sensitivity"] - subject["sensitivity"]))),
        "best_loss_gap": float(np.mean(a["best_loss"]) - np.mean(subject["best_loss"])),
        "same_best_step": bool(np.all(same)),
        "other_best_step_seeds": int(np.sum(~same)),
      }
    rows.append(
      {
        "part": res.get("part", res["domain"]),
        "n_params": res["info"]["n_params"],
        "stabiliser": bool(np.all(subject["sensitivity"] < ref["sensitivity"])),
        "subject_sensitivity": subject["sensitivity"].tolist(),
        "reference_sensitivity": ref["sensitivity"].tolist(),
        "best_c_entry": (subject["best_step"] / 10).tolist(),
        "best_lr": ref["best_step"].tolist(),
        "offset_steps": offset.tolist(),
        "twin": min(
          twins,
          key=lambda k: (twins[k]["other_best_step_seeds"], twins[k]["sensitivity_gap"]),
          default=None,
        ),
        "twins": twins,
        "arms": arms,
      }
    )
  offsets = np.asarray([r["offset_steps"] for r in rows], float)
  return {
    "parts": rows,
    "stabiliser_everywhere": all(r["stabiliser"] for r in rows),
    # Renaming: the best c keeps its offset from AdamW's best LR (within one grid step).
    "offset_spread_steps": float(np.ptp(np.median(offsets, 1))) if len(rows) else 0.0,
  }


def _range(x) -> str:
  x = np.asarray(x, float)
  return f"{x.mean():.3f} ({x.min():.3f}–{x.max():.3f})"


def _logit(x: float) -> str:
  if not np.isfinite(x):
    return "diverged"
  return f"{x:.2g}".replace("e+0", "e").replace("e+", "e") if x >= 1e4 else f"{x:.0f}"


def _num(v: float) -> str:
  """3e-4, 0.01, 1: short grid values."""
  return f"{v:.0e}".replace("e-0", "e-") if v < 1e-3 else f"{v:g}"


def _steps(x) -> str:
  """Per-seed grid values; one value if every seed agrees."""
  x = np.asarray(x, float)
  return f"{_num(x[0])} (all)" if np.all(x == x[0]) else " / ".join(_num(v) for v in x)


Table = tuple[list[str], list[list[str]]]  # header, rows; ``code`` as in docs/generate.py


def test_table(data: dict) -> Table:
  """One row per part: the stabiliser test, the best c against AdamW's best LR, the twin."""
  header = [
    "size",
    "``per_component``: c sens.",
    "AdamW: LR sens.",
    "lower, every seed",
    "best c_entry",
    "AdamW's best LR",
    "twin",
  ]
  rows = [
    [
      r["part"],
      _range(r["subject_sensitivity"]),
      _range(r["reference_sensitivity"]),
      "yes" if r["stabiliser"] else "no",
      _steps(r["best_c_entry"]),
      _steps(r["best_lr"]),
      f"``{r['twin']}``",
    ]
    for r in renaming_test(data)["parts"]
  ]
  return header, rows


def arms_table(data: dict, index: int | str) -> Table:
  """Every arm of one part on the sweep that sets its step size."""
  r = renaming_test(data)["parts"][int(index)]
  header = [
    "arm",
    "swept",
    "sensitivity (seed range)",
    "best step, per seed",
    "best loss",
    "attention logit: at the best step",
    "at the grid's top",
  ]
  rows = [
    [
      f"``{name}``",
      "c at lr 1" if a["kind"] == "c" else "lr",
      _range(a["sensitivity"]),
      _steps(a["best_step"]),
      f"{np.mean(a['best_loss']):.3f}",
      _logit(a["logit_at_best"]),
      _logit(a["logit_at_top"]),
    ]
    for name, a in r["arms"].items()
  ]
  return header, rows


def _markdown(table: Table) -> str:
  header, rows = table
  lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines).replace("``", "`")


def markdown(data: dict) -> str:
  """The study's tables: the test per part, then every arm per part (step: the LR, or
  10·c_entry for a capped arm)."""
  out = [_markdown(test_table(data))]
  for i, res in enumerate(data["results"]):
    out += ["", f"{res.get('part', res['domain'])}:", "", _markdown(arms_table(data, i))]
  return "\n".join(out)


def plot(data: dict, path: Path) -> None:
  """Final validation loss against the per-entry step (lr, or 10·c at lr = 1), one panel
  per part (mean over seeds, seed range shaded), and the sensitivities per part."""
  from benchmarks._common import pyplot  # jax, flax: not needed for the tables

  plt = pyplot()
  results = data["results"]
  n = len(results)
  cols = 2
  rows = (n + 1 + cols - 1) // cols
  fig, axes = plt.subplots(rows, cols, figsize=(11, 4.2 * rows), squeeze=False)
  axes = axes.ravel()
  names = list(results[0]["arms"])
  for res in results:
    names += [k for k in res["arms"] if k not in names]
  colors = {k: plt.cm.tab10(i % 10) for i, k in enumerate(names)}
  for ax, res in zip(axes, results, strict=False):
    for name, r in res["arms"].items():
      kind, s, _ = sweep(r)
      x = np.asarray(res["c_entry"] if kind == "c" else res["lrs"], float)
      x = x * (10.0 if kind == "c" else 1.0)
      f = np.minimum(np.asarray(s["final_val"], float), res["cap_loss"])
      f = np.where(np.isfinite(f), f, res["cap_loss"])
      style = "-" if kind == "lr" else "--"
      ax.plot(x, f.mean(1), style, marker="o", ms=3, color=colors[name], label=name)
      ax.fill_between(x, f.min(1), f.max(1), color=colors[name], alpha=0.15)
    ax.set_xscale("log")
    ax.set_title(f"{res.get('part', res['domain'])} ({res['info']['n_params']:,} params)")
    ax.set_xlabel("per-entry step: lr (solid), or 10·c at lr = 1 (dashed)")
    ax.set_ylabel("final validation loss")
    ax.set_ylim(top=min(res["cap_loss"], 3.6))
  ax = axes[n]
  test = renaming_test(data)
  labels = [r["part"] for r in test["parts"]]
  for name in names:
    means, lo, hi, xs = [], [], [], []
    for i, r in enumerate(test["parts"]):
      if name in r["arms"]:
        s = r["arms"][name]["sensitivity"]
        xs.append(i)
        means.append(s.mean())
        lo.append(s.mean() - s.min())
        hi.append(s.max() - s.mean())
    ax.errorbar(xs, means, yerr=[lo, hi], marker="o", ms=4, capsize=3, color=colors[name])
  ax.set_xticks(range(len(labels)), labels, rotation=15)
  ax.set_ylabel("sensitivity in its step size (seed range)")
  ax.set_title("lower = less sensitive (compare within a size: grids differ)")
  for extra in axes[n + 1 :]:
    extra.axis("off")
  handles, labels_ = axes[0].get_legend_handles_labels()
  fig.legend(handles, labels_, loc="lower center", ncol=4, fontsize=10, frameon=False)
  fig.tight_layout(rect=(0, 0.07, 1, 1))
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("results", type=Path, help="a per_component.py JSON")
  parser.add_argument("--replot", action="store_true", help="redraw the PNG next to it")
  args = parser.parse_args(argv)
  data = json.loads(args.results.read_text())
  print(markdown(data))
  if args.replot:
    plot(data, args.results.with_suffix(".png"))


if __name__ == "__main__":
  main()
