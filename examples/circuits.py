"""Train the six "mathematical circuit" tasks with Flax NNX, fast, on CPU/GPU/TPU.

A port of the PyTorch notebook ``seeds/mathematical-circuits-notebook.txt``: tiny
bias-free ReLU MLPs learn identity, negation, |x|, x1+x2, x1-x2 and min(x1, x2) from
inputs drawn uniformly in [-1, 1], with the MSE loss, a fresh batch of 1000 each step,
a fixed 1000-sample test set, SGD at lr 1e-4 for 300k steps (3M for min).

    python examples/circuits.py                       # all six tasks, notebook settings
    python examples/circuits.py --task min --optimizer relativistic_adam --lr 1e-3
    python examples/circuits.py --task min --seeds 64 --plot min.png

Two ways to train the same ``nnx.Module``:

* ``train_simple``: the textbook NNX loop, ``nnx.Optimizer(model, tx, wrt=nnx.Param)``
  and a ``@nnx.jit`` step per Python iteration (a few hundred steps: the tests).
* ``train``: split once (``nnx.split``) and run pure JAX: a ``lax.scan`` over chunks
  of steps, each chunk drawing its batches on the device in one call, ``vmap`` over
  independent initialisations (``--seeds``). This is what the command line runs.

Why it is fast. The layers contract over K = 1..3 features. As ``x @ W`` each such
``dot`` becomes a library call on XLA:CPU (YNNPACK/Eigen), a few microseconds of call
overhead for a few thousand flops, and with the batch as the leading axis (B, K) every
elementwise kernel works on rows of 1..3 floats. Here the layer is written out as K
multiply-adds on feature-major rows (K, B) (``small_k_matmul``), which XLA fuses with
the ReLUs; only the weight gradient, which contracts over the 1000-sample batch, is a
``dot`` (a ``custom_vjp``). Threefry on CPU runs as a small while loop per call, so the
batches of ``CHUNK`` steps are drawn in one call, and the scan over those steps is
unrolled so that each step reads its batch through a static slice (a dynamic slice in
every fused kernel costs more than the step's arithmetic). See
``benchmarks/circuits_speed.py`` for the measurements.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax import lax

import relax_optax

SUCCESS_MSE = 1e-4  # a run "solves" a task when its final test MSE is below this
CHUNK = 16  # steps whose batches are drawn in one call; the scan over them is unrolled
SMALL_K = 8  # layers contracting over at most this many features use multiply-adds


# ----------------------------------------------------------------------------- tasks


@dataclasses.dataclass(frozen=True)
class Task:
  """One circuit: the layer sizes, the target and what the notebook printed."""

  name: str
  formula: str
  sizes: tuple[int, ...]
  target: Callable[[jax.Array], jax.Array]  # feature-major (n_in, B) -> (1, B)
  steps: int  # the notebook's number of steps
  torch_seed: int  # the notebook's torch.manual_seed
  init: tuple[tuple[tuple[float, ...], ...], ...]  # printed initial kernels (in, out)
  start_loss: float  # printed "Starting Loss" (test MSE before training)
  losses: tuple[float, ...]  # printed test MSE after update i, i % 30000 == 0
  final: tuple[tuple[tuple[float, ...], ...], ...] | None  # printed final kernels


# The printed weights are ``layer.weight.T``, i.e. (in, out) like an NNX kernel, to the
# 4 decimals PyTorch prints. min's output stops after 36 of its 100 prints (the last
# one cut mid-number, left out here) and never shows its final weights.
TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task(
            "identity", "x", (1, 2, 1), lambda x: x[0:1], 300_000, 0,
            (((-0.0075, 0.5364),), ((-0.5820,), (-0.5204,))),
            0.45063677430152893,
            (0.45062240958213806, 0.2400665134191513, 0.1759452372789383,
             0.16171278059482574, 0.11106877028942108, 0.021715493872761726,
             0.0008291789563372731, 1.7237687643500976e-05, 4.432341427218489e-07,
             1.9709477783180773e-07),
            (((-0.9192, 1.0035),), ((-1.0872,), (0.9957,))),
        ),
        Task(
            "negation", "-x", (1, 2, 1), lambda x: -x[0:1], 300_000, 1,
            (((0.5153, -0.4414),), ((-0.1371,), (0.3319,))),
            0.26709434390068054,
            (0.2670891582965851, 0.07879319787025452, 0.004247117787599564,
             9.394864173373207e-05, 1.610331992196734e-06, 2.0403335554419755e-07,
             1.9260137662513444e-07, 1.8912245991486998e-07, 1.8678449009712494e-07,
             1.849424222655216e-07),
            (((1.0627, -1.0206),), ((-0.9403,), (0.9790,))),
        ),
        Task(
            "abs", "|x|", (1, 2, 1), lambda x: jnp.abs(x[0:1]), 300_000, 1,
            (((0.5153, -0.4414),), ((-0.1371,), (0.3319,))),
            0.31527942419052124,
            (0.31527337431907654, 0.1359097808599472, 0.017552969977259636,
             0.0005560762365348637, 1.0874651707126759e-05, 3.6069971542929125e-07,
             1.9506188664308866e-07, 1.9009961249594198e-07, 1.8731030593244213e-07,
             1.8525956591020076e-07),
            (((1.0627, -1.0206),), ((0.9403,), (0.9790,))),
        ),
        Task(
            "add", "x1 + x2", (2, 2, 1), lambda x: x[0:1] + x[1:2], 300_000, 0,
            (((-0.0053, -0.5820), (0.3793, -0.5204)), ((-0.2723,), (0.1896,))),
            0.804374635219574,
            (0.8043529391288757, 0.4202917516231537, 0.345365971326828,
             0.2909817397594452, 0.06650708615779877, 0.0024126311764121056,
             0.0001487390254624188, 1.0628493328113109e-05, 8.306866448037908e-07,
             3.158412766879337e-07),
            (((0.8511, -0.9304), (0.8522, -0.9291)), ((1.1742,), (-1.0755,))),
        ),
        Task(
            "sub", "x1 - x2", (2, 2, 1), lambda x: x[0:1] - x[1:2], 300_000, 0,
            (((-0.0053, -0.5820), (0.3793, -0.5204)), ((-0.2723,), (0.1896,))),
            0.640518069267273,
            (0.6405144333839417, 0.42583832144737244, 0.23183923959732056,
             0.05851614475250244, 0.01078260038048029, 0.0016846817452460527,
             0.0001997139333980158, 2.0616595065803267e-05, 2.022708258664352e-06,
             3.452058763286914e-07),
            (((-0.8519, 0.9296), (0.8508, -0.9309)), ((-1.1746,), (1.0750,))),
        ),
        Task(
            "min", "min(x1, x2)", (2, 3, 2, 1),
            lambda x: jnp.minimum(x[0:1], x[1:2]), 3_000_000, 0,
            (((0.3643, -0.1371, -0.6657), (-0.3121, 0.3319, 0.4241)),
             ((-0.1188, -0.0707), (0.2937, 0.1601), (0.0803, 0.0285)),
             ((0.2583,), (-0.2756,))),
            0.33890464901924133,
            (0.33890366554260254, 0.3093772232532501, 0.24279135465621948,
             0.16426093876361847, 0.14048132300376892, 0.13215050101280212,
             0.12342052906751633, 0.09989515691995621, 0.0739549994468689,
             0.06282414495944977, 0.05912776291370392, 0.05712759494781494,
             0.0558374784886837, 0.05497528240084648, 0.05437467247247696,
             0.05397646501660347, 0.05370553582906723, 0.05352906510233879,
             0.053397610783576965, 0.053293194621801376, 0.05321613699197769,
             0.0531618557870388, 0.05312013253569603, 0.05308714136481285,
             0.05306166037917137, 0.05304386094212532, 0.05303012579679489,
             0.05302044004201889, 0.05301380902528763, 0.053008321672677994,
             0.053004421293735504, 0.05300185829401016, 0.052999347448349,
             0.052997689694166183, 0.052995797246694565),
            None,
        ),
    ]
}
NOTEBOOK_LOG_EVERY = 30_000


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

  def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs,
               kernel_init: Callable[..., jax.Array] = torch_linear_init):
    self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, out_features)))

  def __call__(self, xt: jax.Array) -> jax.Array:
    return small_k_matmul(self.kernel[...], xt)


class Circuit(nnx.Module):
  """A bias-free ReLU MLP with the given layer sizes, e.g. (2, 3, 2, 1)."""

  def __init__(self, sizes: tuple[int, ...], *, rngs: nnx.Rngs):
    self.sizes = tuple(sizes)
    self.layers = nnx.List(
        [SmallLinear(a, b, rngs=rngs) for a, b in itertools.pairwise(sizes)]
    )

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
    for layer, kernel in zip(model.layers, task.init, strict=True):
      layer.kernel[...] = jnp.asarray(kernel, jnp.float32)
  elif init != "random":
    raise ValueError(f"init must be 'random' or 'notebook', got {init!r}")
  return model


def kernels(model: Circuit) -> list[np.ndarray]:
  return [np.asarray(layer.kernel[...]) for layer in model.layers]


# ----------------------------------------------------------------------------- data


def sample_batch(task: Task, data_key: jax.Array, step: jax.Array | int,
                 batch_size: int) -> jax.Array:
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


def make_optimizer(name: str, lr: float | None = None, speed_limit: float = 0.1,
                   mode: str = "per_param") -> optax.GradientTransformation:
  lr = DEFAULT_LR[name] if lr is None else lr
  if name == "sgd":
    return optax.sgd(lr)
  if name == "adam":
    return optax.adam(lr)
  if name == "relativistic_adam":
    return relax_optax.relativistic_adam(lr, speed_limit=speed_limit, mode=mode)
  raise ValueError(f"unknown optimizer {name!r}")


# ----------------------------------------------------------------------------- training


def train_simple(model: Circuit, task: Task, tx: optax.GradientTransformation,
                 steps: int, *, data_key: jax.Array, batch_size: int = 1000) -> list[float]:
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


def make_block(graphdef: nnx.GraphDef, task: Task, tx: optax.GradientTransformation,
               steps: int, batch_size: int) -> Callable[..., Any]:
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
  return jax.jit(lambda p, s, *a: jax.tree.map(
      lambda x: x[None], block(*jax.tree.map(lambda x: x[0], (p, s)), *a)))


@dataclasses.dataclass
class Result:
  """What one call of ``train`` returns (arrays have a leading seed axis)."""

  task: str
  steps: list[int]  # the steps at which the test MSE was taken (after that many updates)
  test_mse: np.ndarray  # (n_seeds, len(steps))
  kernels: list[np.ndarray]  # final kernels, each (n_seeds, in, out)
  seconds: float  # wall time, compilation included
  models: list[Circuit]


def train(models: list[Circuit], task: Task, tx: optax.GradientTransformation, steps: int,
          *, data_key: jax.Array, test_key: jax.Array, batch_size: int = 1000,
          log_every: int = NOTEBOOK_LOG_EVERY, progress: Callable[[int], None] | None = None,
          log: Callable[[int, np.ndarray], None] | None = None) -> Result:
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
      task=task.name, steps=seen, test_mse=np.stack(curve, axis=1),
      kernels=[np.asarray(k) for k in jax.tree.leaves(params)],
      seconds=time.perf_counter() - t0, models=models,
  )


# ----------------------------------------------------------------------------- reporting


def format_kernels(ks: list[np.ndarray]) -> str:
  names = [f"hidden_layer_{i}" for i in range(len(ks) - 1)] + ["output_layer"]
  return "\n".join(
      f"  {name}: {np.array2string(k, precision=4, suppress_small=True)}".replace(
          "\n", "\n" + " " * (len(name) + 4))
      for name, k in zip(names, ks, strict=True)
  )


def notebook_loss_at(task: Task, step: int) -> float | None:
  """The notebook's printed test MSE at ``step`` (it prints after update ``step``)."""
  if step % NOTEBOOK_LOG_EVERY:
    return None
  i = step // NOTEBOOK_LOG_EVERY
  return task.losses[i] if i < len(task.losses) else None


