"""The sweep: every arm over the LR grid and, for the capped arms, over the c grid.

Does the speed limit stabilise training, or rename the step size? For every arm the
LR sensitivity, and for every capped arm the sensitivity in c at a high learning rate:
a cap that only renames the step size is as sensitive in c as AdamW is in LR.

Run from the repository root::

  python -m benchmarks.lm_stability            # default: one transformer and digits, ~14 min
  python -m benchmarks.lm_stability --full     # adds d 128, depth 3: ~55 min
  python -m benchmarks.lm_stability --quick    # a tiny grid, under a minute
  python -m benchmarks.lm_stability --commit-results   # update benchmarks/results/

Writes ``lm_stability.json`` (``lm_stability_quick.json`` with ``--quick``), ``.png`` and
``_logits.png`` under ``benchmarks/results/scratch/``, or with ``--commit-results``
under ``benchmarks/results/``; ``python -m benchmarks.lm_stability.report`` prints its
Markdown tables.
"""

from __future__ import annotations

import argparse
import dataclasses

from tqdm import tqdm

from benchmarks._common import add_output_args, output_path, run_metadata, run_start, write_json
from benchmarks.lm_stability import configs, data, report
from benchmarks.lm_stability.train import run_domain, run_steps


def run(config: configs.Config) -> dict:
  """Trains every domain of ``config``; prints the tables; returns config and results."""
  seeds = list(range(config.seeds))
  corpus = data.stdlib_corpus()
  sizes = [(config.d, config.depth)]
  if config.full:
    sizes.append(tuple(config.full_size))
  domains = []
  if "lm" in config.domains:
    domains += [data.config_lm_domain(corpus, config, d=d, depth=depth) for d, depth in sizes]
  if "digits" in config.domains:
    domains.append(
      data.digits_domain(width=config.digits_width, depth=config.digits_depth, batch=128)
    )

  total = sum(run_steps(d, config, seeds) for d in domains)
  print(
    f"corpus: {corpus.info['files']} stdlib files, {corpus.info['train_bytes']} train /"
    f" {corpus.info['val_bytes']} validation bytes; {len(seeds)} seeds;"
    f" LRs {list(config.lrs)}; c_entry {list(config.c_entry)} at lr {config.c_lr:g}"
  )
  start = run_start()
  results = []
  with tqdm(total=total, unit="step", smoothing=0.05) as bar:
    for domain in domains:
      results.append(run_domain(domain, config, seeds, bar))
  for res in results:
    report.print_tables(res)
  return {"config": dataclasses.asdict(config) | run_metadata(start), "results": results}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help=configs.quick.__doc__)
  configs.add_override_args(parser)
  add_output_args(parser, "lm_stability")
  args = parser.parse_args(argv)
  base = configs.quick() if args.quick else configs.full() if args.full else configs.default()
  config = configs.with_overrides(base, args)
  out = output_path(args, "lm_stability_quick" if args.quick else "lm_stability")
  results = run(config)
  results["config"]["quick"] = args.quick
  write_json(out.with_suffix(".json"), results)
  report.plot(results["results"], out.with_suffix(".png"))
  report.plot_logit_growth(results["results"], out.parent / (out.name + "_logits.png"))
  heads = [report.headline(res) for res in results["results"]]
  print(f"\nwrote {out.with_suffix('.json')}, .png ({results['config']['seconds']:.0f} s)")
  for h in heads:
    print(h)
  return results


if __name__ == "__main__":
  main()
