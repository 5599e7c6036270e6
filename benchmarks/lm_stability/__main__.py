"""``python -m benchmarks.lm_stability``: the sweep (see ``sweep.py``).

``--spikes`` and ``--step-time`` run the other experiments (``spikes.py``,
``step_time.py``), and ``--tables RESULTS.json`` prints a finished sweep's tables
(``report.py``), with the rest of the command line passed on.
"""

import sys

from benchmarks.lm_stability import report, spikes, step_time, sweep


def main(argv: list[str] | None = None) -> None:
  argv = sys.argv[1:] if argv is None else list(argv)
  if "--spikes" in argv:
    argv.remove("--spikes")
    spikes.main(argv)
  elif "--step-time" in argv:
    argv.remove("--step-time")
    step_time.main(argv)
  elif "--tables" in argv:
    argv.remove("--tables")
    report.main(argv)
  else:
    sweep.main(argv)


if __name__ == "__main__":
  main()
