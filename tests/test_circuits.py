"""Tests for examples/circuits.py (the Flax NNX mathematical-circuit tasks) and its
harness benchmarks/circuits.py."""

import itertools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("flax")

from flax import nnx

from benchmarks import circuits as harness
from examples import circuits

TASKS = circuits.TASKS
NOTEBOOK = circuits.NOTEBOOK


def _keys(seed=0):
  return jax.random.split(jax.random.key(seed))


def test_small_k_matmul_matches_dot_and_its_gradient():
  kw, kx, kg = jax.random.split(jax.random.key(0), 3)
  w = jax.random.normal(kw, (3, 2))
  xt = jax.random.normal(kx, (3, 50))
  g = jax.random.normal(kg, (2, 50))
  chex.assert_trees_all_close(circuits.small_k_matmul(w, xt), w.T @ xt, rtol=1e-6, atol=1e-6)

  def f(fn):
    return lambda w, xt: jnp.sum(fn(w, xt) * g)

  got = jax.grad(f(circuits.small_k_matmul), argnums=(0, 1))(w, xt)
  want = jax.grad(f(lambda w, xt: w.T @ xt), argnums=(0, 1))(w, xt)
  chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)


def test_torch_linear_init_is_uniform_in_one_over_sqrt_fan_in():
  k = np.asarray(circuits.torch_linear_init(jax.random.key(0), (4, 20000)))
  assert np.all(np.abs(k) <= 0.5)
  assert np.max(np.abs(k)) > 0.499
  np.testing.assert_allclose(np.var(k), 0.25 / 3, rtol=0.03)  # var of U(-b, b) = b²/3


@pytest.mark.parametrize("name", list(TASKS))
def test_init_notebook_loads_the_printed_weights(name):
  task = TASKS[name]
  model = circuits.make_model(task, "notebook")
  assert [k.shape for k in circuits.kernels(model)] == [
    (a, b) for a, b in itertools.pairwise(task.sizes)
  ]
  for got, printed in zip(circuits.kernels(model), NOTEBOOK[name].init, strict=True):
    np.testing.assert_array_equal(got, np.asarray(printed, np.float32))
  # The notebook's "Starting Loss" (on its own 1000 test points) is matched by ours on
  # 100k points up to its sampling error and the 4-decimal rounding of the weights.
  xt, yt = circuits.test_set(task, jax.random.key(0), n=100_000)
  np.testing.assert_allclose(
    float(circuits.mse(model, xt, yt)), NOTEBOOK[name].start_loss, rtol=0.08
  )


def test_exact_min_construction_has_zero_error():
  """(2, 3, 2, 1) bias-free ReLU represents min(x1, x2) exactly.

  min(a, b) = a - relu(a - b) and a = relu(a) - relu(-a): the first layer computes
  relu(a), relu(-a), relu(a - b); the second passes m = h1 - h2 - h3 on as relu(m)
  and relu(-m); the output is relu(m) - relu(-m) = m.
  """
  task = TASKS["min"]
  model = circuits.make_model(task, "random")
  w1 = [[1.0, -1.0, 1.0], [0.0, 0.0, -1.0]]
  w2 = [[1.0, -1.0], [-1.0, 1.0], [-1.0, 1.0]]
  w3 = [[1.0], [-1.0]]
  for layer, w in zip(model.layers, [w1, w2, w3], strict=True):
    layer.kernel[...] = jnp.asarray(w)
  grid = jnp.linspace(-1.0, 1.0, 101)
  x = jnp.stack(jnp.meshgrid(grid, grid), -1).reshape(-1, 2)  # batch-major (B, 2)
  np.testing.assert_allclose(model(x)[:, 0], np.minimum(x[:, 0], x[:, 1]), atol=1e-6)
  xt, yt = circuits.test_set(task, jax.random.key(1), n=100_000)
  loss = circuits.mse(model, xt, yt)
  assert float(loss) < 1e-13
  # Zero loss is the global minimum, so the gradient vanishes there too.
  grads = nnx.grad(lambda m: circuits.mse(m, xt, yt))(model)
  assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads)) < 1e-6


def test_short_run_learns_identity():
  task = TASKS["identity"]
  data_key, test_key = _keys()
  tx = circuits.make_optimizer("adam", 1e-2)
  result = circuits.train(
    [circuits.make_model(task, "notebook")],
    task,
    tx,
    3000,
    data_key=data_key,
    test_key=test_key,
    batch_size=256,
    log_every=3000,
  )
  assert result.steps == [0, 3000]
  assert result.test_mse[0, 0] > 0.1
  assert result.test_mse[0, -1] < 1e-4


