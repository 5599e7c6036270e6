"""Sharded training with a speed limit: FSDP over a device mesh, two ways.

The optimizer needs nothing special under ``jax.jit`` with sharded arrays:
shard the parameters with ``NamedSharding``, initialise the optimizer state
with ``tx.init(params)`` (each Adam moment takes its parameter's sharding) and
train. ``mode="global"`` takes one norm over the *whole* model, not per
shard: ``jit`` inserts the cross-device reduction itself.

Inside ``jax.shard_map`` each device only sees its own shards, so the norm
must be summed across the mesh axis explicitly: pass
``axis_name=`` to ``scale_by_relativistic`` (every leaf must then be sharded
over that axis: a replicated leaf would be counted once per device).

On CPU, the script simulates 8 devices
(``--xla_force_host_platform_device_count``). It trains a small MLP
(pure JAX, so the shardings stay visible) on a regression task, once sharded
and once on one device, and prints both losses: they agree to float32
rounding.

    python examples/sharded_training.py --steps 100 --plot sharded_training.png
"""

from __future__ import annotations

import argparse
import itertools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import relax_optax

MESH_AXIS = "fsdp"


def init_params(key: jax.Array, sizes: tuple[int, ...]) -> dict[str, Any]:
  """A tanh MLP: one ``{"kernel", "bias"}`` dict per layer."""
  params = {}
  for i, (din, dout) in enumerate(itertools.pairwise(sizes)):
    key, sub = jax.random.split(key)
    params[f"layer{i}"] = {
      "kernel": jax.random.normal(sub, (din, dout)) / np.sqrt(din),
      "bias": jnp.zeros(dout),
    }
  return params


def forward(params: dict[str, Any], x: jax.Array) -> jax.Array:
  layers = [params[k] for k in sorted(params)]
  for layer in layers[:-1]:
    x = jnp.tanh(x @ layer["kernel"] + layer["bias"][None])
  return x @ layers[-1]["kernel"] + layers[-1]["bias"][None]


