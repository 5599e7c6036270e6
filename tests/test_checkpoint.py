"""Checkpoints with Orbax: state round-trips, and interrupted runs resume exactly.

A run is interrupted at step ``K``: its parameters and optimizer state are
saved with ``orbax.checkpoint.StandardCheckpointer``; a *fresh process*
(``python tests/test_checkpoint.py resume …``) restores them into the abstract
state of a newly built optimizer (``jax.eval_shape(tx.init, params)``),
trains to step ``T`` and saves the result, which must equal the uninterrupted
run bit for bit. The optimizers include the ``speed_limit_warmup`` schedule (its
step count crosses ``K``), ``optax.MultiSteps`` (``K`` falls inside an
accumulation), ``optax.inject_hyperparams`` with a schedule, bfloat16
parameters and ``optax.apply_if_finite`` around a skipped NaN step.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import relax_optax

T = 10  # steps in all
K = 4  # the interruption (after K steps)
NAN_STEP = 6  # for "apply-if-finite": the batch at this step is bad


def _adam_warmup() -> optax.GradientTransformation:
  return relax_optax.relativistic_adam(
    0.05, speed_limit=relax_optax.speed_limit_warmup(0.02, 7), mode="global"
  )


def _multi_steps() -> optax.GradientTransformation:
  inner = relax_optax.relativistic_adamw(
    0.05,
    speed_limit=relax_optax.speed_limit_warmup(0.02, 5),
    mode="per_component",
    formula="tanh",
    weight_decay=1e-2,
  )
  return optax.MultiSteps(inner, every_k_schedule=3)  # K = 4: mid-accumulation


def _inject_hyperparams() -> optax.GradientTransformation:
  return optax.inject_hyperparams(
    relax_optax.relativistic_adam,
    static_args=("mode", "formula"),
  )(
    learning_rate=optax.cosine_decay_schedule(0.1, T),
    speed_limit=relax_optax.speed_limit_warmup(0.03, 6),
    mode="per_param",
  )


def _bfloat16() -> optax.GradientTransformation:
  return relax_optax.relativistic_adam(0.05, speed_limit=0.02, mode="global", mu_dtype=jnp.bfloat16)


def _apply_if_finite() -> optax.GradientTransformation:
  return optax.apply_if_finite(
    optax.MultiSteps(_adam_warmup(), every_k_schedule=2), max_consecutive_errors=2
  )


CONFIGS: dict[str, tuple[Callable[[], optax.GradientTransformation], jnp.dtype]] = {
  "adam-warmup": (_adam_warmup, jnp.float32),
  "multi-steps": (_multi_steps, jnp.float32),
  "inject-hyperparams": (_inject_hyperparams, jnp.float32),
  "bfloat16": (_bfloat16, jnp.bfloat16),
  "apply-if-finite": (_apply_if_finite, jnp.float32),
}


def _init_params(dtype) -> dict[str, jax.Array]:
  rng = np.random.default_rng(0)
  return {
    "w": jnp.asarray(rng.normal(size=(3, 2)), dtype),
    "b": jnp.zeros(2, dtype),
  }


def _batch(name: str, t: int) -> tuple[np.ndarray, np.ndarray]:
  """The batch of step ``t``: a function of ``t`` only, as a data loader's."""
  rng = np.random.default_rng(100 + t)
  x = rng.normal(size=(8, 3)).astype(np.float32)
  y = x @ np.asarray([[1.0, 0.0], [-2.0, 1.0], [0.5, 3.0]], np.float32)
  if name == "apply-if-finite" and t == NAN_STEP:
    x[0, 0] = np.nan
  return x, y


def _make_step(tx: optax.GradientTransformation):
  def loss(params, x, y):
    pred = x.astype(params["w"].dtype) @ params["w"] + params["b"][None]
    return jnp.mean((pred.astype(jnp.float32) - y) ** 2)

  @jax.jit
  def step(params, state, x, y):
    grads = jax.grad(loss)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step


@functools.cache
def _step(name: str):
  return _make_step(CONFIGS[name][0]())  # one compile per configuration


def _train(name: str, params, state, start: int, stop: int):
  step = _step(name)
  for t in range(start, stop):
    params, state = step(params, state, *_batch(name, t))
  return params, state


