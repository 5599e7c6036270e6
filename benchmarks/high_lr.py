"""Learning rate 1.0 on a deep ReLU MLP: the recorded run of ``examples/high_lr_demo.py``.

Runs the example with its defaults (12-layer ReLU MLP, teacher-student regression,
three seeds, 1,500 steps, every optimizer at learning rate 1.0) and writes its results,
``high_lr_demo.{json,png}``; the documentation's high-learning-rate page is built from
the committed ones.

Run from the repository root::

  python -m benchmarks.high_lr                    # ~2 minutes on one core; scratch folder
  python -m benchmarks.high_lr --commit-results   # update benchmarks/results/
"""

from __future__ import annotations

from benchmarks._common import add_output_args, output_path, run_metadata, run_start
from examples import high_lr_demo


def main(argv=None) -> dict:
  parser = high_lr_demo.parser()
  parser.description = __doc__.split("\n\n")[0]
  add_output_args(parser, "high_lr_demo")
  args = parser.parse_args(argv)
  start = run_start()
  results = high_lr_demo.run(args)
  results["config"] |= run_metadata(start)
  high_lr_demo.write(results, args, output_path(args))
  return results


if __name__ == "__main__":
  main()
