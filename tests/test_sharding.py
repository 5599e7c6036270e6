"""Sharded training: 8 simulated CPU devices, checked in a subprocess.

The device count of a JAX process is fixed when its backend starts, so the
checks below run in one child process started with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``; the rest of the suite
keeps its single device. Each ``check_*`` function is one guarantee; the child
runs them all and reports, per check, ``"ok"`` or the traceback, and
``test_sharded`` turns each report into its own pytest test.

Run ``python tests/test_sharding.py`` to execute the checks directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

N_DEVICES = 8
_CHECKS: dict[str, Callable[[], None]] = {}
# Checks that document a guarantee which does not hold yet (name -> reason).
_KNOWN_FAILURES: dict[str, str] = {}


def _check(fn: Callable[[], None]) -> Callable[[], None]:
  _CHECKS[fn.__name__] = fn
  return fn


# ---------------------------------------------------------------------------
# The checks (run in the child process, with 8 devices).
# ---------------------------------------------------------------------------


def _setup():
  import jax
  import jax.numpy as jnp
  import numpy as np

  params = {
    "dense1": {"kernel": jnp.zeros((16, 32)), "bias": jnp.zeros(32)},
    "dense2": {"kernel": jnp.zeros((32, 8)), "bias": jnp.zeros(8)},
  }
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda p: jnp.asarray(rng.normal(0.0, 0.3, p.shape), jnp.float32), params)
  x = jnp.asarray(rng.normal(size=(64, 16)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(64, 8)), jnp.float32)
  return params, x, y


def _loss(params, x, y):
  import jax.numpy as jnp

  h = jnp.tanh(x @ params["dense1"]["kernel"] + params["dense1"]["bias"][None])
  out = h @ params["dense2"]["kernel"] + params["dense2"]["bias"][None]
  return jnp.mean((out - y) ** 2)


def _quadratic_loss(params, targets, weight):
  """A loss without matmuls, whose gradients are sharded like the params."""
  import jax
  import jax.numpy as jnp

  terms = jax.tree.map(lambda p, t: jnp.mean(weight * (p - t) ** 2), params, targets)
  return sum(jax.tree.leaves(terms))


def _train(tx, params, x, y, steps: int = 4, loss_fn=_loss):
  """``steps`` jitted optimizer steps; returns params, state and losses."""
  import jax
  import optax
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  @jax.jit
  def step(params, state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  state = tx.init(params)  # outside jit: the moments take the params' shardings
  sharding = jax.tree.leaves(params)[0].sharding
  if isinstance(sharding, NamedSharding):
    # Step counts replicated over the mesh, as the step returns them (one compile).
    replicated = NamedSharding(sharding.mesh, P())
    state = jax.tree.map(lambda s: jax.device_put(s, replicated) if not s.ndim else s, state)
  losses = []
  for _ in range(steps):
    params, state, loss = step(params, state, x, y)
    losses.append(loss)
  return params, state, losses


def _optimizers(which: int):
  """Two optimizers per mesh, so that the two meshes cover all three modes."""
  import relax_optax

  # lr = 0.05 with c = 0.02: every group's Adam step is far above the limit,
  # so the scaling (and, in global mode, the norm over the whole model) is
  # what decides the step.
  if which == 0:
    yield "global", relax_optax.relativistic_adam(0.05, speed_limit=0.02, mode="global")
    yield "per_param", relax_optax.relativistic_adam(0.05, speed_limit=0.02)
  else:
    yield (
      "global-tanh-warmup",
      relax_optax.relativistic_adamw(
        0.05,
        speed_limit=relax_optax.speed_limit_warmup(0.02, 3),
        mode="global",
        formula="tanh",
      ),
    )
    yield (
      "per_component",
      relax_optax.relativistic_adam(0.05, speed_limit=0.02, mode="per_component"),
    )


def _assert_close_to_float32_rounding(actual, expected):
  import chex

  chex.assert_trees_all_close(actual, expected, rtol=2e-5, atol=2e-6)


def _sharded_vs_single(mesh, specs, data_spec, which):
  import jax
  from jax.sharding import NamedSharding

  params, x, y = _setup()
  shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
  sharded = jax.device_put(params, shardings)
  xs = jax.device_put(x, NamedSharding(mesh, data_spec))
  ys = jax.device_put(y, NamedSharding(mesh, data_spec))
  for name, tx in _optimizers(which):
    p1, s1, l1 = _train(tx, params, x, y)
    pn, sn, ln = _train(tx, sharded, xs, ys)
    _assert_close_to_float32_rounding((pn, sn, ln), (p1, s1, l1))
    # The parameters and Adam's moments keep the parameters' shardings
    # through the jitted steps.
    for tree in (pn, sn[0].mu, sn[0].nu):
      for leaf, want in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings), strict=True):
        assert leaf.sharding.is_equivalent_to(want, leaf.ndim), (name, leaf.sharding, want)
    # The run is not trivial: the parameters moved.
    moved = jax.tree.map(lambda a, b: float(abs(a - b).max()), pn, sharded)
    assert max(jax.tree.leaves(moved)) > 1e-3, name


def _fsdp_specs():
  from jax.sharding import PartitionSpec as P

  return {
    "dense1": {"kernel": P("fsdp", None), "bias": P("fsdp")},
    "dense2": {"kernel": P("fsdp", None), "bias": P("fsdp")},
  }


def _mesh(shape, names, explicit: bool = False):
  import jax
  from jax.sharding import AxisType

  kind = AxisType.Explicit if explicit else AxisType.Auto
  return jax.make_mesh(shape, names, axis_types=(kind,) * len(names))


@_check
def check_fsdp_one_axis_matches_single_device():
  from jax.sharding import PartitionSpec as P

  mesh = _mesh((8,), ("fsdp",))
  _sharded_vs_single(mesh, _fsdp_specs(), P("fsdp", None), which=0)


@_check
def check_two_axes_matches_single_device():
  from jax.sharding import PartitionSpec as P

  mesh = _mesh((4, 2), ("data", "model"))
  specs = {
    "dense1": {"kernel": P("data", "model"), "bias": P("model")},
    "dense2": {"kernel": P("model", "data"), "bias": P()},
  }
  _sharded_vs_single(mesh, specs, P("data", None), which=1)


def _global_expectation(updates, c):
  """NumPy: ``u / sqrt(1 + (‖u‖/c)²)`` with one norm over every leaf."""
  import jax
  import numpy as np

  leaves = [np.asarray(u, np.float64) for u in jax.tree.leaves(updates)]
  norm = np.sqrt(sum(np.sum(u**2) for u in leaves))
  return jax.tree.map(lambda u: np.asarray(u, np.float64) / np.hypot(1.0, norm / c), updates)


def _uneven_updates():
  """Updates whose shards have very different norms (one hot shard)."""
  import jax.numpy as jnp
  import numpy as np

  rng = np.random.default_rng(1)
  kernel = rng.normal(size=(16, 32)) * 1e-3
  kernel[2:4] *= 1e3  # all the mass in the second of 8 row shards
  return {
    "dense1": {"kernel": jnp.asarray(kernel, jnp.float32), "bias": jnp.full(32, 0.5)},
    "dense2": {"kernel": jnp.asarray(rng.normal(size=(32, 8)), jnp.float32), "bias": jnp.zeros(8)},
  }


@_check
def check_global_norm_covers_whole_sharded_model():
  import chex
  import jax
  import numpy as np
  from jax.sharding import NamedSharding

  import relax_optax

  c = 0.5
  updates = _uneven_updates()
  expected = _global_expectation(updates, c)
  tx = relax_optax.scale_by_relativistic(c, mode="global")
  for explicit in (False, True):
    mesh = _mesh((8,), ("fsdp",), explicit=explicit)
    sharded = jax.device_put(updates, jax.tree.map(lambda s: NamedSharding(mesh, s), _fsdp_specs()))
    # Auto axes: the transformation; explicit axes: the pure function.
    if not explicit:
      fn = jax.jit(lambda u: tx.update(u, tx.init(u))[0])
    else:
      fn = jax.jit(lambda u: relax_optax.relativistic_scale(u, c, mode="global"))
    out = fn(sharded)
    chex.assert_trees_all_close(out, expected, rtol=1e-5, atol=1e-8)
    # One factor for every entry of every shard.
    ratios = [
      np.asarray(v)[np.asarray(u) != 0] / np.asarray(u)[np.asarray(u) != 0]
      for u, v in zip(jax.tree.leaves(updates), jax.tree.leaves(out), strict=True)
    ]
    ratios = np.concatenate(ratios)
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-5)


def _specs_of(tree):
  import jax

  return jax.tree.map(lambda x: jax.typeof(x).sharding.spec, tree)


@_check
def check_state_keeps_param_shardings():
  import jax
  from jax.sharding import PartitionSpec as P

  import relax_optax

  mesh = _mesh((4, 2), ("data", "model"), explicit=True)
  specs = {
    "dense1": {"kernel": P("data", "model"), "bias": P("model")},
    "dense2": {"kernel": P("model", "data"), "bias": P()},
  }
  params, _, _ = _setup()
  targets = jax.tree.map(lambda p: 0.5 * p + 1.0, params)
  with jax.set_mesh(mesh):
    sharded = jax.device_put(params, specs)
    sharded_targets = jax.device_put(targets, specs)
    for mode in ("global", "per_component"):
      tx = relax_optax.relativistic_adam(
        0.05, speed_limit=relax_optax.speed_limit_warmup(0.02, 2), mode=mode
      )
      # Under jit too, init gives each moment its parameter's sharding type.
      state = jax.jit(tx.init)(sharded)
      assert _specs_of(state[0].mu) == _specs_of(sharded), mode
      pn, sn, _ = _train(tx, sharded, sharded_targets, 1.0, steps=2, loss_fn=_quadratic_loss)
      assert _specs_of(pn) == _specs_of(sharded), mode
      adam_state = sn[0]
      assert _specs_of(adam_state.mu) == _specs_of(sharded), mode
      assert _specs_of(adam_state.nu) == _specs_of(sharded), mode
      assert jax.typeof(sn[2].count).sharding.spec == P(), mode
  p1, _, _ = _train(tx, params, targets, 1.0, steps=2, loss_fn=_quadratic_loss)
  _assert_close_to_float32_rounding(pn, p1)


@_check
def check_init_on_shape_dtype_structs():
  import chex
  import jax
  import jax.numpy as jnp
  import optax
  from jax.sharding import NamedSharding

  import relax_optax

  mesh = _mesh((8,), ("fsdp",), explicit=True)
  shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), _fsdp_specs())
  params, _, _ = _setup()
  abstract = jax.tree.map(
    lambda p, s: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=s), params, shardings
  )
  for tx in (
    relax_optax.relativistic_adam(
      speed_limit=relax_optax.speed_limit_warmup(0.1, 1000), mode="global"
    ),
    relax_optax.relativistic_adamw(mu_dtype=jnp.bfloat16),
    optax.MultiSteps(relax_optax.relativistic_adam(), every_k_schedule=2),
    relax_optax.scale_by_relativistic(optax.linear_schedule(0.0, 1.0, 10)),
  ):
    abstract_state = jax.eval_shape(tx.init, abstract)
    with jax.set_mesh(mesh):
      concrete = jax.jit(tx.init)(jax.device_put(params, shardings))
    # Same structure, shapes and dtypes as the state of real arrays...
    chex.assert_trees_all_equal_shapes_and_dtypes(abstract_state, concrete)
    # ...and the parameters' shardings on every parameter-shaped leaf.
    for a, c in zip(jax.tree.leaves(abstract_state), jax.tree.leaves(concrete), strict=True):
      assert isinstance(a, jax.ShapeDtypeStruct)
      if a.ndim:
        assert a.sharding.spec == jax.typeof(c).sharding.spec, (a, c)


def _shard_map_run(mesh, fn, specs, *args):
  import jax

  return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=specs[0]))(*args)


@_check
def check_shard_map_axis_name_reduces_global_norm():
  import chex
  import jax
  import optax
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  import relax_optax

  c = 0.5
  mesh = _mesh((8,), ("fsdp",))
  specs = _fsdp_specs()
  updates = _uneven_updates()
  sharded = jax.device_put(updates, jax.tree.map(lambda s: NamedSharding(mesh, s), specs))
  for mode in ("global", "per_param", "per_component"):
    expected = relax_optax.relativistic_scale(updates, c, mode=mode)
    if mode == "global":
      chex.assert_trees_all_close(expected, _global_expectation(updates, c), rtol=1e-5)
    fn = lambda u, mode=mode: relax_optax.relativistic_scale(u, c, mode=mode, axis_name="fsdp")
    out = _shard_map_run(mesh, fn, (specs,), sharded)
    chex.assert_trees_all_close(out, expected, rtol=1e-5, atol=1e-8)

  # The transformation inside a shard_map training step: Adam's moments
  # sharded like the parameters, the step count replicated, several steps.
  def make(axis_name):
    return optax.chain(
      optax.scale_by_adam(),
      optax.scale_by_learning_rate(0.05),
      relax_optax.scale_by_relativistic(
        optax.linear_schedule(0.01, 0.05, 3), mode="global", axis_name=axis_name
      ),
    )

  single, multi = make(None), make("fsdp")
  state1 = single.init(updates)
  staten = jax.device_put(
    state1,
    jax.tree.map(lambda x: NamedSharding(mesh, P("fsdp") if x.ndim else P()), state1),
  )
  state_specs = jax.tree.map(lambda x: x.sharding.spec, staten)
  step = jax.jit(
    jax.shard_map(
      multi.update,
      mesh=mesh,
      in_specs=(specs, state_specs),
      out_specs=(specs, state_specs),
    )
  )
  for i in range(3):
    grads = jax.tree.map(lambda u, i=i: u * (i + 1.0), updates)
    grads_n = jax.device_put(grads, jax.tree.map(lambda s: NamedSharding(mesh, s), specs))
    u1, state1 = single.update(grads, state1)
    un, staten = step(grads_n, staten)
    chex.assert_trees_all_close(un, u1, rtol=1e-5, atol=1e-8)
  chex.assert_trees_all_close(staten, state1, rtol=1e-5, atol=1e-8)


@_check
def check_relativistic_adam_axis_name_in_shard_map():
  """``relativistic_adam(axis_name=...)`` inside ``shard_map`` equals one device.

  ``global`` and ``per_param``, with AdamW's decoupled decay and a schedule.
  """
  import chex
  import jax
  import optax
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  import relax_optax

  mesh = _mesh((8,), ("fsdp",))
  specs = _fsdp_specs()
  params = _uneven_updates()
  for mode in ("global", "per_param"):
    for _ in (0,):
      kwargs = dict(
        learning_rate=optax.linear_schedule(0.05, 0.01, 4),
        speed_limit=0.05,
        mode=mode,
        weight_decay=0.1,
      )
      single = relax_optax.relativistic_adamw(**kwargs)
      multi = relax_optax.relativistic_adamw(**kwargs, axis_name="fsdp")
      state1 = single.init(params)
      staten = jax.tree.map(
        lambda x: jax.device_put(x, NamedSharding(mesh, P("fsdp") if x.ndim else P())),
        state1,
      )
      state_specs = jax.tree.map(lambda x: x.sharding.spec, staten)
      step = jax.jit(
        jax.shard_map(
          multi.update,
          mesh=mesh,
          in_specs=(specs, state_specs, specs),
          out_specs=(specs, state_specs),
        )
      )
      p1 = params
      pn = jax.device_put(params, jax.tree.map(lambda s: NamedSharding(mesh, s), specs))
      for i in range(3):
        grads = jax.tree.map(lambda u, i=i: u * (i + 1.0), params)
        grads_n = jax.device_put(grads, jax.tree.map(lambda s: NamedSharding(mesh, s), specs))
        u1, state1 = single.update(grads, state1, p1)
        un, staten = step(grads_n, staten, pn)
        chex.assert_trees_all_close(un, u1, rtol=2e-5, atol=1e-8)
        p1, pn = optax.apply_updates(p1, u1), optax.apply_updates(pn, un)
      chex.assert_trees_all_close(pn, p1, rtol=2e-5, atol=1e-7)


@_check
def check_rgd_axis_name_in_shard_map():
  """``rgd(axis_name=...)`` inside ``shard_map`` equals one device (both forms)."""
  import chex
  import jax
  import optax
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  import relax_optax

  mesh = _mesh((8,), ("fsdp",))
  specs = _fsdp_specs()
  params = _uneven_updates()
  for kwargs in (dict(mode="global"), dict(mode="per_param", alpha=0.5)):
    single = relax_optax.rgd(0.3, momentum=0.9, speed_limit=0.05, **kwargs)
    multi = relax_optax.rgd(0.3, momentum=0.9, speed_limit=0.05, axis_name="fsdp", **kwargs)
    state1 = single.init(params)
    shard = lambda x: jax.device_put(x, NamedSharding(mesh, P("fsdp") if x.ndim else P()))
    staten = jax.tree.map(shard, state1)
    state_specs = jax.tree.map(lambda x: x.sharding.spec, staten)
    step = jax.jit(
      jax.shard_map(
        multi.update,
        mesh=mesh,
        in_specs=(specs, state_specs, specs),
        out_specs=(specs, state_specs),
      )
    )
    to_mesh = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
    p1, pn = params, jax.device_put(params, to_mesh)
    for i in range(3):
      grads = jax.tree.map(lambda u, i=i: u * (i + 1.0), params)
      u1, state1 = single.update(grads, state1, p1)
      un, staten = step(jax.device_put(grads, to_mesh), staten, pn)
      chex.assert_trees_all_close(un, u1, rtol=2e-5, atol=1e-8)
      p1, pn = optax.apply_updates(p1, u1), optax.apply_updates(pn, un)


@_check
def check_shard_map_without_axis_name_uses_each_shards_norm():
  """Without ``axis_name`` each device scales its shard by the shard's norm."""
  import chex
  import jax
  import numpy as np
  from jax.sharding import NamedSharding

  import relax_optax

  c = 0.5
  mesh = _mesh((8,), ("fsdp",))
  specs = _fsdp_specs()
  updates = _uneven_updates()
  sharded = jax.device_put(updates, jax.tree.map(lambda s: NamedSharding(mesh, s), specs))
  local = _shard_map_run(
    mesh, lambda u: relax_optax.relativistic_scale(u, c, mode="global"), (specs,), sharded
  )
  # Device d's group: the d-th row block of every leaf.
  for d in range(8):
    block = jax.tree.map(
      lambda u, d=d: np.asarray(u)[d * len(u) // 8 : (d + 1) * len(u) // 8], updates
    )
    got = jax.tree.map(lambda v, d=d: np.asarray(v)[d * len(v) // 8 : (d + 1) * len(v) // 8], local)
    chex.assert_trees_all_close(got, _global_expectation(block, c), rtol=1e-5, atol=1e-8)


@_check
def check_shard_map_axis_name_saturates_globally():
  """An infinite entry on one device gives the limit on that entry only."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  import relax_optax

  mesh = _mesh((8,), ("x",))
  u = np.linspace(-1.0, 1.0, 64).astype(np.float32)
  u[37] = np.inf
  us = jax.device_put(jnp.asarray(u), NamedSharding(mesh, P("x")))
  for formula in relax_optax.FORMULAS:
    fn = lambda v, f=formula: relax_optax.relativistic_scale(
      {"w": v}, 2.0, mode="global", formula=f, axis_name="x"
    )["w"]
    out = np.asarray(_shard_map_run(mesh, fn, (P("x"),), us))
    # The infinite entry counts as 2^40·c: it takes the limit, and the other
    # entries are scaled by about 2^-40 (below 1e-12 here).
    expected = np.zeros(64, np.float32)
    expected[37] = 2.0
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-12)


@_check
def check_pmap_axis_name_reduces_global_norm():
  import chex
  import jax
  import numpy as np

  import relax_optax

  c = 0.5
  rng = np.random.default_rng(2)
  full = {"a": rng.normal(size=(8, 4)).astype(np.float32), "b": np.ones((8, 2), np.float32)}
  expected = _global_expectation(full, c)
  out = jax.pmap(
    lambda u: relax_optax.relativistic_scale(u, c, mode="global", axis_name="i"),
    axis_name="i",
  )(full)
  chex.assert_trees_all_close(out, expected, rtol=1e-5, atol=1e-8)


@_check
def check_shard_map_mixed_replicated_and_sharded_leaves():
  """FSDP under shard_map often keeps small leaves (biases) replicated."""
  import chex
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  import relax_optax

  c = 0.5
  mesh = _mesh((8,), ("fsdp",))
  specs = {
    "dense1": {"kernel": P("fsdp", None), "bias": P()},
    "dense2": {"kernel": P("fsdp", None), "bias": P()},
  }
  finite = _uneven_updates()
  # The saturated path too: an infinite entry in a replicated leaf, and one
  # whose (u/c)² overflows in a sharded leaf.
  saturated = jax.tree.map(lambda u: u, finite)
  saturated["dense1"]["bias"] = finite["dense1"]["bias"].at[3].set(jnp.inf)
  saturated["dense2"]["kernel"] = finite["dense2"]["kernel"].at[5, 1].set(-3e38)
  for updates in (finite, saturated):
    sharded = jax.device_put(updates, jax.tree.map(lambda s: NamedSharding(mesh, s), specs))
    for mode in ("global", "per_param"):
      expected = relax_optax.relativistic_scale(updates, c, mode=mode)
      fn = lambda u, mode=mode: relax_optax.relativistic_scale(u, c, mode=mode, axis_name="fsdp")
      out = _shard_map_run(mesh, fn, (specs,), sharded)
      chex.assert_trees_all_close(out, expected, rtol=1e-5, atol=1e-8)


@_check
def check_example_sharded_training_runs():
  import runpy

  root = Path(__file__).resolve().parent.parent
  example = runpy.run_path(str(root / "examples" / "sharded_training.py"))
  summary = example["main"](steps=3, plot=None, progress=False)
  assert summary["max_abs_difference"] < 1e-5, summary
  assert summary["shard_map_max_abs_difference"] < 1e-6, summary


# ---------------------------------------------------------------------------
# The child process and the pytest side.
# ---------------------------------------------------------------------------


def _run_checks(out: Path) -> None:
  """Runs every check in this (8-device) process; writes name -> report."""
  warnings.simplefilter("error")
  import jax

  jax.config.update("jax_numpy_rank_promotion", "raise")
  assert jax.device_count() == N_DEVICES, jax.devices()
  reports = {}
  for name, fn in _CHECKS.items():
    start = time.perf_counter()
    try:
      fn()
      reports[name] = "ok"
    except Exception:
      reports[name] = traceback.format_exc()
    status = "ok" if reports[name] == "ok" else "FAILED"
    print(f"{name}: {status} ({time.perf_counter() - start:.1f} s)", file=sys.stderr)
  out.write_text(json.dumps(reports, indent=1))


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, str]:
  out = tmp_path_factory.mktemp("sharding") / "reports.json"
  env = dict(os.environ)
  env["XLA_FLAGS"] = (
    env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={N_DEVICES}"
  ).strip()
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run(
    [sys.executable, __file__, str(out)],
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return json.loads(out.read_text())


@pytest.mark.parametrize(
  "name",
  [
    pytest.param(
      name,
      marks=[pytest.mark.xfail(strict=True, reason=_KNOWN_FAILURES[name])]
      if name in _KNOWN_FAILURES
      else [],
    )
    for name in _CHECKS
  ],
)
def test_sharded(reports: dict[str, str], name: str) -> None:
  assert reports[name] == "ok", reports[name]


if __name__ == "__main__":
  if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    # Read when the backend starts (jax is not imported at this point).
    os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={N_DEVICES}"
    )
  _run_checks(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("sharding_reports.json"))
