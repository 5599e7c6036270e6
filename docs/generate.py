"""Writes the documentation's generated parts into the Markdown pages themselves.

Every table of numbers on a results page is built from the JSON a benchmark committed
under ``benchmarks/results/``, and every code excerpt of an example page is cut from the
script it shows. Both are written *into* the ``.md`` files, between marker comments::

  <!-- generated: table step_overhead -->
  | ... the table ... |
  <!-- end generated -->

  <!-- generated: code examples/circuits.py pyobject=Circuit -->
  ```python
  ... the function or class, or the lines from start-at to end-before ...
  ```
  <!-- end generated -->

so that a page reads the same in a plain checkout, on a code host and in the built site.
Usage, from the repository root::

  python docs/generate.py          # rewrite the stale generated parts
  python docs/generate.py --check  # exit 1, naming each stale page (CI: .ci/run)

A table's name is a key of ``TABLES`` followed by its arguments (a JSON file, a result
index); a code excerpt is a path relative to the repository root and either
``pyobject=NAME`` (a top-level function or class) or ``start-at="TEXT"`` and
``end-before="TEXT"`` (the first line containing each).
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import math
import re
import shlex
import statistics
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SUCCESS_MSE = 1e-4  # examples/circuits.py: a run solves a task below this test MSE

Table = tuple[list[str], list[list[str]]]  # header, rows (``code`` written as in reST)


def _load(name: str) -> dict:
  return json.loads((RESULTS / name).read_text())


def _g(x: float | None, digits: int = 3) -> str:
  if x is None or (isinstance(x, float) and math.isnan(x)):
    return "–"
  return f"{x:.{digits}g}"


def _loss(x: float | None) -> str:
  """A loss: 3 decimals in [0.01, 1000), else scientific."""
  if x is None or math.isnan(x):
    return "NaN"
  return f"{x:.3f}" if 0.01 <= abs(x) < 1000 else f"{x:.2g}"


def _lr(x: float) -> str:
  return f"{x:.0e}".replace("e-0", "e-").replace("e+00", "") if x < 0.1 else f"{x:g}"


# ----------------------------------------------------------------------------- step overhead


def step_overhead() -> Table:
  """Ratio to optax.adam at the largest size, few large / many small leaves."""
  d = _load("step_overhead.json")
  size = max(r["size"] for r in d["rows"])
  few, many = (
    next(r for r in d["rows"] if r["size"] == size and r["layout"] == layout)
    for layout in ("few_large", "many_small")
  )
  targets = d["meta"]["targets"]
  header = ["mode", "lorentz", "tanh", "reference", "target"]
  rows = []
  for mode in ("per_component", "per_param", "global"):
    cells = [
      f"{few[f'{mode}/{f}_ratio']:.2f}x / {many[f'{mode}/{f}_ratio']:.2f}x"
      if f"{mode}/{f}_ratio" in few
      else "–"
      for f in ("lorentz", "tanh", "reference")
    ]
    worst = max(few[f"{mode}/lorentz_ratio"], many[f"{mode}/lorentz_ratio"])
    met = "met" if worst <= targets[mode] else "**not met**"
    rows.append([f"``{mode}``", *cells, f"≤ {targets[mode]:.2f}x ({met})"])
  for m in ("per_param", "global"):
    chain = f"{few[f'chain:{m}/lorentz_ratio']:.2f}x / {many[f'chain:{m}/lorentz_ratio']:.2f}x"
    rows.append([f"the plain chain, ``{m}``", chain, "–", "–", ""])
  if "adam+clip_ratio" in few:
    clip = f"{few['adam+clip_ratio']:.2f}x / {many['adam+clip_ratio']:.2f}x"
    rows.append(["Adam + ``optax.clip_by_global_norm``", clip, "–", "–", ""])
  return header, rows


def backend_paths(platform: str = "cpu") -> Table:
  """Which path the recipe compiles to on a backend, its agreement with the chain, its cost."""
  d = _load(f"backend_paths_{platform}.json")
  header = [
    "leaves",
    "entries per leaf",
    "mode",
    "recomputes",
    "max rel. diff. to the chain",
    "adam ms",
    "recipe / adam",
    "chain / adam",
  ]
  rows = [
    [
      str(r["leaves"]),
      f"{r['parameters'] // r['leaves']:,}",
      f"``{r['mode']}``",
      "yes" if r["recipe_has_recompute"] else "no",
      f"{r['max_relative_difference']:.1e}",
      f"{r['adam_ms']:.2f}",
      f"{r['recipe_over_adam']:.2f}x",
      f"{r['chain_over_adam']:.2f}x",
    ]
    for r in d["rows"]
  ]
  return header, rows


# ----------------------------------------------------------------------------- compile time


def compile_time() -> Table:
  """Lower + compile seconds per number of leaves, and the ratio to adam+clip."""
  d = _load("compile_time.json")
  leaves = d["meta"]["leaves"]
  by = {(r["name"], r["leaves"]): r for r in d["rows"]}
  names = list(dict.fromkeys(r["name"] for r in d["rows"]))
  big = leaves[-1]
  header = [
    "optimizer",
    *(f"{n} leaves" for n in leaves),
    f"x adam+clip at {big}",
    "HLO instructions per leaf",
  ]
  rows = []
  for name in names:
    label = {"adam": "``optax.adam``", "adam+clip": "Adam + ``clip_by_global_norm``"}.get(
      name, "``" + name.replace("radam:", "relativistic_adam ").replace(":", " ") + "``"
    )
    rows.append(
      [
        label,
        *(f"{by[(name, n)]['total_s']:.2f} s" for n in leaves),
        f"{by[(name, big)]['total_s'] / by[('adam+clip', big)]['total_s']:.2f}x",
        f"{by[(name, big)]['hlo_instructions'] / big:.0f}",
      ]
    )
  return header, rows


def step_overhead_sizes() -> Table:
  """Every size: Adam's ns per parameter and the lorentz ratios."""
  d = _load("step_overhead.json")
  header = [
    "parameters",
    "leaves",
    "adam ns/param",
    "per_component",
    "per_param",
    "global",
    "chain per_param",
    "chain global",
  ]
  rows = []
  for r in d["rows"]:
    rows.append(
      [
        f"{r['size']:.0e}".replace("e+0", "e"),
        str(r["leaves"]),
        f"{r['adam_ns_per_param']:.2f}",
        *(f"{r[f'{m}/lorentz_ratio']:.2f}x" for m in ("per_component", "per_param", "global")),
        *(f"{r[f'chain:{m}/lorentz_ratio']:.2f}x" for m in ("per_param", "global")),
      ]
    )
  return header, rows


