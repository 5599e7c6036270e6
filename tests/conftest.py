"""Strict settings for the whole suite: silent rank promotion is an error."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_collection_modifyitems(config, items):
  """Skips the ``xla_cpu`` tests (HLO text, flop counts) on any other backend."""
  del config
  import pytest

  if jax.default_backend() == "cpu":
    return
  skip = pytest.mark.skip(reason=f"asserts on XLA:CPU's output; backend is {jax.default_backend()}")
  for item in items:
    if "xla_cpu" in item.keywords:
      item.add_marker(skip)