def plot_curves(results: list[Result], path: str, init: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  n = len(results)
  cols = min(n, 3)
  rows = math.ceil(n / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
  for ax, r in zip(axes.flat, results, strict=False):
    task = TASKS[r.task]
    for curve in r.test_mse:
      ax.semilogy(r.steps, curve, color="C0", alpha=1.0 if len(r.test_mse) == 1 else 0.3)
    ax.plot([], [], color="C0", label="ours (JAX/Flax)")
    if init == "notebook":
      nb_steps = NOTEBOOK_LOG_EVERY * np.arange(len(task.losses))
      ax.semilogy(nb_steps, task.losses, "k.", ms=5, label="notebook (PyTorch)")
    ax.axhline(SUCCESS_MSE, color="gray", lw=0.8, ls=":")
    ax.set_title(f"{task.name}: {task.formula}, {task.sizes}")
    ax.xaxis.set_major_formatter(lambda v, _: f"{v / 1e6:g}M" if v >= 1e6 else f"{v / 1e3:g}k")
    ax.set_xlabel("step")
    ax.set_ylabel("test MSE")
    ax.legend(fontsize=8)
  for ax in list(axes.flat)[n:]:
    ax.set_visible(False)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_seeds(results: list[Result], path: str, label: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(1.4 * len(results) + 2, 3.6))
  for i, r in enumerate(results):
    final = r.test_mse[:, -1]
    jitter = np.random.default_rng(0).uniform(-0.2, 0.2, len(final))
    ax.scatter(i + jitter, np.maximum(final, 1e-12), s=10, alpha=0.6)
    ax.text(i, 3.0, f"{np.mean(final < SUCCESS_MSE):.0%}", ha="center", fontsize=9)
  ax.set_yscale("log")
  ax.axhline(SUCCESS_MSE, color="gray", lw=0.8, ls=":")
  ax.set_xticks(range(len(results)), [r.task for r in results])
  ax.set_ylabel("final test MSE per seed\n(below 1e-12 drawn at 1e-12)")
  ax.set_ylim(top=10)
  ax.set_title(f"{label}: {len(results[0].test_mse)} seeds (% below {SUCCESS_MSE:g})")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def run_label(d: dict) -> str:
  label = f"{d['optimizer']} lr {d['lr']:g}"
  if d["optimizer"] == "relativistic_adam":
    label += f", c {d['speed_limit']:g}" + (f", {d['mode']}" if d["mode"] != "per_param" else "")
  return label


def plot_from_json(paths: list[str], out: str) -> None:
  """One panel per task: the test-MSE curves of earlier ``--json`` runs, overlaid."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  runs = []
  for path in paths:
    with open(path) as f:
      runs.append(json.load(f))
  names = [n for n in TASKS if any(n in d["tasks"] for d in runs)]
  fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4), squeeze=False)
  for ax, name in zip(axes.flat, names, strict=True):
    task = TASKS[name]
    if any(d["init"] == "notebook" for d in runs):
      nb_steps = NOTEBOOK_LOG_EVERY * np.arange(len(task.losses))
      ax.semilogy(nb_steps, task.losses, "k.", ms=4, label="notebook (PyTorch, SGD lr 1e-4)")
    for i, d in enumerate(runs):
      if name in d["tasks"]:
        r = d["tasks"][name]
        curves = np.maximum(np.asarray(r["test_mse"]), 1e-14)
        for j, curve in enumerate(curves):
          ax.semilogy(r["steps"], curve, color=f"C{i}", alpha=1.0 if len(curves) == 1 else 0.3,
                      label=run_label(d) if j == 0 else None)
    ax.axhline(SUCCESS_MSE, color="gray", lw=0.8, ls=":")
    ax.set_title(f"{task.name}: {task.formula}, {task.sizes}, init {runs[0]['init']}")
    ax.xaxis.set_major_formatter(lambda v, _: f"{v / 1e6:g}M" if v >= 1e6 else f"{v / 1e3:g}k")
    ax.set_xlabel("step")
    ax.set_ylabel("test MSE (below 1e-14 drawn at 1e-14)")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> list[Result]:
  args = parse_args(argv)
  if args.plot_json:
    plot_from_json(args.plot_json, args.plot or "circuits.png")
    print(f"wrote {args.plot or 'circuits.png'}")
    return []
  if args.platform:
    jax.config.update("jax_platforms", args.platform)
  pinned = None
  if args.platform in (None, "cpu") and not args.no_pin and hasattr(os, "sched_setaffinity"):
    # Before JAX starts its threads, which inherit it. Each step is a chain of ~15
    # tiny kernels; XLA:CPU's runtime hands them between threads, and on different
    # cores the hand-offs cost more than the kernels (measured 3-8x per step).
    pinned = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {pinned})
  device = jax.devices()[0]
  if device.platform != "cpu" and pinned is not None:
    os.sched_setaffinity(0, range(os.cpu_count() or 1))  # an accelerator: undo
    pinned = None
  print(f"XLA device: {device.platform.upper()} {device.device_kind} ({device})"
        + (f"; pinned to CPU core {pinned} (--no-pin to use all)" * (pinned is not None)))
  names = list(TASKS) if "all" in args.task else args.task
  init = args.init or ("notebook" if args.seeds == 1 else "random")
  if init == "notebook" and args.seeds > 1:
    raise SystemExit("--init notebook gives one initialisation; use --seeds 1")
  tx = make_optimizer(args.optimizer, args.lr, args.speed_limit, args.mode)
  lr = DEFAULT_LR[args.optimizer] if args.lr is None else args.lr
  extra = f", speed_limit {args.speed_limit}, mode {args.mode}" * (
      args.optimizer == "relativistic_adam")
  print(f"optimizer {args.optimizer} lr {lr:g}{extra}; batch {args.batch_size}; "
        f"init {init}; seeds {args.seeds}")
  total = sum(args.steps or TASKS[n].steps for n in names)

  from tqdm import tqdm

  results = []
  with tqdm(total=total, unit="step", unit_scale=True, dynamic_ncols=True) as bar:
    for name in names:
      task = TASKS[name]
      steps = args.steps or task.steps
      if init == "notebook":
        models = [make_model(task, "notebook")]
      else:
        models = [make_model(task, "random", args.seed + s) for s in range(args.seeds)]
      key = jax.random.key(args.seed)
      data_key, test_key = jax.random.split(jax.random.fold_in(key, list(TASKS).index(name)))
      bar.set_description(name)

      def log(step, mses, task=task):
        if args.seeds == 1:
          nb = notebook_loss_at(task, step) if init == "notebook" else None
          note = f"   (notebook: {nb:.4g})" if nb is not None else ""
          bar.write(f"  {task.name:8s} step {step:>9,d}  test MSE {mses[0]:.4g}{note}")

      bar.write(f"== {name}: f = {task.formula}, layers {task.sizes}, {steps:,} steps")
      r = train(models, task, tx, steps, data_key=data_key, test_key=test_key,
                batch_size=args.batch_size, log_every=args.log_every,
                progress=bar.update, log=log)
      results.append(r)
      final = r.test_mse[:, -1]
      if args.seeds == 1:
        bar.write("  learned weights (kernels, in x out):\n" + format_kernels(
            [k[0] for k in r.kernels]))
        bar.write(f"  final test MSE {final[0]:.4g}   wall {r.seconds:.1f} s")
      else:
        bar.write(f"  {args.seeds} seeds: {np.mean(final < SUCCESS_MSE):.0%} reach test MSE "
                  f"< {SUCCESS_MSE:g}; median {np.median(final):.3g}; "
                  f"wall {r.seconds:.1f} s")

  if args.seeds > 1:
    print(f"\n| task | steps | success (test MSE < {SUCCESS_MSE:g}) | median final test MSE "
          "| wall s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in results:
      final = r.test_mse[:, -1]
      print(f"| {r.task} | {r.steps[-1]:,} | {np.mean(final < SUCCESS_MSE):.0%} "
            f"({np.sum(final < SUCCESS_MSE)}/{len(final)}) | {np.median(final):.3g} "
            f"| {r.seconds:.1f} |")
  else:
    print("\n| task | steps | final test MSE | notebook's last print: step, notebook, ours "
          "| wall s |")
    print("| --- | ---: | ---: | --- | ---: |")
    for r in results:
      task = TASKS[r.task]
      last = NOTEBOOK_LOG_EVERY * (len(task.losses) - 1)
      nb = "-"
      if init == "notebook" and last in r.steps:
        nb = f"{last:,}: {task.losses[-1]:.3g} vs {r.test_mse[0, r.steps.index(last)]:.3g}"
      print(f"| {r.task} | {r.steps[-1]:,} | {r.test_mse[0, -1]:.3g} | {nb} "
            f"| {r.seconds:.1f} |")
  print(f"total wall time {sum(r.seconds for r in results):.1f} s")

  if args.plot:
    if args.seeds > 1:
      plot_seeds(results, args.plot, f"{args.optimizer} lr {lr:g}{extra}")
    else:
      plot_curves(results, args.plot, init)
    print(f"wrote {args.plot}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({
          "device": str(device), "optimizer": args.optimizer, "lr": lr,
          "speed_limit": args.speed_limit, "mode": args.mode, "init": init,
          "seeds": args.seeds, "batch_size": args.batch_size,
          "tasks": {r.task: {"steps": r.steps, "test_mse": r.test_mse.tolist(),
                             "kernels": [k.tolist() for k in r.kernels],
                             "seconds": r.seconds} for r in results},
      }, f)
    print(f"wrote {args.json}")
  return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--task", nargs="+", default=["all"], choices=["all", *TASKS],
                 help="one or more tasks")
  p.add_argument("--optimizer", default="sgd", choices=list(DEFAULT_LR))
  p.add_argument("--lr", type=float, default=None,
                 help="learning rate (default: sgd 1e-4 as the notebook, adam 1e-3)")
  p.add_argument("--speed-limit", type=float, default=0.1,
                 help="relativistic_adam's speed limit c")
  p.add_argument("--mode", default="per_param",
                 choices=["global", "per_param", "per_component"])
  p.add_argument("--steps", type=int, default=None,
                 help="steps per task (default: the notebook's, 300k or 3M for min)")
  p.add_argument("--batch-size", type=int, default=1000)
  p.add_argument("--seeds", type=int, default=1,
                 help="train N independent initialisations at once (vmap)")
  p.add_argument("--seed", type=int, default=0, help="first initialisation / data seed")
  p.add_argument("--init", choices=["notebook", "random"], default=None,
                 help="notebook: the weights the notebook prints; random: PyTorch's "
                      "nn.Linear default (default: notebook for one seed, else random)")
  p.add_argument("--log-every", type=int, default=NOTEBOOK_LOG_EVERY)
  p.add_argument("--plot", default=None, help="write loss curves (or, with --seeds, the "
                 "distribution of final losses) to this PNG")
  p.add_argument("--json", default=None, help="write the results to this JSON file")
  p.add_argument("--plot-json", nargs="+", default=None, metavar="JSON",
                 help="train nothing: overlay the curves of earlier --json runs in --plot")
  p.add_argument("--platform", choices=["cpu", "gpu", "tpu"], default=None)
  p.add_argument("--no-pin", action="store_true",
                 help="on CPU, do not pin the process to one core (pinning is faster)")
  return p.parse_args(argv)


if __name__ == "__main__":
  main()