def readme_costs() -> Table:
  """The README's digest, ``lorentz``: compile seconds at the two largest leaf counts, the
  step's ratio to ``optax.adam`` at the largest size (few large / many small leaves)."""
  compile_d = _load("compile_time.json")
  seconds = {(r["name"], r["leaves"]): r["total_s"] for r in compile_d["rows"]}
  step = _load("step_overhead.json")["rows"]
  size = max(r["size"] for r in step)
  few, many = (
    next(r for r in step if r["size"] == size and r["layout"] == layout)
    for layout in ("few_large", "many_small")
  )
  modes = ("global", "per_param", "per_component")
  header = [
    "",
    "``optax.adam``",
    "Adam + ``clip_by_global_norm``",
    "``relativistic_adam`` ``global``",
    "``per_param``",
    "``per_component``",
  ]
  rows = []
  for i, n in enumerate(compile_d["meta"]["leaves"][-2:]):
    names = ("adam", "adam+clip", *(f"radam:{m}:lorentz" for m in modes))
    label = f"compile, {n:,} " + ("transformer-shaped leaves" if i == 0 else "leaves")
    rows.append([label, *(f"{seconds[name, n]:.1f} s" for name in names)])
  ratio = lambda key: f"{few[key]:.2f}x / {many[key]:.2f}x"
  label = f"one step, {size:.0e} parameters ({few['leaves']} / {many['leaves']} leaves)"
  rows.append(
    [
      label.replace("e+0", "e"),
      "1x",
      ratio("adam+clip_ratio"),
      *(ratio(f"{m}/lorentz_ratio") for m in modes),
    ]
  )
  return header, rows


# ----------------------------------------------------------------------------- high LR


def high_lr() -> Table:
  d = _load("high_lr_demo.json")
  seeds = d["config"]["seeds"]
  header = [
    "optimizer (lr = 1.0)",
    "exploded (loss > 100x trivial)",
    "non-finite",
    "final val loss, median (range)",
    "learned",
  ]
  summary = d["summary"]
  tuned = [r for r in summary if r["optimizer"].startswith("adam lr=")]
  best = min(
    tuned, key=lambda r: math.inf if r["final_val_median"] is None else r["final_val_median"]
  )
  rows = []
  for r in [*(r for r in summary if r not in tuned), best]:
    name = r["optimizer"]
    if r is best:
      name = f"tuned Adam (best of {len(tuned)} learning rates: {name.split('=')[1]})"
    at = f" at step {r['first_explosion_step']}" if r["first_explosion_step"] else ""
    val = (
      "NaN"
      if r["final_val_median"] is None
      else (
        f"{_loss(r['final_val_median'])} ({_loss(r['final_val_min'])}–{_loss(r['final_val_max'])})"
      )
    )
    rows.append(
      [
        name if r is best else f"``{name}``",
        f"{r['exploded_seeds']}/{seeds}{at}",
        f"{r['nonfinite_seeds']}/{seeds}",
        val,
        "yes" if r["learned"] else "no",
      ]
    )
  return header, rows


# ----------------------------------------------------------------------------- LR sensitivity


def lr_sensitivity() -> Table:
  d = _load("lr_sensitivity.json")
  tasks = d["results"]
  header = ["optimizer", *(t["task"] for t in tasks)]
  names = list(tasks[0]["optimizers"])
  mean = {
    (t["task"], o): statistics.mean(t["optimizers"][o]["sensitivity"]) for t in tasks for o in names
  }
  best = {t["task"]: min(mean[t["task"], o] for o in names) for t in tasks}
  rows = []
  for o in names:
    cells = []
    for t in tasks:
      s = mean[t["task"], o]
      lo, hi = min(t["optimizers"][o]["sensitivity"]), max(t["optimizers"][o]["sensitivity"])
      text = f"{s:.3f} ({lo:.3f}–{hi:.3f})"
      cells.append(f"**{text}**" if s == best[t["task"]] else text)
    rows.append([f"``{o}``", *cells])
  return header, rows


