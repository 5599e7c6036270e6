"""Is ``per_component`` a stabiliser, or another renamed step size?

Three transformer sizes (width 64 / depth 2, 128 / 3, 192 / 3) and, at width 128, a run
twice as long. Arms: AdamW and AdamW + qk-layernorm, ``relativistic_adam``
``per_component`` (``lorentz`` and ``tanh``), its elementwise twins (AdamW's update
hard-capped entry by entry with ``optax.clip``, Adam-atan2, Lion) and ``global`` as the
renaming baseline. Uncapped arms are swept over the learning rate, capped arms over the
cap c at lr = 1; three seeds. The test, stated before the runs, is in ``renaming.py``.

Run from the repository root::

  python -m benchmarks.lm_stability.per_component --quick   # tiny models, < 1 min
  python -m benchmarks.lm_stability.per_component           # ~75 min on 2 cores
  python -m benchmarks.lm_stability.per_component --parts "d64 L2"   # one size only
  python -m benchmarks.lm_stability.per_component --commit-results

Each finished (size, arm) is written at once under
``benchmarks/results/scratch/lm_stability_per_component_runs/`` (``<out>_runs/`` with
``--out``); an interrupted run started again with the same command trains only what is
missing. The study's JSON and plots are written under ``benchmarks/results/scratch/``,
or with ``--commit-results`` under ``benchmarks/results/``
(``lm_stability_per_component.json``, ``.png``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path

from tqdm import tqdm

from benchmarks._common import (
  SCRATCH,
  add_output_args,
  output_path,
  run_metadata,
  run_start,
  write_json,
)
from benchmarks.lm_stability import configs, data, renaming
from benchmarks.lm_stability.optimizers import selected
from benchmarks.lm_stability.train import arm_steps, domain_header, init_params, run_arm


def _slug(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def _done(path: Path, config: dict) -> dict | None:
  """The finished arm stored at ``path`` if it was trained with ``config``, else None."""
  if not path.exists():
    return None
  stored = json.loads(path.read_text())
  return stored["result"] if stored["config"] == config else None


def run(parts: tuple[configs.Part, ...], run_dir: Path) -> dict:
  """Trains every part's arms not yet in ``run_dir``; returns the study's results."""
  corpus = data.stdlib_corpus()
  start = run_start()
  todo, plans = 0, []
  for part in parts:
    seeds = list(range(part.config.seeds))
    domain = data.config_lm_domain(corpus, part.config)
    key = json.loads(json.dumps(dataclasses.asdict(part.config)))
    paths, done = {}, {}
    for arm in selected("lm", part.config.arms):
      paths[arm.name] = run_dir / f"{_slug(part.name)}__{_slug(arm.name)}.json"
      done[arm.name] = _done(paths[arm.name], key)
      if done[arm.name] is None:
        todo += arm_steps(domain, arm, part.config, seeds)
    plans.append((part, seeds, domain, key, paths, done))
  results = []
  with tqdm(total=todo, unit="step", smoothing=0.05) as bar:
    for part, seeds, domain, key, paths, done in plans:
      params0 = init_params(domain, seeds)
      out = domain_header(domain, part.config, params0) | {"part": part.name}
      for arm in selected("lm", part.config.arms, out["info"]["n_params"]):
        res = done[arm.name]
        if res is None:
          bar.set_description(f"{part.name}: {arm.name}"[:40])
          res = run_arm(domain, arm, part.config, params0, seeds, bar)
          write_json(paths[arm.name], {"config": key, "result": res})
        out["arms"][arm.name] = res
      out["seconds"] = sum(r["seconds"] for r in out["arms"].values())
      results.append(out)
  meta = run_metadata(start)
  meta["seconds_training"] = sum(r["seconds"] for r in results)  # resumed arms included
  return {
    "config": {"parts": [{"name": p.name} | dataclasses.asdict(p.config) for p in parts]} | meta,
    "results": results,
  }


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help=configs.per_component_quick.__doc__)
  parser.add_argument("--parts", nargs="+", default=None, help="train only these parts, by name")
  add_output_args(parser, "lm_stability_per_component")
  args = parser.parse_args(argv)
  parts = configs.per_component_quick() if args.quick else configs.per_component()
  if args.parts:
    unknown = set(args.parts) - {p.name for p in parts}
    if unknown:
      parser.error(f"--parts: unknown {sorted(unknown)}; the parts are {[p.name for p in parts]}")
    parts = tuple(p for p in parts if p.name in args.parts)
  name = "lm_stability_per_component" + ("_quick" if args.quick else "")
  out = output_path(args, name)
  run_dir = out.with_name(out.name + "_runs") if args.out else SCRATCH / (name + "_runs")
  results = run(parts, run_dir)
  results["config"]["quick"] = args.quick
  write_json(out.with_suffix(".json"), results)
  print(renaming.markdown(results))
  renaming.plot(results, out.with_suffix(".png"))
  print(f"\nwrote {out.with_suffix('.json')}, .png ({results['config']['seconds']:.0f} s)")
  return results


if __name__ == "__main__":
  main()
