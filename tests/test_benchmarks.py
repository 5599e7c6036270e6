"""The pieces the benchmarks share (``benchmarks/_common.py``), and the benchmarks' and
examples' promise to leave the repository as they found it."""

import argparse
import json
import math
import subprocess
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from benchmarks import _common

ROOT = Path(__file__).resolve().parents[1]


def _parse(argv, directory=False):
  parser = argparse.ArgumentParser()
  _common.add_output_args(parser, "thing", directory=directory)
  return parser.parse_args(argv)


def test_runs_write_to_scratch_unless_asked_to_update_the_committed_results(tmp_path):
  assert _common.output_path(_parse([])) == _common.SCRATCH / "thing"
  assert _common.output_path(_parse(["--commit-results"])) == _common.RESULTS / "thing"
  assert _common.output_path(_parse(["--out", str(tmp_path / "x")])) == tmp_path / "x"
  assert _common.output_path(_parse([], directory=True)) == _common.SCRATCH
  assert _common.output_path(_parse([]), "other") == _common.SCRATCH / "other"


def test_scratch_folder_is_ignored_by_git():
  probe = _common.SCRATCH / "probe.json"
  out = subprocess.run(
    ["git", "check-ignore", "-q", str(probe)], cwd=ROOT, capture_output=True, check=False
  )
  if out.returncode == 128:
    pytest.skip("not a git checkout")
  assert out.returncode == 0, "benchmarks/results/scratch/ must be in .gitignore"


def test_write_json_turns_every_non_finite_value_into_null(tmp_path):
  data = {
    "a": [1.0, math.nan, math.inf, -math.inf],
    "b": np.array([np.nan, 2.0, -np.inf]),
    "c": (np.float32(np.inf), np.int64(3), np.float64(0.5)),
    "d": {"e": tmp_path, "f": None, "g": "NaN stays a string"},
  }
  path = _common.write_json(tmp_path / "sub" / "x.json", data)

  def reject(constant):
    raise ValueError(constant)

  back = json.loads(path.read_text(), parse_constant=reject)
  assert back == {
    "a": [1.0, None, None, None],
    "b": [None, 2.0, None],
    "c": [None, 3, 0.5],
    "d": {"e": str(tmp_path), "f": None, "g": "NaN stays a string"},
  }


def test_run_metadata_records_versions_load_and_wall_time():
  start = _common.run_start()
  meta = _common.run_metadata(start)
  assert meta["jax"] == jax.__version__ and meta["optax"] == optax.__version__
  assert meta["cpus"] >= 1 and meta["seconds"] >= 0
  assert len(meta["load_before"]) == len(meta["load_after"]) == 3
  assert "seconds" not in _common.run_metadata()
  json.dumps(meta, allow_nan=False)  # JSON as it is


def test_digits_are_sklearns_shuffled_and_scaled():
  sklearn = pytest.importorskip("sklearn.datasets")
  x0, y0 = sklearn.load_digits(return_X_y=True)
  x, y = _common.digits(0)
  perm = np.random.default_rng(0).permutation(len(y0))
  assert x.dtype == np.float32 and y.dtype == np.int32
  np.testing.assert_array_equal(y, y0[perm])
  np.testing.assert_allclose(x, x0[perm] / 16.0, rtol=1e-7)
  assert x.min() == 0.0 and x.max() == 1.0


def test_mlp_is_relu_between_linear_layers():
  from flax import nnx

  model = _common.MLP(3, 5, 2, 3, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (4, 3))
  h = np.asarray(x, np.float64)
  for i, layer in enumerate(model.layers):
    h = h @ np.asarray(layer.kernel[...]) + np.asarray(layer.bias[...])[None]
    if i < 2:
      h = np.maximum(h, 0.0)
  chex.assert_trees_all_close(model(x), h, rtol=1e-5, atol=1e-6)


def test_historical_clip_clips_at_mean_plus_sigmas_of_the_recorded_norms():
  tx = _common.historical_clip(sigma_factor=2.0, window=4, min_history=3)
  state = tx.init({"w": jnp.zeros(2)})
  norms = []
  for n in (1.0, 2.0, 3.0):  # history: no clipping before min_history norms
    u, state = tx.update({"w": jnp.array([n, 0.0])}, state)
    chex.assert_trees_all_close(u["w"], jnp.array([n, 0.0]))
    norms.append(n)
  limit = np.mean(norms) + 2.0 * np.std(norms)  # population σ, as Levanter's
  u, state = tx.update({"w": jnp.array([0.0, 100.0])}, state)
  np.testing.assert_allclose(float(jnp.linalg.norm(u["w"])), limit, rtol=1e-5)
  u, _ = tx.update({"w": jnp.array([0.0, 0.5])}, state)  # below the limit: unchanged
  chex.assert_trees_all_close(u["w"], jnp.array([0.0, 0.5]))


def test_sensitivity_counts_a_diverged_run_as_the_initial_loss():
  final = np.array([[1.0, 2.0], [np.nan, 0.5], [3.0, np.inf]])
  init = np.array([2.5, 2.5])
  # seed 0: capped [1, 2.5, 2.5], best 1 -> mean(0, 1.5, 1.5) = 1; seed 1: [2, 0.5, 2.5].
  np.testing.assert_allclose(_common.lr_sensitivity(final, init), [1.0, (1.5 + 0 + 2) / 3])


@pytest.mark.smoke
def test_high_lr_example_writes_nothing_without_out(tmp_path, monkeypatch):
  pytest.importorskip("matplotlib")
  from examples import high_lr_demo

  monkeypatch.chdir(tmp_path)
  args = ["--steps", "100", "--seeds", "1", "--depth", "3", "--tuned-lrs", "1e-3"]
  results = high_lr_demo.main(args)
  assert list(tmp_path.iterdir()) == []
  adam = next(r for r in results["summary"] if r["optimizer"] == "adam")
  assert adam["exploded_seeds"] == 1  # lr = 1 is far too large for Adam
  high_lr_demo.main([*args, "--out", str(tmp_path / "demo")])
  assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.json", "demo.png"]