# ----------------------------------------------------------------------------- circuits


def circuits_speed() -> Table:
  d = _load("circuits_speed.json")
  names = ["pytorch", "jax naive", "jax scan, dot", "ours"]
  header = [
    "task",
    "PyTorch (notebook loop)",
    "JAX naive (``nnx.jit`` step per call)",
    "JAX ``scan``, ``x @ W``",
    "ours",
    "ours vs PyTorch, wall",
    "CPU",
  ]
  rows = []
  for task, r in d["tasks"].items():
    med = r["median"]
    rows.append(
      [
        task,
        *(f"{med[n]['wall']:.1f} ({med[n]['cpu']:.1f})" for n in names),
        f"{r['ratio_wall']:.1f}x",
        f"{r['ratio_cpu']:.1f}x",
      ]
    )
  return header, rows


def _notebook() -> dict:
  return json.loads((ROOT / "examples" / "circuits_notebook.json").read_text())


def circuits_notebook() -> Table:
  d = _load("circuits_notebook_init.json")
  nb = _notebook()
  every = nb["log_every"]
  header = [
    "task",
    "notebook's last printed test MSE (step)",
    "ours, same step",
    "ours, final (step)",
    "wall s",
  ]
  rows = []
  for task, r in d["tasks"].items():
    losses = nb["tasks"][task]["losses"]
    last = every * (len(losses) - 1)
    ours = r["test_mse"][0][r["steps"].index(last)] if last in r["steps"] else None
    rows.append(
      [
        task,
        f"{losses[-1]:.3g} ({_steps(last)})",
        _g(ours),
        f"{r['test_mse'][0][-1]:.3g} ({_steps(r['steps'][-1])})",
        f"{r['seconds']:.1f}",
      ]
    )
  return header, rows


def _label(d: dict) -> str:
  label = f"{d['optimizer']} lr {_lr(d['lr'])}"
  if d["optimizer"] == "relativistic_adam":
    label += f", c = {_lr(d['speed_limit'])}" + (
      f", {d['mode']}" if d["mode"] != "per_param" else ""
    )
  return label


def _success(final: list[float]) -> str:
  n = sum(f < SUCCESS_MSE for f in final)
  return f"{n / len(final):.0%} ({n}/{len(final)})"


def circuits_seeds() -> Table:
  runs = [_load(f"circuits_seeds64_{o}.json") for o in ("sgd", "adam", "relativistic_adam")]
  header = ["task", *(_label(d) for d in runs)]
  rows = []
  for task in runs[0]["tasks"]:
    cells = []
    for d in runs:
      final = [c[-1] for c in d["tasks"][task]["test_mse"]]
      cells.append(f"{_success(final)}, median {statistics.median(final):.2g}")
    rows.append([task, *cells])
  return header, rows


def _steps(s: int) -> str:
  return f"{s / 1e6:g}M" if s >= 1_000_000 else f"{s // 1000}k"


def _first_below(steps: list[int], curve: list[float]) -> str:
  for s, v in zip(steps, curve, strict=True):
    if v < SUCCESS_MSE:
      return _steps(s)
  return "–"


def circuits_min_notebook_init() -> Table:
  files = [
    "sgd_6M",
    "sgd_lr1e-3",
    "sgd_lr1e-2",
    "adam",
    "adam_lr1e-2",
    "radam",
    "radam_lr1e-2_c1e-3",
  ]
  header = [
    "optimizer (ours, min, notebook's initial weights)",
    "steps",
    "test MSE at 300k",
    "final",
    "first logged step < 1e-4",
    "wall s",
  ]
  rows = []
  for f in files:
    d = _load(f"circuits_min_nb_{f}.json")
    r = d["tasks"]["min"]
    curve = r["test_mse"][0]
    at300k = curve[r["steps"].index(300_000)] if 300_000 in r["steps"] else None
    rows.append(
      [
        _label(d),
        f"{r['steps'][-1] / 1e6:g}M",
        _g(at300k, 2),
        _g(curve[-1], 2),
        _first_below(r["steps"], curve),
        f"{r['seconds']:.0f}",
      ]
    )
  return header, rows


def circuits_min_seeds() -> Table:
  files = [
    ("circuits_seeds64_sgd.json", "min"),
    ("circuits_min_s64_sgd_lr1e-2.json", "min"),
    ("circuits_seeds64_adam.json", "min"),
    ("circuits_min_s64_adam_lr1e-2.json", "min"),
    ("circuits_seeds64_relativistic_adam.json", "min"),
    ("circuits_min_s64_radam_lr1e-2_c1e-3.json", "min"),
    ("circuits_min_s64_radam_lr1e-2_c1e-3_comp.json", "min"),
  ]
  header = [
    "optimizer (min, 64 random initialisations, 300k steps)",
    "success",
    "median final test MSE",
  ]
  rows = []
  for f, task in files:
    d = _load(f)
    final = [c[-1] for c in d["tasks"][task]["test_mse"]]
    rows.append([_label(d), _success(final), f"{statistics.median(final):.2g}"])
  return header, rows


# ----------------------------------------------------------------------------- autodiff