def loss_fn(params: dict[str, Any], x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.mean((forward(params, x) - y) ** 2)


def fsdp_specs(params: dict[str, Any], n_devices: int) -> dict[str, Any]:
  """FSDP: shard each leaf's first axis over the mesh when it divides evenly."""

  def spec(p: jax.Array) -> P:
    if p.ndim and p.shape[0] % n_devices == 0:
      return P(MESH_AXIS, *([None] * (p.ndim - 1)))
    return P()

  return jax.tree.map(spec, params)


def make_optimizer(learning_rate: float, speed_limit: float) -> optax.GradientTransformation:
  return relax_optax.relativistic_adamw(
    learning_rate,
    speed_limit=relax_optax.speed_limit_warmup(speed_limit, 10),
    mode="global",
    weight_decay=1e-4,
  )


def train(params, x, y, tx, steps: int, progress: bool) -> tuple[Any, Any, list[float]]:
  """Plain jit training: the same code for sharded and unsharded arrays."""

  @jax.jit
  def step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  # Outside jit, init makes each moment like its parameter, sharding included
  # (under jit, pass out_shardings: an Auto-mode output that does not depend
  # on the inputs' values is not given their sharding).
  opt_state = tx.init(params)
  losses = []
  iterator = range(steps)
  if progress:
    from tqdm import tqdm

    iterator = tqdm(iterator, desc="train", leave=False)
  for _ in iterator:
    params, opt_state, loss = step(params, opt_state, x, y)
    losses.append(float(loss))
  return params, opt_state, losses


def adam_with_speed_limit(
  learning_rate: float, speed_limit: float, axis_name: str | None = None
) -> optax.GradientTransformation:
  """Adam with a global speed limit; inside ``shard_map`` pass ``axis_name``."""
  return optax.chain(
    optax.scale_by_adam(),
    optax.scale_by_learning_rate(learning_rate),
    relax_optax.scale_by_relativistic(speed_limit, mode="global", axis_name=axis_name),
  )


def shard_map_update(mesh, tx: optax.GradientTransformation, grads, state):
  """``tx.update`` inside ``shard_map``, every leaf sharded by :func:`fsdp_specs`.

  The Adam moments are sharded like the parameters, the step count is
  replicated; ``tx`` must reduce its norm over ``MESH_AXIS`` (``axis_name``).
  """
  n = mesh.shape[MESH_AXIS]
  grad_specs, state_specs = fsdp_specs(grads, n), fsdp_specs(state, n)
  sharded_update = jax.shard_map(
    tx.update,
    mesh=mesh,
    in_specs=(grad_specs, state_specs),
    out_specs=(grad_specs, state_specs),
  )
  return jax.jit(sharded_update)(grads, state)


def main(
  steps: int = 100,
  learning_rate: float = 3e-2,
  speed_limit: float = 0.05,
  plot: str | None = None,
  progress: bool = True,
) -> dict[str, float]:
  n = jax.device_count()
  mesh = jax.make_mesh((n,), (MESH_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))
  key_params, key_x = jax.random.split(jax.random.key(0))
  # Every leading dimension divides n, so every leaf is sharded (FSDP).
  sizes = (2 * n, 8 * n, 8 * n, n)
  params = init_params(key_params, sizes)
  x = jax.random.normal(key_x, (16 * n, sizes[0]))
  y = jnp.sin(2.0 * x[:, : sizes[-1]])
  specs = fsdp_specs(params, n)
  tx = make_optimizer(learning_rate, speed_limit)

  def put(tree, tree_specs):
    return jax.device_put(tree, jax.tree.map(lambda spec: NamedSharding(mesh, spec), tree_specs))

  sharded = put(params, specs)
  xs, ys = put(x, P(MESH_AXIS, None)), put(y, P(MESH_AXIS, None))
  final_sharded, opt_state, losses_sharded = train(sharded, xs, ys, tx, steps, progress)
  kernel = final_sharded["layer1"]["kernel"].sharding.spec
  mu = opt_state[0].mu["layer1"]["kernel"].sharding.spec

  # The same kind of step inside shard_map, with axis_name for the norm.
  grads = jax.jit(jax.grad(loss_fn))(sharded, xs, ys)
  sm_tx = adam_with_speed_limit(learning_rate, speed_limit, axis_name=MESH_AXIS)
  sm_state = sm_tx.init(sharded)
  sm_updates, _ = shard_map_update(mesh, sm_tx, grads, sm_state)
  jit_tx = adam_with_speed_limit(learning_rate, speed_limit)
  jit_updates, _ = jax.jit(jit_tx.update)(grads, jit_tx.init(sharded))
  shard_map_difference = max(
    float(jnp.max(jnp.abs(a - b)))
    for a, b in zip(jax.tree.leaves(sm_updates), jax.tree.leaves(jit_updates), strict=True)
  )

  final_single, _, losses_single = train(params, x, y, tx, steps, progress)
  difference = max(
    float(jnp.max(jnp.abs(a - b)))
    for a, b in zip(jax.tree.leaves(final_sharded), jax.tree.leaves(final_single), strict=True)
  )

  print(f"devices: {n}, mesh {dict(mesh.shape)}")
  print(f"layer1 kernel sharded as {kernel}, its Adam moment as {mu}")
  print(f"{'step':>6} {'loss (sharded)':>16} {'loss (1 device)':>16}")
  for i in sorted({0, steps // 4, steps // 2, 3 * steps // 4, steps - 1}):
    print(f"{i + 1:>6} {losses_sharded[i]:>16.6f} {losses_single[i]:>16.6f}")
  print(f"shard_map update vs jit update, max |difference|: {shard_map_difference:.2e}")
  print(f"final parameters, sharded vs 1 device, max |difference|: {difference:.2e}")

  if plot:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.semilogy(losses_sharded, label=f"sharded over {n} devices")
    ax.semilogy(losses_single, "--", label="1 device")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("relativistic_adamw, mode='global'")
    ax.legend()
    fig.tight_layout()
    fig.savefig(plot, dpi=120)
    plt.close(fig)
    print(f"wrote {plot}")

  return {
    "final_loss": losses_sharded[-1],
    "max_abs_difference": difference,
    "shard_map_max_abs_difference": shard_map_difference,
  }


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--learning-rate", type=float, default=3e-2)
  parser.add_argument("--speed-limit", type=float, default=0.05)
  parser.add_argument(
    "--devices",
    type=int,
    default=8,
    help="CPU devices to simulate (read when JAX starts its backend)",
  )
  parser.add_argument("--plot", default=None, help="write the loss curves to this PNG")
  args = parser.parse_args()
  if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.devices}"
    )
  main(args.steps, args.learning_rate, args.speed_limit, args.plot)
