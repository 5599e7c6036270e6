"""Tables and plots of the study, derived from a run's results (the JSON it wrote).

``python -m benchmarks.lm_stability.report RESULTS.json [--replot]`` prints the Markdown
tables of a finished sweep (and redraws its PNGs).
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

from benchmarks._common import pyplot
from benchmarks.lm_stability.configs import SPIKE_BLOCK


def best_val(r: dict) -> float:
  """Best validation loss of an arm: per seed the lowest over LRs and evaluations,
  then the mean over seeds (NaN-free: a diverged run has no finite evaluation)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    return float(np.mean(np.nanmin(np.asarray(r["lr_sweep"]["best_val"], float), 0)))


def _fmt_sens(s) -> str:
  s = np.asarray(s)
  return f"{s.mean():.3f} ({s.min():.3f}..{s.max():.3f})"


def print_tables(res: dict) -> None:
  """Prints one domain's tables."""
  lines = []
  p = lines.append
  lrs, cs = res["lrs"], res["c_entry"]
  p(
    f"\n== {res['domain']} ({res['info']['n_params']} parameters): final validation loss"
    f" (median over seeds; capped at L0 = {res['cap_loss']:.3f}; 'nan' = diverged),"
    f" caps at c_entry = {res['c_default_entry']:g}"
  )
  p(
    f"{'arm':<34s}"
    + "".join(f" {lr:>7g}" for lr in lrs)
    + f"  {'LR sensitivity (range)':<23s} {'best val':>8s}"
  )
  for name, r in res["arms"].items():
    final = np.asarray(r["lr_sweep"]["final_val"], float)
    med = [np.median(row) if np.all(np.isfinite(row)) else np.nan for row in final]
    best = best_val(r)
    p(
      f"{name:<34s}"
      + "".join(f" {m:>7.3f}" for m in med)
      + f"  {_fmt_sens(r['lr_sensitivity']):<23s} {best:>8.3f}"
    )
  if any("c_sweep" in r for r in res["arms"].values()):
    p(
      f"\n-- the decisive test: final validation loss vs c_entry at lr = {res['c_lr']:g}"
      " (median over seeds), sensitivity in c next to sensitivity in LR"
    )
    p(
      f"{'arm':<34s}"
      + "".join(f" {c:>7g}" for c in cs)
      + f"  {'c sensitivity':<23s} {'LR sensitivity':<23s}"
    )
    for name, r in res["arms"].items():
      if "c_sweep" not in r:
        continue
      final = np.asarray(r["c_sweep"]["final_val"], float)
      med = [np.median(row) if np.all(np.isfinite(row)) else np.nan for row in final]
      p(
        f"{name:<34s}"
        + "".join(f" {m:>7.3f}" for m in med)
        + f"  {_fmt_sens(r['c_sensitivity']):<23s} {_fmt_sens(r['lr_sensitivity']):<23s}"
      )
    p(
      f"\n-- fraction of (step, group) pairs where the cap binds, per LR (c_entry ="
      f" {res['c_default_entry']:g}; mean over seeds)"
    )
    p(f"{'arm':<34s}" + "".join(f" {lr:>7g}" for lr in lrs))
    for name, r in res["arms"].items():
      if r["lr_sweep"]["bind_fraction"] is not None:
        b = np.mean(r["lr_sweep"]["bind_fraction"], 1)
        p(f"{name:<34s}" + "".join(f" {x:>7.2f}" for x in b))
  p(
    "\n-- instabilities: largest attention logit / output-logit RMS over training, per LR"
    " (median over seeds)"
  )
  p(f"{'arm':<34s}" + "".join(f" {lr:>11g}" for lr in lrs))
  for name, r in res["arms"].items():
    a = np.median(np.asarray(r["lr_sweep"]["max_attn_logit"], float), 1)
    o = np.median(np.asarray(r["lr_sweep"]["max_out_logit_rms"], float), 1)
    p(f"{name:<34s}" + "".join(f" {x:>5.3g}/{y:<5.3g}" for x, y in zip(a, o, strict=True)))
  print("\n".join(lines))


def _med(rows) -> list[float]:
  """Median over seeds per grid point; NaN where a seed diverged."""
  rows = np.asarray(rows, float)
  return [float(np.median(r)) if np.all(np.isfinite(r)) else np.nan for r in rows]