def autodiff_textbook() -> Table:
  d = _load("autodiff_modes.json")["textbook"]
  header = [
    "mode",
    "f(9,10)",
    "∂f/∂x1",
    "∂f/∂x2",
    "chain-rule ops + seeds",
    "hand-counted ops",
    "jaxpr eqns",
    "XLA flops",
    "transc.",
    "µs",
  ]
  rows = []
  for r in d["rows"]:
    grad = r["grad"] or [None, None]
    chain = "" if r["chain_rule_ops"] is None else f"{r['chain_rule_ops']}+{r['seeds']}"
    rows.append(
      [
        r["mode"],
        _g(r["value"], 6) if r["value"] else "",
        _g(grad[0], 6),
        _g(grad[1], 6),
        chain,
        str(r["hand_total_ops"] or ""),
        str(r["jaxpr_eqns"]),
        f"{r['flops']:.0f}",
        f"{r['transcendentals']:.0f}",
        f"{r['time_s'] * 1e6:.1f}",
      ]
    )
  return header, rows


def autodiff_sweep() -> Table:
  d = _load("autodiff_modes.json")["sweep"]
  top = max(d["sizes"])
  header = [
    "sweep",
    "slope of jacfwd/f",
    "slope of jacrev/f",
    "crossover (ops)",
    "crossover (time)",
    f"jacfwd/jacrev ops at {top}",
    f"time at {top}",
  ]
  rows = []
  for e in d["summary"]:
    other = "m" if e["varied"] == "n" else "n"
    rows.append(
      [
        f"vary {e['varied']}, {other} = {e['fixed']}",
        f"{e['slope_ops_jacfwd_over_f']:.2f}",
        f"{e['slope_ops_jacrev_over_f']:.2f}",
        _g(e["crossover_ops"]),
        _g(e["crossover_time"]),
        f"{e['fwd_over_rev_ops_at_max']:.3g}x",
        f"{e['fwd_over_rev_time_at_max']:.3g}x",
      ]
    )
  return header, rows


def autodiff_cheap_gradient() -> Table:
  d = _load("autodiff_modes.json")["cheap_gradient"]
  header = ["n", "ops f", "ops grad", "ops ratio", "µs f", "µs grad", "time ratio"]
  rows = [
    [
      str(r["n"]),
      f"{r['ops_f']:.0f}",
      f"{r['ops_grad']:.0f}",
      f"{r['ops_grad'] / r['ops_f']:.2f}",
      f"{r['time_s_f'] * 1e6:.1f}",
      f"{r['time_s_grad'] * 1e6:.1f}",
      f"{r['time_s_grad'] / r['time_s_f']:.2f}",
    ]
    for r in d["rows"]
  ]
  return header, rows


# ----------------------------------------------------------------------------- formulas


def formulas() -> Table:
  """‖v‖/c at a few ‖u‖/c for each formula, computed by relax_optax itself (c = 1)."""
  sys.path[:0] = [str(ROOT), str(ROOT / "docs")]
  from plot_formulas import speed

  import relax_optax

  points = (0.5, 0.707, 0.9, 0.99, 0.999, 1.0, 2.0)
  header = ["‖u‖/c", *(f"{p:g}" for p in points)]
  rows = [[f"``{f}`` ‖v‖/c", *(f"{v:.3f}" for v in speed(f, points))] for f in relax_optax.FORMULAS]
  return header, rows


# ----------------------------------------------------------------------------- LM stability
# The tables of benchmarks/lm_stability.py's reports, rebuilt from its JSON (the same
# cells as its ``--tables`` output, so that the page and a re-run's printout agree).


def _lm(file: str, index: str) -> dict:
  return _load(file)["results"][int(index)]


def _med(rows) -> list[float]:
  """Median over seeds per grid point; NaN where a seed diverged."""
  rows = np.asarray(rows, float)
  return [float(np.median(r)) if np.all(np.isfinite(r)) else math.nan for r in rows]


def _cell(x: float) -> str:
  return "diverged" if not np.isfinite(x) else f"{x:.3f}"


def _sens(s) -> str:
  s = np.asarray(s, float)
  return f"{s.mean():.3f} ({s.min():.3f}–{s.max():.3f})"


def _best_val(r: dict) -> float:
  """Per seed the lowest validation loss over LRs and evaluations; mean over seeds."""
  best = np.asarray(r["lr_sweep"]["best_val"], float)  # (lrs, seeds)
  with warnings.catch_warnings():  # a diverged run has no finite evaluation
    warnings.simplefilter("ignore", RuntimeWarning)
    return float(np.mean(np.nanmin(best, axis=0)))


def lm_lr(file: str, index: str) -> Table:
  res = _lm(file, index)
  header = ["arm", *(f"lr {lr:g}" for lr in res["lrs"]), "LR sensitivity", "best val"]
  rows = [
    [
      f"``{name}``",
      *(_cell(m) for m in _med(r["lr_sweep"]["final_val"])),
      _sens(r["lr_sensitivity"]),
      f"{_best_val(r):.3f}",
    ]
    for name, r in res["arms"].items()
  ]
  return header, rows


