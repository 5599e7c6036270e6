"""Train the six "mathematical circuit" tasks with Flax NNX and relax_optax, fast.

A port of the PyTorch notebook ``mathematical-circuits-notebook``: tiny bias-free ReLU
MLPs learn identity, negation, |x|, x1+x2, x1-x2 and min(x1, x2) from inputs drawn
uniformly in [-1, 1], with the MSE loss, a fresh batch of 1000 each step, a fixed
1000-sample test set, SGD at lr 1e-4 for 300k steps (3M for min). By default it starts
from the initial weights the notebook printed and prints the test MSE every 30k steps
next to the notebook's (its printed numbers are in ``circuits_notebook.json``)::

    python examples/circuits.py                     # all six tasks, notebook settings
    python examples/circuits.py --task min --optimizer relativistic_adam --lr 1e-3

Two ways to train the same ``nnx.Module``:

* ``train_simple``: the textbook NNX loop, ``nnx.Optimizer(model, tx, wrt=nnx.Param)``
  and a ``@nnx.jit`` step per Python iteration (a few hundred steps: the tests).
* ``train``: split once (``nnx.split``) and run pure JAX: a ``lax.scan`` over chunks
  of steps, each chunk drawing its batches on the device in one call, ``vmap`` over
  independent initialisations. This is what the command line runs.

Why it is fast. The layers contract over K = 1..3 features. As ``x @ W`` each such
``dot`` becomes a library call on XLA:CPU (YNNPACK/Eigen), a few microseconds of call
overhead for a few thousand flops, and with the batch as the leading axis (B, K) every
elementwise kernel works on rows of 1..3 floats. Here the layer is written out as K
multiply-adds on feature-major rows (K, B) (``small_k_matmul``), which XLA fuses with
the ReLUs; only the weight gradient, which contracts over the 1000-sample batch, is a
``dot`` (a ``custom_vjp``). Threefry on CPU runs as a small while loop per call, so the
batches of ``CHUNK`` steps are drawn in one call, and the scan over those steps is
unrolled so that each step reads its batch through a static slice (a dynamic slice in
every fused kernel costs more than the step's arithmetic). On CPU the process pins
itself to one core. ``python -m benchmarks.circuits_speed`` measures all of this;
``python -m benchmarks.circuits`` runs the seed sweeps, plots and JSON of the docs.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax import lax
from tqdm import tqdm

import relax_optax

SUCCESS_MSE = 1e-4  # a run "solves" a task when its final test MSE is below this
CHUNK = 16  # steps whose batches are drawn in one call; the scan over them is unrolled
SMALL_K = 8  # layers contracting over at most this many features use multiply-adds


# ----------------------------------------------------------------------------- tasks


@dataclasses.dataclass(frozen=True)
class Task:
  """One circuit: its layer sizes, its target and the notebook's number of steps."""

  name: str
  formula: str
  sizes: tuple[int, ...]
  target: Callable[[jax.Array], jax.Array]  # feature-major (n_in, B) -> (1, B)
  steps: int


TASKS: dict[str, Task] = {
  t.name: t
  for t in [
    Task("identity", "x", (1, 2, 1), lambda x: x[0:1], 300_000),
    Task("negation", "-x", (1, 2, 1), lambda x: -x[0:1], 300_000),
    Task("abs", "|x|", (1, 2, 1), lambda x: jnp.abs(x[0:1]), 300_000),
    Task("add", "x1 + x2", (2, 2, 1), lambda x: x[0:1] + x[1:2], 300_000),
    Task("sub", "x1 - x2", (2, 2, 1), lambda x: x[0:1] - x[1:2], 300_000),
    Task("min", "min(x1, x2)", (2, 3, 2, 1), lambda x: jnp.minimum(x[0:1], x[1:2]), 3_000_000),
  ]
}


class NotebookRun(NamedTuple):
  """What the notebook printed for one task (see ``circuits_notebook.json``)."""

  torch_seed: int  # its torch.manual_seed
  init: list  # initial kernels, each (in, out), to 4 decimals
  start_loss: float  # "Starting Loss": test MSE before training
  losses: list[float]  # test MSE printed after update i, i % 30000 == 0
  final: list | None  # final kernels (None for min: its output stops early)


def _load_notebook() -> tuple[int, dict[str, NotebookRun]]:
  data = json.loads((Path(__file__).parent / "circuits_notebook.json").read_text())
  runs = {
    name: NotebookRun(**{f: d[f] for f in NotebookRun._fields}) for name, d in data["tasks"].items()
  }
  return data["log_every"], runs