def _cell(x: float, fmt: str = ".3f") -> str:
  return "diverged" if not np.isfinite(x) else format(x, fmt)


def _sens_cell(s) -> str:
  s = np.asarray(s, float)
  return f"{s.mean():.3f} ({s.min():.3f}–{s.max():.3f})"


def markdown_tables(data: dict) -> str:
  """The results as Markdown tables (for docs/results/lm_stability.md)."""
  out = []
  p = out.append
  for res in data["results"]:
    lrs, cs, arms_ = res["lrs"], res["c_entry"], res["arms"]
    p(f"#### {res['domain']} ({res['info']['n_params']:,} parameters)\n")
    p(
      f"Final validation loss (median over seeds, capped arms at c_entry ="
      f" {res['c_default_entry']:g}), LR sensitivity (mean, range over seeds), best"
      " validation loss (per seed the lowest over LRs and evaluations; mean over seeds):\n"
    )
    p("| arm | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | LR sensitivity | best val |")
    p("| --- |" + " ---: |" * (len(lrs) + 2))
    for name, r in arms_.items():
      best = best_val(r)
      p(
        f"| `{name}` | "
        + " | ".join(_cell(m) for m in _med(r["lr_sweep"]["final_val"]))
        + f" | {_sens_cell(r['lr_sensitivity'])} | {best:.3f} |"
      )
    p(
      f"\nThe decisive test: final validation loss vs the cap c_entry at lr = {res['c_lr']:g},"
      " sensitivity in c next to sensitivity in LR (AdamW's LR sensitivity:"
      f" {np.mean(arms_['adamw']['lr_sensitivity']):.3f}):\n"
    )
    p("| arm | " + " | ".join(f"c {c:g}" for c in cs) + " | c sensitivity | LR sensitivity |")
    p("| --- |" + " ---: |" * (len(cs) + 2))
    for name, r in arms_.items():
      if "c_sweep" in r:
        p(
          f"| `{name}` | "
          + " | ".join(_cell(m) for m in _med(r["c_sweep"]["final_val"]))
          + f" | {_sens_cell(r['c_sensitivity'])} | {_sens_cell(r['lr_sensitivity'])} |"
        )
    p(
      f"\nFraction of (step, group) pairs where the cap binds (c_entry ="
      f" {res['c_default_entry']:g}, mean over seeds), per LR, and in the c sweep:\n"
    )
    p(
      "| arm | "
      + " | ".join(f"lr {lr:g}" for lr in lrs)
      + " | "
      + " | ".join(f"c {c:g}" for c in cs)
      + " |"
    )
    p("| --- |" + " ---: |" * (len(lrs) + len(cs)))
    for name, r in arms_.items():
      if r["lr_sweep"]["bind_fraction"] is not None:
        b = np.mean(r["lr_sweep"]["bind_fraction"], 1).tolist()
        b += np.mean(r["c_sweep"]["bind_fraction"], 1).tolist()
        p(f"| `{name}` | " + " | ".join(f"{x:.2f}" for x in b) + " |")
    lm = res["domain"].startswith("lm")
    key = "max_attn_logit" if lm else "max_out_logit_rms"
    p(
      "\n"
      + (
        "Largest attention logit over training" if lm else "Largest output-logit RMS over training"
      )
      + " (median over seeds), and mean update RMS per entry, per LR:\n"
    )
    p("| arm | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |")
    p("| --- |" + " ---: |" * len(lrs))
    for name, r in arms_.items():
      a = np.median(np.asarray(r["lr_sweep"][key], float), 1)
      u = np.median(np.asarray(r["lr_sweep"]["mean_update_rms"], float), 1)
      p(
        f"| `{name}` | "
        + " | ".join(f"{x:.3g} / {y:.2g}" for x, y in zip(a, u, strict=True))
        + " |"
      )
    p("")
  lm_results = [r for r in data["results"] if r["domain"].startswith("lm")]
  if len(lm_results) > 1:
    out += size_table(lm_results)
  return "\n".join(out)