def lm_c(file: str, index: str) -> Table:
  res = _lm(file, index)
  header = ["arm", *(f"c {c:g}" for c in res["c_entry"]), "c sensitivity", "LR sensitivity"]
  rows = [
    [
      f"``{name}``",
      *(_cell(m) for m in _med(r["c_sweep"]["final_val"])),
      _sens(r["c_sensitivity"]),
      _sens(r["lr_sensitivity"]),
    ]
    for name, r in res["arms"].items()
    if "c_sweep" in r
  ]
  return header, rows


def lm_bind(file: str, index: str) -> Table:
  res = _lm(file, index)
  header = ["arm", *(f"lr {lr:g}" for lr in res["lrs"]), *(f"c {c:g}" for c in res["c_entry"])]
  rows = []
  for name, r in res["arms"].items():
    if r["lr_sweep"]["bind_fraction"] is not None:
      b = np.mean(r["lr_sweep"]["bind_fraction"], 1).tolist()
      b += np.mean(r["c_sweep"]["bind_fraction"], 1).tolist()
      rows.append([f"``{name}``", *(f"{x:.2f}" for x in b)])
  return header, rows


def lm_logit(file: str, index: str) -> Table:
  res = _lm(file, index)
  key = "max_attn_logit" if res["domain"].startswith("lm") else "max_out_logit_rms"
  header = ["arm", *(f"lr {lr:g}" for lr in res["lrs"])]
  rows = []
  for name, r in res["arms"].items():
    a = np.median(np.asarray(r["lr_sweep"][key], float), 1)
    u = np.median(np.asarray(r["lr_sweep"]["mean_update_rms"], float), 1)
    rows.append([f"``{name}``", *(f"{x:.3g} / {y:.2g}" for x, y in zip(a, u, strict=True))])
  return header, rows


def lm_sizes(file: str = "lm_stability_full.json") -> Table:
  """Both transformer sizes: LR and c sensitivity, best loss, attention logit at the top LR."""
  results = [r for r in _load(file)["results"] if r["domain"].startswith("lm")]
  header = ["arm"]
  for res in results:
    size = res["domain"].removeprefix("lm ")
    header += [f"{size}: LR sens.", "c sens.", "best val", "attn. logit"]
  rows = []
  for arm in results[0]["arms"]:
    row = [f"``{arm}``"]
    for res in results:
      r = res["arms"][arm]
      c = f"{np.mean(r['c_sensitivity']):.3f}" if "c_sensitivity" in r else "–"
      logit = float(np.median(np.asarray(r["lr_sweep"]["max_attn_logit"][-1], float)))
      row += [f"{np.mean(r['lr_sensitivity']):.3f}", c, f"{_best_val(r):.3f}", f"{logit:.3g}"]
    rows.append(row)
  return header, rows


README_ARMS = {
  "adamw": "AdamW",
  "adamw+qk_norm": "AdamW + qk-layernorm",
  "clip_update_norm": "Adam, update clipped by global norm ``c``",
  "relativistic global": "``relativistic_adam`` ``global``",
  "relativistic per_param": "``relativistic_adam`` ``per_param``",
  "relativistic per_component": "``relativistic_adam`` ``per_component``",
}


def _sci(x: float) -> str:
  """1.05e7, not 1.05e+07."""
  mantissa, exponent = f"{x:.2e}".split("e")
  return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _logit(x: float) -> str:
  return _sci(x) if x >= 1e4 else f"{x:.0f}"


def lm_sizes_short(file: str = "lm_stability_full.json") -> Table:
  """The README's digest of ``lm_sizes``: six arms, sensitivities, the big size's logit."""
  results = [r for r in _load(file)["results"] if r["domain"].startswith("lm")]
  header = ["arm"]
  for res in results:
    header += [f"{res['domain'].removeprefix('lm ')}: LR sens.", "c sens."]
  top = results[-1]
  header.append(f"{top['domain'].removeprefix('lm ')}: max attn. logit at lr {top['lrs'][-1]:g}")
  rows = []
  for arm, label in README_ARMS.items():
    row = [label]
    for res in results:
      r = res["arms"][arm]
      row.append(f"{np.mean(r['lr_sensitivity']):.3f}")
      row.append(f"{np.mean(r['c_sensitivity']):.3f}" if "c_sensitivity" in r else "–")
    logit = float(np.median(np.asarray(top["arms"][arm]["lr_sweep"]["max_attn_logit"][-1], float)))
    row.append(_logit(logit))
    rows.append(row)
  return header, rows


@functools.cache
def _per_component() -> tuple[dict, object]:
  """The per_component study's JSON and its reporting module (``renaming.py``), read
  once for the five tables that show it."""
  sys.path.insert(0, str(ROOT))
  from benchmarks.lm_stability import renaming

  return _load("lm_stability_per_component.json"), renaming


def lm_per_component() -> Table:
  """Is per_component a stabiliser? One row per transformer size (``renaming.py``)."""
  data, renaming = _per_component()
  return renaming.test_table(data)


def lm_per_component_arms(index: str) -> Table:
  """Every arm of one size of the per_component study on the sweep of its step size."""
  data, renaming = _per_component()
  return renaming.arms_table(data, index)


