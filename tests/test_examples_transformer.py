"""examples/transformer.py end to end on a tiny configuration (a few seconds)."""

import math

import pytest

from examples import transformer


@pytest.mark.smoke
def test_transformer_example_trains_every_optimizer(tmp_path):
  results = transformer.main(
    ["--steps", "4", "--chunk", "2", "--width", "16", "--depth", "1", "--batch", "2",
     "--context", "8", "--out", str(tmp_path), "--no-plot"]
  )  # fmt: skip
  assert set(results) == {"good lr 0.01", "too-high lr 0.3"}
  for runs in results.values():
    assert set(runs) == {"adamw", "relativistic_adamw", "adamw + update clip"}
    for r in runs.values():
      assert len(r["train_loss"]) == 4
      assert math.isfinite(r["val_loss"])
      assert 0.5 * math.log(256) < r["train_loss"][0] < 2 * math.log(256)  # ~ uniform bytes
  assert (tmp_path / "results.json").exists()