@pytest.mark.parametrize("optimizer", ["sgd", "relativistic_adam"])
def test_chunked_scan_equals_plain_per_step_nnx_loop(optimizer):
  task = TASKS["min"]
  data_key, test_key = _keys(3)
  steps = 2 * circuits.CHUNK * 9 + 5  # chunks and a remainder
  lr = 0.05 if optimizer == "sgd" else 3e-3
  tx = circuits.make_optimizer(optimizer, lr, speed_limit=1e-3)
  fast = circuits.make_model(task, "random", seed=2)
  slow = circuits.make_model(task, "random", seed=2)
  start = circuits.kernels(slow)
  losses = circuits.train_simple(slow, task, tx, steps, data_key=data_key, batch_size=64)
  circuits.train(
    [fast], task, tx, steps, data_key=data_key, test_key=test_key, batch_size=64, log_every=steps
  )
  assert losses[-1] < losses[0]
  moved = max(np.max(np.abs(a - b)) for a, b in zip(circuits.kernels(slow), start, strict=True))
  assert moved > 1e-2  # the comparison below is not vacuous
  for a, b in zip(circuits.kernels(fast), circuits.kernels(slow), strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


def test_vmap_over_seeds_equals_training_each_alone():
  task = TASKS["add"]
  data_key, test_key = _keys(4)
  tx = circuits.make_optimizer("relativistic_adam", 1e-2, speed_limit=5e-3)
  steps, seeds = 2 * circuits.CHUNK + 3, [0, 1]
  together = circuits.train(
    [circuits.make_model(task, "random", s) for s in seeds],
    task,
    tx,
    steps,
    data_key=data_key,
    test_key=test_key,
    batch_size=128,
    log_every=steps,
  )
  assert together.test_mse.shape == (2, 2)
  for i, s in enumerate(seeds):
    alone = circuits.train(
      [circuits.make_model(task, "random", s)],
      task,
      tx,
      steps,
      data_key=data_key,
      test_key=test_key,
      batch_size=128,
      log_every=steps,
    )
    np.testing.assert_allclose(together.test_mse[i], alone.test_mse[0], rtol=1e-4)
    for a, b in zip(together.kernels, alone.kernels, strict=True):
      np.testing.assert_allclose(a[i], b[0], rtol=1e-5, atol=1e-6)
  # Different initialisations do train differently.
  assert not np.allclose(together.kernels[0][0], together.kernels[0][1])


def test_notebook_data_file_matches_the_tasks():
  assert set(NOTEBOOK) == set(TASKS)
  for name, task in TASKS.items():
    nb = NOTEBOOK[name]
    assert [np.shape(k) for k in nb.init] == list(itertools.pairwise(task.sizes))
    assert nb.losses[0] < nb.start_loss * 1.01  # the first print, after one update
    assert circuits.notebook_loss_at(task, 0) == nb.losses[0]
    assert circuits.notebook_loss_at(task, 1) is None
  assert len(NOTEBOOK["min"].losses) == 35 and NOTEBOOK["min"].final is None
  assert NOTEBOOK["identity"].final[1] == [[-1.0872], [0.9957]]


@pytest.mark.smoke
def test_example_command_line_prints_the_notebook_comparison(capsys):
  # Fewer steps than a chunk: the chunked scan (slow to compile) is tested above.
  results = circuits.main(["--task", "identity", "--steps", "10", "--log-every", "5", "--no-pin"])
  printed = capsys.readouterr().out
  assert "XLA device: CPU" in printed
  assert [r.steps for r in results] == [[0, 5, 10]]
  assert "(notebook: 0.4506)" in printed  # the notebook's print at step 0, next to ours
  assert "| identity | 10 |" in printed


@pytest.mark.smoke
def test_harness_command_line_runs_and_writes_json(tmp_path, capsys):
  out = tmp_path / "r.json"
  harness.main(
    [
      "--task",
      "negation",
      "--steps",
      "40",
      "--log-every",
      "20",
      "--no-pin",
      "--optimizer",
      "relativistic_adam",
      "--json",
      str(out),
    ]
  )
  printed = capsys.readouterr().out
  assert "XLA device: CPU" in printed
  data = json.loads(out.read_text())
  assert data["init"] == "notebook"
  r = data["tasks"]["negation"]
  assert r["steps"] == [0, 20, 40]
  # Step 0 is the notebook's printed initialisation, before any update.
  np.testing.assert_allclose(
    np.asarray(r["kernels"][0])[0], np.asarray(NOTEBOOK["negation"].init[0]), atol=0.05
  )


@pytest.mark.smoke
def test_harness_seeds_plot_and_json_overlay(tmp_path, capsys):
  pytest.importorskip("matplotlib")
  out = tmp_path / "s.json"
  harness.main(
    [
      "--task",
      "add",
      "--seeds",
      "2",
      "--steps",
      "8",
      "--log-every",
      "8",
      "--no-pin",
      "--json",
      str(out),
      "--plot",
      str(tmp_path / "s.png"),
    ]
  )
  assert "| add | 8 |" in capsys.readouterr().out
  data = json.loads(out.read_text())
  assert data["seeds"] == 2
  mse = np.asarray(data["tasks"]["add"]["test_mse"], float)
  assert mse.shape == (2, 2)  # (seeds, logged steps 0 and 8)
  assert not np.allclose(mse[0], mse[1])  # two initialisations, two different runs
  harness.main(["--plot-json", str(out), "--plot", str(tmp_path / "o.png")])
  for png in ("s.png", "o.png"):
    assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