def lm_scheduled_c(
  file: str = "lm_stability_scheduled_c.json", base: str = "lm_stability.json"
) -> Table:
  """AdamW, ``global`` with a constant c (from the default run) and with c following the
  learning-rate schedule: sensitivities, best loss, attention logit at the top LR."""
  runs = _load(file)["results"]
  constant = {r["domain"]: r["arms"]["relativistic global"] for r in _load(base)["results"]}
  lm, other = runs[0], runs[1]
  top = lm["lrs"][-1]
  header = [
    "arm",
    "transformer: LR sens.",
    f"c sens. (lr = {lm['c_lr']:g})",
    "best val",
    f"max attn. logit, lr = {top:g}",
    f"{other['domain'].split()[0]}: LR sens.",
    f"c sens. (lr = {other['c_lr']:g})",
  ]
  arms = {"``adamw``": "adamw", "``relativistic global`` (constant c)": None}
  arms |= {f"``{a}``": a for a in lm["arms"] if a != "adamw"}
  rows = []
  for label, name in arms.items():
    r_lm, r_other = (
      (res["arms"][name] if name else constant[res["domain"]]) for res in (lm, other)
    )
    c_sens = lambda r: _sens(r["c_sensitivity"]) if "c_sensitivity" in r else "–"
    logit = float(np.median(np.asarray(r_lm["lr_sweep"]["max_attn_logit"][-1], float)))
    rows.append(
      [
        label,
        _sens(r_lm["lr_sensitivity"]),
        c_sens(r_lm),
        f"{_best_val(r_lm):.3f}",
        _logit(logit),
        _sens(r_other["lr_sensitivity"]),
        c_sens(r_other),
      ]
    )
  return header, rows


def lm_step_time(file: str = "lm_stability_step_time.json") -> Table:
  """The transformer's train step, jitted and as ``nnx.Optimizer``: median ms and the
  median over rounds of each round's ratio to ``optax.adamw``."""
  d = _load(file)["results"]
  header = ["optimizer", "jit step (ms, median)", "ratio", "``nnx.Optimizer`` step (ms)", "ratio"]
  rows = [
    [
      " ".join(f"``{part}``" for part in name.split(" ", 1)),
      f"{r['jit_step_ms']:.2f}",
      f"{r['jit_ratio']:.3f}",
      f"{r['nnx_step_ms']:.2f}",
      f"{r['nnx_ratio']:.3f}",
    ]
    for name, r in d.items()
  ]
  return header, rows


SPIKE_METRICS = {
  "final_val": lambda s: f"{np.mean(s['final_val']):.3f}",
  "spikes": lambda s: (
    f"{np.mean(s['n_spikes']):.2g} / {np.mean(s['max_height']):.2f}"
    f" / {np.mean(s['recover_steps']):.0f}"
  ),
  "update_norm_peak": lambda s: f"{np.mean(s['update_norm_peak']):.2f}",
}


def lm_spikes(metric: str, file: str = "lm_stability_spikes.json") -> Table:
  """One measure of ``--spikes`` (mean over seeds) per arm and scenario, as
  benchmarks/lm_stability/report.py's ``spike_table`` summarises it: ``final_val``,
  ``spikes`` (loss spikes per run / highest loss ratio / steps to recover) or
  ``update_norm_peak``."""
  d = _load(file)
  names = [sc["name"] for sc in d["config"]["scenarios"]]
  cell = SPIKE_METRICS[metric]
  header = ["arm", *names]
  rows = [[arm, *(cell(r["scenarios"][n]) for n in names)] for arm, r in d["arms"].items()]
  return header, rows


# ----------------------------------------------------------------------------- relative limit


def relative_pass_through() -> Table:
  """benchmarks/relative_pass_through.py: the relative change of log-normal streams."""
  d = _load("relative_pass_through.json")
  header = [
    "σ",
    "k",
    "c / (k·RMS)",
    "mean change",
    "median",
    "99th pct",
    "step of 2·RMS",
    "bound (1/k)²/2",
  ]
  rows = [
    [
      f"{r['sigma']:g}",
      f"{r['k']:g}",
      *(
        f"{r[key]:.3f}"
        for key in (
          "c_over_k_rms",
          "mean_change",
          "median_change",
          "p99_change",
          "change_at_2rms",
          "bound",
        )
      ),
    ]
    for r in d["rows"]
  ]
  return header, rows


# ----------------------------------------------------------------------------- spike guard


SPIKE_ARMS = {
  "adamw": "AdamW",
  "adamw+clip": "AdamW + ``clip_by_global_norm(1.0)`` on the gradient",
  "hist-clip": "hard historical clip (mean + 2σ of the last 128 update norms, Levanter-style)",
}


def spike_guard() -> Table:
  d = _load("spike_guard.json")
  spikes = list(next(iter(d["results"].values()))["spikes"])
  header = ["arm", "final loss", "test acc"]
  for s in spikes:
    header += [f"{s[0]}{int(s[1:]):,} height", "recover"]
  rows = []
  for name, r in d["results"].items():
    label = SPIKE_ARMS.get(name, name.replace("k=", "k = "))
    cells = [label, f"{r['final_loss']:.4f}", f"{r['test_accuracy']:.3f}"]
    for s in spikes:
      cells += [f"{r['spikes'][s]['height']:.2f}", f"{r['spikes'][s]['recover_steps']:.1f}"]
    rows.append(cells)
  return header, rows


# ----------------------------------------------------------------------------- RGD


