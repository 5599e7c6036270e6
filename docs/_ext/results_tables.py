"""Sphinx directives that build the docs' tables from the repository's own data.

``{results-table} NAME`` renders one table from the JSON that a benchmark wrote under
``benchmarks/results/`` (NAME is a key of ``TABLES``), so that a results page always shows
the numbers of the committed run: re-run the benchmark, rebuild the docs, and the page
follows. The build also fails unless ``docs/api.md`` lists every name of
``relax_optax.__all__`` (and no other), so that no public name goes undocumented.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Callable
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import Directive
from docutils.statemachine import StringList
from sphinx.errors import ExtensionError

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
SUCCESS_MSE = 1e-4  # examples/circuits.py: a run solves a task below this test MSE

Table = tuple[list[str], list[list[str]]]  # header, rows (reST inline markup)


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
  import sys

  sys.path.insert(0, str(ROOT / "docs"))
  from plot_formulas import speed

  import relax_optax

  points = (0.5, 0.707, 0.9, 0.99, 0.999, 1.0, 2.0)
  header = ["‖u‖/c", *(f"{p:g}" for p in points)]
  rows = [[f"``{f}`` ‖v‖/c", *(f"{v:.3f}" for v in speed(f, points))] for f in relax_optax.FORMULAS]
  return header, rows


TABLES: dict[str, Callable[[], Table]] = {
  f.__name__: f
  for f in [
    step_overhead,
    step_overhead_sizes,
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
  ]
}


# ----------------------------------------------------------------------------- directives


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
  """A Markdown (MyST) pipe table; ``code`` becomes `code`, | is escaped."""

  def cell(text: str) -> str:
    return (text or " ").replace("``", "`").replace("|", "\\|")

  lines = ["| " + " | ".join(cell(h) for h in header) + " |"]
  lines.append("| --- |" + " ---: |" * (len(header) - 1))
  lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
  return lines


class ResultsTable(Directive):
  """``{results-table} NAME``: the table NAME, built from benchmarks/results/*.json."""

  required_arguments = 1
  has_content = False

  def run(self) -> list[nodes.Node]:
    name = self.arguments[0]
    if name not in TABLES:
      raise self.error(f"unknown results table {name!r}; known: {', '.join(TABLES)}")
    header, rows = TABLES[name]()
    if any(len(r) != len(header) for r in rows):
      raise self.error(f"results table {name!r}: a row's length differs from the header's")
    # The pages are MyST Markdown, so the directive's content is parsed as Markdown.
    container = nodes.container(classes=["results-table", f"results-table-{name}"])
    self.state.nested_parse(
      StringList(_markdown_table(header, rows), source=f"benchmarks/results ({name})"),
      self.content_offset,
      container,
    )
    return [container]


def check_public_api(app) -> None:
  """Fails the build unless docs/api.md's autosummary lists exactly ``relax_optax.__all__``."""
  import relax_optax

  text = (Path(app.srcdir) / "api.md").read_text()
  listed = set(re.findall(r"^   ([A-Za-z_]\w*)\s*$", text, flags=re.M))
  listed |= set(re.findall(r"^\.\. py:data:: ([A-Za-z_]\w*)\s*$", text, flags=re.M))
  missing = sorted(set(relax_optax.__all__) - listed)
  extra = sorted(listed - set(relax_optax.__all__))
  if missing or extra:
    raise ExtensionError(
      f"docs/api.md must list every public name of relax_optax.__all__ in an autosummary: "
      f"missing {missing}, not public {extra}"
    )


def setup(app):
  app.add_directive("results-table", ResultsTable)
  app.connect("builder-inited", check_public_api)
  return {"parallel_read_safe": True, "parallel_write_safe": True}