def size_table(results: list[dict]) -> list[str]:
  """Every arm's LR and c sensitivity, best loss and largest attention logit at the
  highest LR, one column group per transformer size (``--full``)."""
  lr_top = results[0]["lrs"][-1]
  out = [
    "#### Both transformer sizes\n",
    "Sensitivity in LR and in c (mean over seeds), best validation loss, largest attention"
    f" logit at lr = {lr_top:g} (median over seeds):\n",
  ]
  head = "| arm |"
  for res in results:
    name = res["domain"].removeprefix("lm ")
    head += f" {name}: LR sens. | c sens. | best val | attn. logit |"
  out += [head, "| --- |" + " ---: |" * (4 * len(results))]
  for arm in results[0]["arms"]:
    row = f"| `{arm}` |"
    for res in results:
      r = res["arms"][arm]
      c = f"{np.mean(r['c_sensitivity']):.3f}" if "c_sensitivity" in r else "–"
      logit = float(np.median(np.asarray(r["lr_sweep"]["max_attn_logit"][-1], float)))
      row += f" {np.mean(r['lr_sensitivity']):.3f} | {c} | {best_val(r):.3f} | {logit:.3g} |"
    out.append(row)
  out.append("")
  return out


def headline(res: dict) -> str:
  """AdamW's LR sensitivity vs each relativistic arm's in LR and in c."""
  a = res["arms"]
  parts = [f"{res['domain']}: adamw LR sens. {np.mean(a['adamw']['lr_sensitivity']):.3f}"]
  for name, r in a.items():
    if name.startswith("relativistic") and "c_sensitivity" in r:
      parts.append(
        f"{name.split(' ', 1)[1]} LR {np.mean(r['lr_sensitivity']):.3f}"
        f" / c {np.mean(r['c_sensitivity']):.3f}"
      )
  return "; ".join(parts)


def plot(results: list[dict], path: Path) -> None:
  plt = pyplot()

  cmap = plt.get_cmap("tab20")
  n = len(results)
  fig, axes = plt.subplots(n, 4, figsize=(26, 5.5 * n), squeeze=False)
  for row, res in zip(axes, results, strict=True):
    cap = res["cap_loss"]
    names = list(res["arms"])
    for i, name in enumerate(names):
      r = res["arms"][name]
      color, style = cmap(i % 20), "-" if name.startswith("relativistic") else "--"
      for ax, key, grid in ((row[0], "lr_sweep", res["lrs"]), (row[1], "c_sweep", res["c_entry"])):
        if key not in r:
          continue
        final = np.asarray(r[key]["final_val"], float)
        capped = np.minimum(np.where(np.isfinite(final), final, np.inf), cap)
        ax.plot(grid, capped.mean(1), style, marker="o", ms=3, color=color, label=name)
        ax.fill_between(grid, capped.min(1), capped.max(1), color=color, alpha=0.12)
      a = np.asarray(r["lr_sweep"]["max_attn_logit"], float)
      if np.isfinite(a).any():
        row[3].plot(res["lrs"], np.median(a, 1), style, marker="o", ms=3, color=color)
      else:
        o = np.asarray(r["lr_sweep"]["max_out_logit_rms"], float)
        row[3].plot(res["lrs"], np.median(o, 1), style, marker="o", ms=3, color=color)
    adam = res["arms"]["adamw"]
    adam_final = np.minimum(np.asarray(adam["lr_sweep"]["final_val"], float), cap)
    row[1].plot(
      res["c_entry"],
      np.mean(np.nan_to_num(adam_final, nan=cap), 1),
      ":k",
      lw=2,
      label="adamw vs LR (LR grid on this axis: lr/10)",
    )
    for ax, xl, t in (
      (row[0], "peak learning rate", "final val loss vs LR"),
      (
        row[1],
        f"c_entry (cap per entry) at lr = {res['c_lr']:g}",
        "final val loss vs c (the decisive test)",
      ),
    ):
      ax.axhline(cap, color="k", lw=0.8, ls=":")
      ax.set_xscale("log")
      ax.set_xlabel(xl)
      ax.set_ylabel("final validation loss (capped at ln K)")
      ax.set_title(f"{res['domain']}: {t}; mean, range over seeds")
      ax.grid(alpha=0.3)
    row[0].legend(fontsize=7)
    row[1].legend(fontsize=7)
    # Sensitivity bars: in LR (all arms) and in c (capped arms).
    x = np.arange(len(names))
    s_lr = [np.mean(res["arms"][k]["lr_sensitivity"]) for k in names]
    e_lr = [np.ptp(res["arms"][k]["lr_sensitivity"]) / 2 for k in names]
    s_c = [np.mean(res["arms"][k].get("c_sensitivity", [np.nan])) for k in names]
    e_c = [np.ptp(res["arms"][k].get("c_sensitivity", [np.nan])) / 2 for k in names]
    row[2].barh(x + 0.2, s_lr, 0.4, xerr=e_lr, label="sensitivity in LR")
    row[2].barh(x - 0.2, s_c, 0.4, xerr=e_c, label=f"sensitivity in c at lr={res['c_lr']:g}")
    row[2].set_yticks(x, names, fontsize=8)
    row[2].invert_yaxis()
    row[2].set_xlabel("sensitivity (Wortsman et al.; lower = less sensitive)")
    row[2].set_title("LR and c sensitivity (mean, half-range over seeds)")
    row[2].legend(fontsize=8)
    row[2].grid(alpha=0.3, axis="x")
    lm = res["domain"].startswith("lm")
    row[3].set_xscale("log")
    row[3].set_yscale("log")
    row[3].set_xlabel("peak learning rate")
    row[3].set_title(
      "largest attention logit over training (median over seeds)"
      if lm
      else "largest output-logit RMS over training (median over seeds)"
    )
    row[3].grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=70)
  plt.close(fig)