def rgd_nn() -> Table:
  d = _load("rgd_nn.json")
  names = {"SGD-momentum": "SGD with momentum", "relativistic_adam": "``relativistic_adam``"}
  header = [
    "method",
    "selected",
    "test accuracy (5 seeds, mean ± std)",
    "median validation loss over the 24 candidates",
  ]
  rows = []
  for m, r in d["methods"].items():
    b = r["best"]
    sel = [f"lr {b['lr']:.3g}"]
    if "mu" in b:
      sel.append(f"μ {b['mu']:.2f}")
    if "c" in b:
      sel.append(f"c {b['c']:.2g}")
    acc = np.asarray(r["seeds"]["test_acc"], float) * 100
    rows.append(
      [
        names.get(m, m),
        ", ".join(sel),
        f"{acc.mean():.2f} % ± {acc.std():.2f}",
        f"{statistics.median(r['tuning']['final_val_loss']):.3f}",
      ]
    )
  return header, rows


RGD_METHODS = ("CM", "NAG", "RGD")
RGD_PROBLEMS = {
  "corr_quad": "correlated quadratic",
  "random_quad": "random quadratic",
  "rosenbrock": "Rosenbrock (d = 100)",
  "booth": "Booth",
  "matyas": "Matyas",
  "beale": "Beale",
  "camel": "three-hump camel",
  "levi": "Levi N.13",
  "matrix_completion": "matrix completion",
}


def _iters(k: int | None, horizon: int) -> str:
  return f">{horizon}" if k is None else str(k)


def _held_out(ks: list[int | None], horizon: int) -> str:
  """benchmarks/rgd_paper.py's median over held-out instances (never reached: K + 1)."""
  med = float(np.median([horizon + 1 if k is None else k for k in ks]))
  return f">{horizon}" if med > horizon else f"{med:.0f}"


def _f(x: float | None) -> str:
  """An f(x_K): one significant digit, ``4e-4`` rather than ``4e-04``."""
  if x is None or math.isnan(x):
    return "nan"
  if x == 0 or abs(x) >= 1e-3:
    return f"{x:.2g}"
  mantissa, exponent = f"{x:.0e}".split("e")
  return f"{mantissa}e{int(exponent)}"


def _bold(text: str, on: bool) -> str:
  return f"**{text}**" if on else text


def rgd_paper(file: str = "rgd_paper.json") -> Table:
  """Tuned CM / NAG / RGD per problem: iterations to tolerance (held-out median), f(x_K),
  the share of finite candidates; the authors' published values below where they exist."""
  d = _load(file)
  header = [
    "problem",
    "CM iters",
    "NAG iters",
    "RGD iters",
    "CM / NAG / RGD ``f(x_K)``",
    "finite candidates CM / NAG / RGD",
  ]
  rows = []
  for name, p in d["problems"].items():
    horizon, tuned, best = p["iterations"], p["tuned"], d["best"][name]
    fastest = (best.get("iters_to_tol") or "").split("=")
    held_best = (best.get("held_out_iters_to_tol") or "").split("=")
    cells = []
    for m in RGD_METHODS:
      e = tuned[m]
      text = _bold(_iters(e["iters_to_tol"], horizon), m in fastest)
      if e["tuning"]["finite_fraction"] == 0:
        text += " (all diverged)"
      elif p["held_out_seeds"]:
        held = _bold(_held_out(e["seeds"]["iters_to_tol"], horizon), m in held_best)
        text += f" ({'held-out ' if m == 'CM' else ''}{held})"
      cells.append(text)
    # f(x_K) below the rounding floor (floor·f(x_0)) is a tie, decided by the mean log f.
    floor = p["floor"] * tuned["CM"]["curve"][0]
    final = {m: tuned[m]["final_f"] for m in RGD_METHODS}
    at_floor = [m for m in RGD_METHODS if final[m] is not None and final[m] <= floor]
    if len(at_floor) == len(RGD_METHODS):
      f_cell = "all at the rounding floor"
    else:
      f_cell = " / ".join(
        _bold(_f(final[m]), m == best["f(x_K)"] and len(at_floor) < 2) for m in RGD_METHODS
      )
    finite = [e["tuning"]["finite_fraction"] for e in (tuned[m] for m in RGD_METHODS)]
    finite_cell = (
      "100 % each"
      if all(x == 1 for x in finite)
      else " / ".join(f"{100 * x:.0f} %" for x in finite)
    )
    rows.append([RGD_PROBLEMS.get(name, name), *cells, f_cell, finite_cell])
    if p["published"]:
      pub = p["published"]
      rows.append(
        [
          "↳ authors' published values",
          *(_iters(pub[m]["iters_to_tol"], horizon) for m in RGD_METHODS),
          " / ".join(_f(pub[m]["final_f"]) for m in RGD_METHODS),
          "",
        ]
      )
  return header, rows


RGD_SEARCHES = {
  "rgd_paper.json": "default (uniform, seed 0, 512)",
  "rgd_paper_search1.json": "search seed 1",
  "rgd_paper_logstep.json": "log-uniform step size",
  "rgd_paper_budget2048.json": "budget 2048",
}


