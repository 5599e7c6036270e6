"""Training on many processes: one global mesh, kernels split across processes.

With no arguments the script starts ``--processes`` copies of itself (default
2) on this machine, each with one CPU device, joined by
``jax.distributed.initialize`` over ``127.0.0.1`` and talking through the
gloo CPU collectives, and prints each process's losses::

    python examples/multihost_training.py
    python examples/multihost_training.py --processes 4 --steps 50

On a cluster, start one copy per host yourself and pass ``--cluster``:
``jax.distributed.initialize()`` then reads the coordinator, the number of
processes and this process's id from the environment (SLURM's ``srun``, Cloud
TPU pods, Open MPI, Kubernetes JobSet), and the mesh spans every device of
every host::

    srun --nodes=4 --ntasks-per-node=1 python examples/multihost_training.py --cluster

The model is a small Flax NNX MLP with a LayerNorm; each kernel is split over
the mesh (FSDP), biases and the LayerNorm scale are replicated, and each
process feeds its own slice of the batch. The optimizer is
``relativistic_adamw`` with ``mode="global"``: one norm over the whole model,
which ``jit`` computes across the processes (one all-reduce of partial sums;
see ``docs/multihost.md``). Every process prints the same losses.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

import numpy as np

AXIS = "fsdp"


def launch(processes: int, argv: list[str], timeout: float) -> int:
  """Starts ``processes`` workers on this machine; returns the first failure's code."""
  with socket.socket() as s:  # a free port for the coordinator
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device each
  env["JAX_PLATFORMS"] = "cpu"
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        __file__,
        *argv,
        f"--coordinator=127.0.0.1:{port}",
        f"--num-processes={processes}",
        f"--process-id={i}",
      ],
      env=env,
    )
    for i in range(processes)
  ]
  deadline = time.monotonic() + timeout
  code = 0
  try:
    for proc in procs:
      try:
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        rc = 124
      if rc:
        code = rc
        break
  finally:
    for proc in procs:  # a failed or hung worker stops the others
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  return code


def train(args: argparse.Namespace) -> dict[str, float]:
  """One process's part of the run (every process runs this)."""
  import jax

  if args.cluster:
    jax.distributed.initialize()  # coordinator, count and id from the environment
  else:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
      coordinator_address=args.coordinator,
      num_processes=args.num_processes,
      process_id=args.process_id,
      initialization_timeout=60,
    )
  import jax.numpy as jnp
  import optax
  from flax import nnx
  from jax.sharding import AxisType, NamedSharding
  from jax.sharding import PartitionSpec as P

  import relax_optax

  n = jax.device_count()
  # Auto axes: jit places the collectives (the classic NamedSharding behaviour).
  mesh = jax.make_mesh((n,), (AXIS,), axis_types=(AxisType.Auto,), devices=jax.devices())

  class MLP(nnx.Module):
    def __init__(self, width: int, rngs: nnx.Rngs):
      self.linear1 = nnx.Linear(8, width, rngs=rngs)
      self.norm = nnx.LayerNorm(width, rngs=rngs)
      self.linear2 = nnx.Linear(width, 4, rngs=rngs)

    def __call__(self, x):
      return self.linear2(jnp.tanh(self.norm(self.linear1(x))))

  graphdef, state = nnx.split(MLP(16 * n, nnx.Rngs(0)))  # the same values on every process
  params = nnx.to_pure_dict(state)

  def spec(path, p) -> P:
    """Kernels split over the mesh along an axis it divides; the rest replicated."""
    if path[-1].key != "kernel":
      return P()
    return P(None, AXIS) if p.shape[1] % n == 0 else P(AXIS, None)

  shardings = jax.tree_util.tree_map_with_path(
    lambda path, p: NamedSharding(mesh, spec(path, p)), params
  )
  params = jax.tree.map(
    lambda p, s: jax.make_array_from_callback(p.shape, s, lambda idx: np.asarray(p)[idx]),
    params,
    shardings,
  )
  tx = relax_optax.relativistic_adamw(
    args.learning_rate, speed_limit=args.speed_limit, mode="global"
  )
  opt_state = jax.jit(tx.init)(params)  # Adam's moments take the kernels' shardings

  def loss_fn(params, x, y):
    return jnp.mean((nnx.merge(graphdef, params)(x) - y) ** 2)

  @jax.jit
  def step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  # Each process reads only its own rows of the batch (here: generates them).
  rows = args.batch_per_process
  batch_sharding = NamedSharding(mesh, P(AXIS, None))
  w = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
  pid = jax.process_index()
  losses = []
  for t in range(args.steps):
    rng = np.random.default_rng([t, pid])
    x_local = rng.normal(size=(rows * jax.local_device_count(), 8)).astype(np.float32)
    y_local = np.sin(x_local @ w)
    x = jax.make_array_from_process_local_data(batch_sharding, x_local)
    y = jax.make_array_from_process_local_data(batch_sharding, y_local)
    params, opt_state, loss = step(params, opt_state, x, y)
    losses.append(float(loss))  # the loss is replicated: every process holds it
    if t % args.log_every == 0 or t == args.steps - 1:
      print(f"process {pid}/{jax.process_count()}  step {t:3d}  loss {losses[-1]:.5f}", flush=True)
  kernel = params["linear1"]["kernel"]
  print(
    f"process {pid}: final loss {losses[-1]:.5f}; linear1 kernel {kernel.shape} "
    f"holds {kernel.addressable_shards[0].data.shape} here",
    flush=True,
  )
  jax.distributed.shutdown()
  return {"first_loss": losses[0], "final_loss": losses[-1]}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--processes", type=int, default=2, help="local processes to start")
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--learning-rate", type=float, default=0.05)
  parser.add_argument("--speed-limit", type=float, default=0.05)
  parser.add_argument("--batch-per-process", type=int, default=32)
  parser.add_argument("--log-every", type=int, default=10)
  parser.add_argument("--timeout", type=float, default=120.0, help="seconds, local launch")
  parser.add_argument(
    "--cluster", action="store_true", help="one process per host, started by the cluster"
  )
  # Set by the local launcher for its workers.
  parser.add_argument("--coordinator", help=argparse.SUPPRESS)
  parser.add_argument("--num-processes", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--process-id", type=int, help=argparse.SUPPRESS)
  argv = sys.argv[1:] if argv is None else argv
  args = parser.parse_args(argv)
  if args.cluster or args.process_id is not None:
    train(args)
    return 0
  return launch(args.processes, argv, args.timeout)


if __name__ == "__main__":
  sys.exit(main())