def _abstract(name: str) -> dict:
  """What a fresh process knows before restoring: shapes, dtypes, structure."""
  tx, dtype = CONFIGS[name][0](), CONFIGS[name][1]
  params = jax.eval_shape(lambda: _init_params(dtype))
  return {
    "params": params,
    "opt_state": jax.eval_shape(tx.init, params),
    "step": jax.ShapeDtypeStruct((), jnp.int32),
  }


def _save(path: Path, params, state, step: int) -> None:
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, {"params": params, "opt_state": state, "step": jnp.asarray(step)})
  checkpointer.wait_until_finished()
  checkpointer.close()


def _restore(path: Path, name: str) -> dict:
  checkpointer = ocp.StandardCheckpointer()
  restored = checkpointer.restore(path, _abstract(name))
  checkpointer.close()
  return restored


def _resume_all(ckpt_root: Path, out_root: Path) -> None:
  """The fresh process: restore each interrupted run, finish it, save it."""
  for name in CONFIGS:
    restored = _restore(ckpt_root / name, name)
    start = int(restored["step"])
    params, state = _train(name, restored["params"], restored["opt_state"], start, T)
    _save(out_root / name, params, state, T)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
  """Uninterrupted runs (in this process) and resumed ones (in a fresh one)."""
  root = tmp_path_factory.mktemp("checkpoints")
  ckpt_root, out_root = root / "at_k", root / "resumed"
  uninterrupted = {}
  for name, (make, dtype) in CONFIGS.items():
    tx = make()
    params = _init_params(dtype)
    params_k, state_k = _train(name, params, tx.init(params), 0, K)
    _save(ckpt_root / name, params_k, state_k, K)
    uninterrupted[name] = _train(name, params_k, state_k, K, T)
  proc = subprocess.run(
    [sys.executable, __file__, "resume", str(ckpt_root), str(out_root)],
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
    env=dict(os.environ),
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return {
    name: {
      "uninterrupted": uninterrupted[name],
      "resumed": _restore(out_root / name, name),
      "at_k": _restore(ckpt_root / name, name),
    }
    for name in CONFIGS
  }


@pytest.mark.parametrize("name", list(CONFIGS))
def test_resumed_run_is_bit_identical(runs, name):
  params, state = runs[name]["uninterrupted"]
  resumed = runs[name]["resumed"]
  # assert_trees_all_equal: exact equality (NaN == NaN), same structure.
  chex.assert_trees_all_equal(resumed["params"], params, strict=True)
  chex.assert_trees_all_equal(resumed["opt_state"], state, strict=True)
  chex.assert_trees_all_equal_dtypes(resumed["opt_state"], state)
  assert int(resumed["step"]) == T
  chex.assert_tree_all_finite(params)  # the NaN batch, if any, was skipped
  # The run is not trivial: it moved after the interruption.
  moved = runs[name]["at_k"]["params"]["w"]
  assert not np.array_equal(np.asarray(moved), np.asarray(params["w"]))


def test_interruption_falls_inside_warmup_and_accumulation(runs):
  """The configurations exercise what they claim to at step K."""
  multi = runs["multi-steps"]["at_k"]["opt_state"]
  assert int(multi.mini_step) == K % 3 != 0  # mid-accumulation
  warm = runs["adam-warmup"]["at_k"]["opt_state"][-1]
  assert isinstance(warm, relax_optax.ScaleByRelativisticState) and int(warm.count) == K < 7
  skipped = runs["apply-if-finite"]["resumed"]["opt_state"]
  assert int(skipped.total_notfinite) == 1  # the NaN step was after K


@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_round_trips_with_types_and_dtypes(tmp_path, name):
  make, dtype = CONFIGS[name]
  tx = make()
  params = _init_params(dtype)
  params, state = _train(name, params, tx.init(params), 0, 2)
  _save(tmp_path / "ckpt", params, state, 2)
  restored = _restore(tmp_path / "ckpt", name)
  chex.assert_trees_all_equal(restored["opt_state"], state, strict=True)
  chex.assert_trees_all_equal_dtypes(restored["opt_state"], state)
  # The same NamedTuple classes (not dicts or lists), so update() accepts it.
  assert jax.tree.structure(restored["opt_state"]) == jax.tree.structure(state)


if __name__ == "__main__":
  if len(sys.argv) == 4 and sys.argv[1] == "resume":
    jax.config.update("jax_numpy_rank_promotion", "raise")
    _resume_all(Path(sys.argv[2]), Path(sys.argv[3]))
  else:
    sys.exit("usage: python tests/test_checkpoint.py resume CKPT_ROOT OUT_ROOT")