def rgd_robustness() -> Table:
  """Iterations to tolerance of tuned CM / NAG / RGD in each search (the fastest in bold)."""
  runs = {label: _load(f) for f, label in RGD_SEARCHES.items()}
  header = ["problem", *runs]
  first = next(iter(runs.values()))
  rows = []
  for name in first["problems"]:
    cells = []
    for d in runs.values():
      p = d["problems"][name]
      fastest = (d["best"][name].get("iters_to_tol") or "").split("=")
      cells.append(
        " / ".join(
          _bold(_iters(p["tuned"][m]["iters_to_tol"], p["iterations"]), m in fastest)
          for m in RGD_METHODS
        )
      )
    rows.append([RGD_PROBLEMS.get(name, name).removesuffix(" (d = 100)"), *cells])
  return header, rows


# ----------------------------------------------------------------------------- examples


def transformer_example() -> Table:
  """examples/transformer.py's committed run: validation loss per optimizer and LR."""
  d = json.loads((ROOT / "docs" / "examples" / "transformer" / "results.json").read_text())
  lrs = list(d["results"])
  header = ["optimizer", *lrs]
  names = list(d["results"][lrs[0]])
  rows = [
    [f"``{n}``" if n != "adamw + update clip" else "``adamw`` + ``clip_by_global_norm(c)``"]
    + [_loss(d["results"][lr][n]["val_loss"]) for lr in lrs]
    for n in names
  ]
  return header, rows


TABLES: dict[str, Callable[..., Table]] = {
  f.__name__: f
  for f in [
    backend_paths,
    step_overhead,
    step_overhead_sizes,
    readme_costs,
    compile_time,
    high_lr,
    lr_sensitivity,
    circuits_speed,
    circuits_notebook,
    circuits_seeds,
    circuits_min_notebook_init,
    circuits_min_seeds,
    autodiff_textbook,
    autodiff_sweep,
    autodiff_cheap_gradient,
    formulas,
    lm_lr,
    lm_c,
    lm_bind,
    lm_logit,
    lm_sizes,
    lm_sizes_short,
    lm_per_component,
    lm_per_component_arms,
    lm_scheduled_c,
    lm_step_time,
    lm_spikes,
    relative_pass_through,
    spike_guard,
    rgd_nn,
    rgd_paper,
    rgd_robustness,
    transformer_example,
  ]
}


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
  """A Markdown pipe table; ``code`` becomes `code`, | is escaped; numbers right-aligned."""

  def cell(text: str) -> str:
    return (text or " ").replace("``", "`").replace("|", "\\|")

  if any(len(r) != len(header) for r in rows):
    raise ValueError("a row's length differs from the header's")
  lines = ["| " + " | ".join(cell(h) for h in header) + " |"]
  lines.append("| --- |" + " ---: |" * (len(header) - 1))
  lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


# ----------------------------------------------------------------------------- code excerpts


def code_excerpt(path: str, **opts: str) -> str:
  """A fenced Python block: a top-level def/class (``pyobject``), or start-at..end-before."""
  text = (ROOT / path).read_text()
  lines = text.splitlines()
  if "pyobject" in opts:
    tree = ast.parse(text)
    node = next(
      (
        n
        for n in tree.body
        if isinstance(n, ast.FunctionDef | ast.ClassDef) and n.name == opts["pyobject"]
      ),
      None,
    )
    if node is None:
      raise ValueError(f"{path}: no top-level {opts['pyobject']}")
    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    excerpt = lines[first - 1 : node.end_lineno]
  else:
    start = next(i for i, line in enumerate(lines) if opts["start-at"] in line)
    end = len(lines)
    if "end-before" in opts:
      end = next(
        i for i, line in enumerate(lines[start + 1 :], start + 1) if opts["end-before"] in line
      )
    excerpt = lines[start:end]
    while excerpt and not excerpt[-1].strip():
      excerpt.pop()
  return "```python\n" + "\n".join(excerpt) + "\n```"


# ----------------------------------------------------------------------------- the pages

MARKER = re.compile(
  r"(?P<open><!-- generated: (?P<spec>.*?) -->\n)(?P<body>.*?)(?P<close><!-- end generated -->)",
  flags=re.S,
)
PAGES = ["README.md", "docs/**/*.md"]


def render(spec: str) -> str:
  kind, *args = shlex.split(spec)
  if kind == "table":
    name, *rest = args
    if name not in TABLES:
      raise ValueError(f"unknown table {name!r}; known: {', '.join(TABLES)}")
    return markdown_table(*TABLES[name](*rest))
  if kind == "code":
    path, *rest = args
    return code_excerpt(path, **dict(a.split("=", 1) for a in rest))
  raise ValueError(f"unknown generated kind {kind!r} (table or code)")


def regenerate(text: str) -> str:
  return MARKER.sub(lambda m: m["open"] + render(m["spec"]) + "\n" + m["close"], text)


def pages() -> list[Path]:
  found = {p for pattern in PAGES for p in ROOT.glob(pattern)}
  return sorted(p for p in found if "_build" not in p.parts)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--check", action="store_true", help="only report stale pages; exit 1")
  args = parser.parse_args(argv)
  stale = []
  for page in pages():
    text = page.read_text()
    if "<!-- generated:" not in text:
      continue
    new = regenerate(text)
    if new != text:
      stale.append(page.relative_to(ROOT))
      if not args.check:
        page.write_text(new)
  verb = "stale" if args.check else "rewrote"
  for page in stale:
    print(f"{verb}: {page}")
  if args.check and stale:
    print("run `python docs/generate.py` and commit the pages", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