NOTEBOOK_LOG_EVERY, NOTEBOOK = _load_notebook()


def notebook_loss_at(task: Task, step: int) -> float | None:
  """The notebook's printed test MSE at ``step`` (it prints after update ``step``)."""
  losses = NOTEBOOK[task.name].losses
  i, rest = divmod(step, NOTEBOOK_LOG_EVERY)
  return losses[i] if not rest and i < len(losses) else None


# ----------------------------------------------------------------------------- model


@jax.custom_vjp
def small_k_matmul(w: jax.Array, xt: jax.Array) -> jax.Array:
  """``w.T @ xt`` for a kernel ``w`` (K, N) and feature-major inputs ``xt`` (K, B).

  For K <= ``SMALL_K`` it is written out as K multiply-adds of (B,) rows per output,
  which XLA fuses with the surrounding elementwise ops instead of calling a matmul
  library for a contraction over a handful of features. The weight gradient, which
  contracts over the batch, is a ``dot`` (see ``_small_k_matmul_bwd``).
  """
  return _multiply_add(w, xt)


def _multiply_add(w: jax.Array, xt: jax.Array) -> jax.Array:
  k, n = w.shape
  if k > SMALL_K:
    return jnp.dot(w.T, xt)
  return jnp.stack([sum(w[i, j] * xt[i] for i in range(k)) for j in range(n)])


def _small_k_matmul_fwd(w, xt):
  return _multiply_add(w, xt), (w, xt)


def _small_k_matmul_bwd(res, g):
  w, xt = res
  # d/dw contracts over the B samples (a proper dot); d/dxt over the N outputs (small).
  return jnp.dot(xt, g.T), _multiply_add(w.T, g)


small_k_matmul.defvjp(_small_k_matmul_fwd, _small_k_matmul_bwd)


def torch_linear_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32):
  """PyTorch's ``nn.Linear`` default for a kernel (in, out): U(±1/sqrt(in)).

  (``kaiming_uniform_(a=sqrt(5))`` gives the bound ``sqrt(6 / ((1 + 5) · fan_in))``.)
  """
  return nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")(key, shape, dtype)