def plot_logit_growth(results: list[dict], path: Path, lrs=(1e-2, 1e-1, 1.0)) -> None:
  """Largest attention logit (transformer) or output-logit RMS (MLP) vs step, seed 0."""
  plt = pyplot()

  cmap = plt.get_cmap("tab20")
  fig, axes = plt.subplots(
    len(results), len(lrs), figsize=(6 * len(lrs), 4.5 * len(results)), squeeze=False
  )
  for row, res in zip(axes, results, strict=True):
    lm = res["domain"].startswith("lm")
    key = "max_attn_logit" if lm else "out_logit_rms"
    for ax, lr in zip(row, lrs, strict=True):
      if lr not in res["lrs"]:
        ax.axis("off")
        continue
      j = res["lrs"].index(lr)
      for i, (name, r) in enumerate(res["arms"].items()):
        y = np.asarray(r["lr_curves_seed0"][key][j], float)
        style = "-" if name.startswith("relativistic") else "--"
        ax.plot(10 * np.arange(1, y.size + 1), y, style, color=cmap(i % 20), label=name)
      ax.set_yscale("log")
      ax.set_xlabel("step")
      ax.set_title(
        f"{res['domain']}, lr = {lr:g}: "
        + ("largest attention logit" if lm else "output-logit RMS")
        + " (seed 0)"
      )
      ax.grid(alpha=0.3)
    row[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=70)
  plt.close(fig)


