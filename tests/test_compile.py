"""Compile cost is a feature: the compiled step grows linearly with the leaves.

Timed targets live in ``benchmarks/compile_time.py``; here the structure is
checked: the optimized HLO's instruction count grows by the same amount for
every leaf added (no construct whose HLO grows faster than the tree), and by
no more per leaf than Adam with Optax's own global-norm clipping, plus a
fixed allowance for the speed limit's elementwise work.
"""

import functools

import pytest

from benchmarks import compile_time

NAMES = [
  "radam:global:lorentz",
  "radam:per_param:tanh",
  "radam:per_component:reference",
  "chain:global:reference",
  "chain:per_param:lorentz",
]


@functools.cache
def _instructions(name: str, n_leaves: int) -> int:
  return compile_time.compile_once(name, n_leaves)["hlo_instructions"]


def _per_leaf(name: str) -> tuple[float, float]:
  a, b, c = (_instructions(name, n) for n in (10, 20, 40))
  return (b - a) / 10, (c - b) / 20


@pytest.mark.slow
@pytest.mark.xla_cpu
@pytest.mark.parametrize("name", NAMES)
def test_hlo_grows_linearly_and_like_adam_with_clipping(name):
  first, second = _per_leaf(name)
  # Linear: each added leaf costs the same (within a few instructions).
  assert abs(second - first) <= 0.05 * first + 2, (first, second)
  # No more per leaf than Adam + clip_by_global_norm, plus the clamp, the
  # norm's own expression of Adam's update and the factor (measured: 20-30).
  _, clip = _per_leaf("adam+clip")
  assert second <= clip + 40, (second, clip)