class SmallLinear(nnx.Module):
  """A bias-free linear layer on feature-major inputs: (in, B) -> (out, B).

  It holds the same parameter as ``nnx.Linear(in, out, use_bias=False)``, a kernel of
  shape (in, out), but contracts with ``small_k_matmul`` so that the circuits' K = 1..3
  contractions fuse (see the module docstring).
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    rngs: nnx.Rngs,
    kernel_init: Callable[..., jax.Array] = torch_linear_init,
  ):
    self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, out_features)))

  def __call__(self, xt: jax.Array) -> jax.Array:
    return small_k_matmul(self.kernel[...], xt)


class Circuit(nnx.Module):
  """A bias-free ReLU MLP with the given layer sizes, e.g. (2, 3, 2, 1)."""

  def __init__(self, sizes: tuple[int, ...], *, rngs: nnx.Rngs):
    self.sizes = tuple(sizes)
    self.layers = nnx.List([SmallLinear(a, b, rngs=rngs) for a, b in itertools.pairwise(sizes)])

  def features_major(self, xt: jax.Array) -> jax.Array:
    """Feature-major forward pass: (in, B) -> (out, B)."""
    for layer in self.layers[:-1]:
      xt = jax.nn.relu(layer(xt))
    return self.layers[-1](xt)

  def __call__(self, x: jax.Array) -> jax.Array:
    """The usual batch-major forward pass: (B, in) -> (B, out)."""
    return self.features_major(x.T).T


def make_model(task: Task, init: str = "random", seed: int = 0) -> Circuit:
  """The task's circuit, PyTorch-initialised from ``seed`` or the notebook's weights."""
  model = Circuit(task.sizes, rngs=nnx.Rngs(seed))
  if init == "notebook":
    for layer, kernel in zip(model.layers, NOTEBOOK[task.name].init, strict=True):
      layer.kernel[...] = jnp.asarray(kernel, jnp.float32)
  elif init != "random":
    raise ValueError(f"init must be 'random' or 'notebook', got {init!r}")
  return model


def kernels(model: Circuit) -> list[np.ndarray]:
  return [np.asarray(layer.kernel[...]) for layer in model.layers]


# ----------------------------------------------------------------------------- data


def sample_batch(
  task: Task, data_key: jax.Array, step: jax.Array | int, batch_size: int
) -> jax.Array:
  """The feature-major batch (n_in, B) of global step ``step``, uniform in [-1, 1).

  Every step's batch depends only on (data_key, step), so a chunked loop and a
  per-step loop see the same data. Threefry's non-partitionable variant is used: it
  draws two 32-bit words per block instead of one (half the hashing).
  """
  with jax.threefry_partitionable(False):
    key = jax.random.fold_in(data_key, step)
    return jax.random.uniform(key, (task.sizes[0], batch_size), minval=-1.0, maxval=1.0)


def test_set(task: Task, key: jax.Array, n: int = 1000) -> tuple[jax.Array, jax.Array]:
  xt = jax.random.uniform(key, (task.sizes[0], n), minval=-1.0, maxval=1.0)
  return xt, task.target(xt)


def mse(model: Circuit, xt: jax.Array, yt: jax.Array) -> jax.Array:
  return jnp.mean((model.features_major(xt) - yt) ** 2)


# ----------------------------------------------------------------------------- optimizers

DEFAULT_LR = {"sgd": 1e-4, "adam": 1e-3, "relativistic_adam": 1e-3}


def make_optimizer(
  name: str, lr: float | None = None, speed_limit: float = 0.1, mode: str = "per_param"
) -> optax.GradientTransformation:
  lr = DEFAULT_LR[name] if lr is None else lr
  if name == "sgd":
    return optax.sgd(lr)
  if name == "adam":
    return optax.adam(lr)
  if name == "relativistic_adam":
    return relax_optax.relativistic_adam(lr, speed_limit=speed_limit, mode=mode)
  raise ValueError(f"unknown optimizer {name!r}")


# ----------------------------------------------------------------------------- training


def train_simple(
  model: Circuit,
  task: Task,
  tx: optax.GradientTransformation,
  steps: int,
  *,
  data_key: jax.Array,
  batch_size: int = 1000,
) -> list[float]:
  """The textbook NNX loop: ``nnx.Optimizer`` and one ``@nnx.jit`` step per iteration.

  Trains ``model`` in place and returns the training losses. Same batches as ``train``.
  """
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, xt):
    def loss_fn(model):
      return mse(model, xt, task.target(xt))

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = []
  for step in range(steps):
    xt = sample_batch(task, data_key, step, batch_size)
    losses.append(float(train_step(model, optimizer, xt)))
  return losses


def make_block(
  graphdef: nnx.GraphDef, task: Task, tx: optax.GradientTransformation, steps: int, batch_size: int
) -> Callable[..., Any]:
  """A pure function running ``steps`` training steps from global step ``start``.

  ``block(params, opt_state, data_key, start, test_x, test_y) -> (params, opt_state,
  test_mse)``: a ``lax.scan`` over chunks of ``CHUNK`` steps whose batches are drawn in
  one call and which is unrolled (each step then reads its batch through a static
  slice, not a dynamic one), then a scan over the remaining steps; the test MSE is
  taken at the end.
  """

  def loss_fn(params, xt):
    return mse(nnx.merge(graphdef, params), xt, task.target(xt))

  def step(carry, xt):
    params, opt_state = carry
    grads = jax.grad(loss_fn)(params, xt)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  def block(params, opt_state, data_key, start, test_x, test_y):
    n_chunks, rest = divmod(steps, CHUNK)
    batches = jax.vmap(lambda t: sample_batch(task, data_key, t, batch_size))

    def chunk(carry, t0):
      ts = t0 + jnp.arange(CHUNK)
      return lax.scan(step, carry, batches(ts), unroll=True)[0], None

    carry = (params, opt_state)
    if n_chunks:
      carry = lax.scan(chunk, carry, start + CHUNK * jnp.arange(n_chunks))[0]
    if rest:
      ts = start + CHUNK * n_chunks + jnp.arange(rest)
      carry = lax.scan(step, carry, batches(ts))[0]
    params, opt_state = carry
    return params, opt_state, mse(nnx.merge(graphdef, params), test_x, test_y)

  return block


@functools.lru_cache(maxsize=64)
def _compiled_block(graphdef, task, tx, steps, batch_size, batched):
  """``make_block`` jitted (and vmapped over seeds if ``batched``), reused across calls."""
  block = make_block(graphdef, task, tx, steps, batch_size)
  if batched:
    return jax.jit(jax.vmap(block, (0, 0, None, None, None, None)))
  # One seed: drop the seed axis inside (a vmap of one would batch every tiny op).
  return jax.jit(
    lambda p, s, *a: jax.tree.map(
      lambda x: x[None], block(*jax.tree.map(lambda x: x[0], (p, s)), *a)
    )
  )


@dataclasses.dataclass
class Result:
  """What one call of ``train`` returns (arrays have a leading seed axis)."""

  task: str
  steps: list[int]  # the steps at which the test MSE was taken (after that many updates)
  test_mse: np.ndarray  # (n_seeds, len(steps))
  kernels: list[np.ndarray]  # final kernels, each (n_seeds, in, out)
  seconds: float  # wall time, compilation included
  models: list[Circuit]


def train(
  models: list[Circuit],
  task: Task,
  tx: optax.GradientTransformation,
  steps: int,
  *,
  data_key: jax.Array,
  test_key: jax.Array,
  batch_size: int = 1000,
  log_every: int = NOTEBOOK_LOG_EVERY,
  progress: Callable[[int], None] | None = None,
  log: Callable[[int, np.ndarray], None] | None = None,
) -> Result:
  """Train ``models`` (independent initialisations, one data stream) with ``vmap``.

  Splits each model once, stacks the parameters along a seed axis and runs blocks of
  ``log_every`` steps as compiled XLA; the test MSE on a fixed 1000-sample test set
  is taken before training and after each block. The models are updated in place.
  """
  t0 = time.perf_counter()
  graphdef, _ = nnx.split(models[0])
  params = jax.tree.map(lambda *p: jnp.stack(p), *[nnx.split(m)[1] for m in models])
  opt_state = jax.vmap(tx.init)(params)
  test_x, test_y = test_set(task, test_key)
  evaluate = jax.jit(jax.vmap(lambda p: mse(nnx.merge(graphdef, p), test_x, test_y)))

  def run(n, params, opt_state, start):
    block = _compiled_block(graphdef, task, tx, n, batch_size, len(models) > 1)
    return block(params, opt_state, data_key, start, test_x, test_y)

  done, seen, curve = 0, [0], [np.asarray(evaluate(params))]
  if log:
    log(0, curve[-1])
  while done < steps:
    n = min(log_every, steps - done)
    params, opt_state, test_mse = run(n, params, opt_state, jnp.int32(done))
    done += n
    seen.append(done)
    curve.append(np.asarray(test_mse))
    if progress:
      progress(n)
    if log and (done % log_every == 0 or done == steps):
      log(done, curve[-1])
  for i, m in enumerate(models):
    nnx.update(m, jax.tree.map(lambda p, i=i: p[i], params))
  return Result(
    task=task.name,
    steps=seen,
    test_mse=np.stack(curve, axis=1),
    kernels=[np.asarray(k) for k in jax.tree.leaves(params)],
    seconds=time.perf_counter() - t0,
    models=models,
  )


# ----------------------------------------------------------------------------- main


def pin_to_one_core() -> int | None:
  """Pins this process to one CPU core (before JAX starts its threads); returns it.

  Each step is a chain of ~15 tiny kernels; XLA:CPU's runtime hands them between
  threads, and on different cores the hand-offs cost more than the kernels (measured
  3-8x per step).
  """
  if not hasattr(os, "sched_setaffinity"):
    return None
  core = min(os.sched_getaffinity(0))
  os.sched_setaffinity(0, {core})
  return core


def setup_device(platform: str | None, pin: bool) -> jax.Device:
  """Selects the platform, pins to one core on CPU and prints the device."""
  if platform:
    jax.config.update("jax_platforms", platform)
  pinned = pin_to_one_core() if platform in (None, "cpu") and pin else None
  device = jax.devices()[0]
  if device.platform != "cpu" and pinned is not None:
    os.sched_setaffinity(0, range(os.cpu_count() or 1))  # an accelerator: undo
    pinned = None
  note = f"; pinned to CPU core {pinned} (--no-pin to use all)" if pinned is not None else ""
  print(f"XLA device: {device.platform.upper()} {device.device_kind} ({device}){note}")
  return device


def format_kernels(ks: list[np.ndarray]) -> str:
  names = [f"hidden_layer_{i}" for i in range(len(ks) - 1)] + ["output_layer"]
  return "\n".join(
    f"  {name}: {np.array2string(k, precision=4, suppress_small=True)}".replace(
      "\n", "\n" + " " * (len(name) + 4)
    )
    for name, k in zip(names, ks, strict=True)
  )


def task_keys(task: Task, seed: int) -> tuple[jax.Array, jax.Array]:
  """The (data, test set) keys of a task: the same for every optimizer and init."""
  return tuple(
    jax.random.split(jax.random.fold_in(jax.random.key(seed), list(TASKS).index(task.name)))
  )


def main(argv: list[str] | None = None) -> list[Result]:
  args = parse_args(argv)
  setup_device(args.platform, not args.no_pin)
  names = list(TASKS) if "all" in args.task else args.task
  tx = make_optimizer(args.optimizer, args.lr, args.speed_limit, args.mode)
  lr = DEFAULT_LR[args.optimizer] if args.lr is None else args.lr
  print(f"optimizer {args.optimizer} lr {lr:g}; batch {args.batch_size}; init {args.init}")
  results = []
  with tqdm(
    total=sum(args.steps or TASKS[n].steps for n in names),
    unit="step",
    unit_scale=True,
    dynamic_ncols=True,
  ) as bar:
    for name in names:
      task = TASKS[name]
      steps = args.steps or task.steps
      data_key, test_key = task_keys(task, args.seed)
      bar.set_description(name)
      bar.write(f"== {name}: f = {task.formula}, layers {task.sizes}, {steps:,} steps")

      def log(step, mses, task=task):
        nb = notebook_loss_at(task, step) if args.init == "notebook" else None
        note = f"   (notebook: {nb:.4g})" if nb is not None else ""
        bar.write(f"  {task.name:8s} step {step:>9,d}  test MSE {mses[0]:.4g}{note}")

      r = train(
        [make_model(task, args.init, args.seed)],
        task,
        tx,
        steps,
        data_key=data_key,
        test_key=test_key,
        batch_size=args.batch_size,
        log_every=args.log_every,
        progress=bar.update,
        log=log,
      )
      results.append(r)
      bar.write(
        "  learned weights (kernels, in x out):\n" + format_kernels([k[0] for k in r.kernels])
      )
      bar.write(f"  final test MSE {r.test_mse[0, -1]:.4g}   wall {r.seconds:.1f} s")

  print(
    "\n| task | steps | final test MSE | notebook's last print: step, notebook, ours | wall s |"
  )
  print("| --- | ---: | ---: | --- | ---: |")
  for r in results:
    losses = NOTEBOOK[r.task].losses
    last = NOTEBOOK_LOG_EVERY * (len(losses) - 1)
    nb = "-"
    if args.init == "notebook" and last in r.steps:
      nb = f"{last:,}: {losses[-1]:.3g} vs {r.test_mse[0, r.steps.index(last)]:.3g}"
    print(f"| {r.task} | {r.steps[-1]:,} | {r.test_mse[0, -1]:.3g} | {nb} | {r.seconds:.1f} |")
  print(f"total wall time {sum(r.seconds for r in results):.1f} s")
  return results


def add_training_args(p: argparse.ArgumentParser) -> None:
  """The options shared with ``benchmarks/circuits.py``."""
  p.add_argument(
    "--task", nargs="+", default=["all"], choices=["all", *TASKS], help="one or more tasks"
  )
  p.add_argument("--optimizer", default="sgd", choices=list(DEFAULT_LR))
  p.add_argument(
    "--lr",
    type=float,
    default=None,
    help="learning rate (default: sgd 1e-4 as the notebook, adam 1e-3)",
  )
  p.add_argument("--speed-limit", type=float, default=0.1, help="relativistic_adam's speed limit c")
  p.add_argument("--mode", default="per_param", choices=list(relax_optax.MODES))
  p.add_argument(
    "--steps",
    type=int,
    default=None,
    help="steps per task (default: the notebook's, 300k or 3M for min)",
  )
  p.add_argument("--batch-size", type=int, default=1000)
  p.add_argument("--seed", type=int, default=0, help="initialisation / data seed")
  p.add_argument("--log-every", type=int, default=NOTEBOOK_LOG_EVERY)
  p.add_argument("--platform", choices=["cpu", "gpu", "tpu"], default=None)
  p.add_argument(
    "--no-pin",
    action="store_true",
    help="on CPU, do not pin the process to one core (pinning is faster)",
  )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
  )
  add_training_args(p)
  p.add_argument(
    "--init",
    choices=["notebook", "random"],
    default="notebook",
    help="notebook: the weights the notebook printed; random: PyTorch's nn.Linear default",
  )
  return p.parse_args(argv)


if __name__ == "__main__":
  main()