def spike_table(data: dict) -> list[str]:
  """The --spikes table: per arm and scenario, final validation loss and loss spikes."""
  cfg, arms_ = data["config"], data["arms"]
  names = [sc["name"] for sc in cfg["scenarios"]]
  lines = [
    f"\n== --spikes: {cfg['steps']} steps, {cfg['seeds']} seeds, AdamW's best LR"
    f" {cfg['best_lr']:g}; spikes into {cfg['spike_layer']} at steps"
    f" {[int(f * cfg['steps']) for f, _ in cfg['scenarios'][1]['spikes']]}, rescale at"
    f" {int(cfg['scenarios'][2]['rescale_at'] * cfg['steps'])}",
    f"   loss spike: {cfg['spike_definition']}",
    "   cell: final val loss (mean over seeds) | loss spikes per run | highest loss ratio to"
    " the running minimum | steps to recover (mean spike length) | update-norm peak (largest"
    " global update norm in the 10 steps from the first injection over the median of the 20"
    " before; at the same step in the other scenarios)",
    "   'adamw (no grad clip)' is the recipe without its gradient clip; every guard is on"
    " that AdamW (no gradient clip either)",
  ]
  lines.append(f"{'arm':<28s}" + "".join(f" {n:>33s}" for n in names))
  for name, r in arms_.items():
    cells = []
    for n in names:
      s = r["scenarios"][n]
      f = np.asarray(s["final_val"], float)
      fv = f"{f.mean():.3f}" if np.all(np.isfinite(f)) else "diverged"
      cells.append(
        f"{fv} |{np.mean(s['n_spikes']):3.1f} |{np.mean(s['max_height']):5.2f}"
        f" |{np.mean(s['recover_steps']):4.0f} |{np.mean(s['update_norm_peak']):5.2f}"
      )
    lines.append(f"{name:<28s}" + "".join(f" {c:>33s}" for c in cells))
  ks = [n for n in arms_ if n.startswith("relative k=")]
  lines.append(
    "\n-- sensitivity to k (relative k in " + ", ".join(k[11:] for k in ks) + "):"
    " range over k of the final val loss and of the highest loss ratio; update-norm peak per k"
  )
  for n in names:
    f = [np.mean(arms_[k]["scenarios"][n]["final_val"]) for k in ks]
    h = [np.mean(arms_[k]["scenarios"][n]["max_height"]) for k in ks]
    u = [np.mean(arms_[k]["scenarios"][n]["update_norm_peak"]) for k in ks]
    lines.append(
      f"{n:<28s} final {min(f):.3f}..{max(f):.3f}   highest loss ratio {min(h):.2f}..{max(h):.2f}"
      f"   update-norm peak {' / '.join(f'{x:.2f}' for x in u)}"
    )
  sc = names[2]
  a = arms_["adamw (no grad clip)"]["scenarios"][sc]
  g = arms_["relative k=2"]["scenarios"][sc]
  lines.append(
    f"\n{sc}: update-norm peak, relative k=2 {np.mean(g['update_norm_peak']):.2f}x vs AdamW"
    f" {np.mean(a['update_norm_peak']):.2f}x; loss spikes {np.mean(g['n_spikes']):.1f} vs"
    f" {np.mean(a['n_spikes']):.1f}; final val loss {np.mean(g['final_val']):.3f} vs"
    f" {np.mean(a['final_val']):.3f}"
  )
  return lines


def plot_spikes(data: dict, path: Path) -> None:
  """Seed 0 of the spiked runs: smoothed training loss and global update norm."""
  plt = pyplot()

  cfg = data["config"]
  shown = [
    "adamw (no grad clip)",
    "adamw + grad clip 1",
    "hist clip (mean+2sd, 128)",
    "stable_adamw",
    "relative k=2",
  ]
  scs = cfg["scenarios"][1:3]
  fig, axes = plt.subplots(2, len(scs), figsize=(7 * len(scs), 7), sharex=True, squeeze=False)
  for j, sc in enumerate(scs):
    for name in shown:
      c = data["arms"][name]["scenarios"][sc["name"]]["curves_seed0"]
      y = np.asarray(c["train_loss"], float)
      n = y.size // SPIKE_BLOCK
      smooth = y[: n * SPIKE_BLOCK].reshape(n, SPIKE_BLOCK).mean(1)
      x = SPIKE_BLOCK * (np.arange(n) + 0.5)
      axes[0, j].plot(x, smooth, lw=1.2, label=name)
      axes[1, j].plot(np.asarray(c["update_norm"], float), lw=0.8, label=name)
    marks = [f for f, _ in sc["spikes"]] or [sc["rescale_at"]]
    for f in marks:
      for ax in axes[:, j]:
        ax.axvline(f * cfg["steps"], color="grey", ls=":", lw=0.8)
    axes[0, j].set_title(f"{sc['name']} (seed 0)")
    axes[0, j].set_yscale("log")
    axes[0, j].set_ylabel(f"training loss (mean of {SPIKE_BLOCK} steps)")
    axes[1, j].set_yscale("log")
    axes[1, j].set_ylabel("global update norm")
    axes[1, j].set_xlabel("step")
    axes[0, j].grid(alpha=0.3)
    axes[1, j].grid(alpha=0.3)
  axes[0, 0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("results", type=Path, help="a sweep's JSON")
  parser.add_argument("--replot", action="store_true", help="redraw its PNGs next to it")
  args = parser.parse_args(argv)
  data = json.loads(args.results.read_text())
  print(markdown_tables(data))
  if args.replot:
    out = args.results.with_suffix("")
    plot(data["results"], out.with_suffix(".png"))
    plot_logit_growth(data["results"], out.parent / (out.name + "_logits.png"))


if __name__ == "__main__":
  main()
