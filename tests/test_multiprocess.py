"""Multi-process training: two CPU processes, one global mesh, real collectives.

JAX's own distributed runtime runs here as on a cluster: two processes on this
machine, each with one CPU device, join through ``jax.distributed.initialize``
(coordinator on ``127.0.0.1``, a free port chosen at run time) and exchange
data with the gloo CPU collectives. A small Flax NNX model has its kernels
split over the process axis (rows: FSDP) and its biases and LayerNorm scale
replicated; the batch is split over the same axis.

The workers (``python tests/test_multiprocess.py train|resume …``) train every
public optimizer a few steps under ``jax.jit`` with ``NamedSharding`` and under
``jax.shard_map`` with ``axis_name``, write what each process holds, count
the collectives in the compiled HLO, and save Orbax checkpoints from both
processes. This process (one device) computes the single-process runs the
workers must equal to float32 rounding, and restores the checkpoints resharded
onto its one device. A worker that fails or hangs fails the test with its log.

Run ``python tests/test_multiprocess.py counts`` to print the collective
counts (the table in ``docs/multihost.md``).
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

N_PROCESSES = 2
AXIS = "process"
STEPS = 4  # training steps per run
K = 2  # checkpoint after K steps
TIMEOUT_S = 300  # per launch of the workers
LR, C = 0.05, 0.02  # every group's Adam step is far above the limit: the scaling decides
COUNTED = (
  "optax-adam",
  "adam-global-lorentz",
  "adam-per_param-lorentz",
  "adam-per_component-lorentz",
)
CHECKPOINTED = ("adamw-global-tanh", "adam-per_param-lorentz", "rgd-leapfrog-per_param")


# ---------------------------------------------------------------------------
# The model, the data and the optimizers (the same in every process).
# ---------------------------------------------------------------------------


def _model():
  from flax import nnx

  class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
      self.linear1 = nnx.Linear(8, 16, rngs=rngs)
      self.norm = nnx.LayerNorm(16, rngs=rngs)
      self.linear2 = nnx.Linear(16, 4, rngs=rngs)

    def __call__(self, x):
      import jax.numpy as jnp

      return self.linear2(jnp.tanh(self.norm(self.linear1(x))))

  graphdef, state = nnx.split(MLP(nnx.Rngs(0)))
  params = _to_numpy(nnx.to_pure_dict(state))
  return graphdef, params


def _to_numpy(tree):
  import jax

  return jax.tree.map(np.asarray, tree)


def _specs(params):
  """Kernels split by rows over the process axis; everything else replicated."""
  import jax
  from jax.sharding import PartitionSpec as P

  return jax.tree_util.tree_map_with_path(
    lambda path, p: P(AXIS, None) if path[-1].key == "kernel" else P(), params
  )


def _state_specs(tx, params):
  """Each state leaf takes the spec of the parameter of its shape (scalars: P()).

  In this model equal shapes have equal specs, so the shape decides.
  """
  import jax
  from jax.sharding import PartitionSpec as P

  by_shape = dict(
    zip(
      (p.shape for p in jax.tree.leaves(params)),
      jax.tree.leaves(_specs(params), is_leaf=lambda x: isinstance(x, P)),
      strict=True,
    )
  )
  abstract = jax.eval_shape(tx.init, params)
  return jax.tree.map(lambda s: by_shape.get(s.shape, P()) if s.ndim else P(), abstract)


def _batch(t: int) -> tuple[np.ndarray, np.ndarray]:
  """The global batch of step ``t`` (a function of ``t`` only)."""
  rng = np.random.default_rng(100 + t)
  x = rng.normal(size=(32, 8)).astype(np.float32)
  y = np.sin(x[:, :4] + x[:, 4:]).astype(np.float32)
  return x, y


def optimizers(axis_name: str | None = None) -> dict[str, Any]:
  """Every public optimizer: Adam in every mode and formula, AdamW, RGD, the
  relative limit, and ``optax.adam`` (the baseline of the collective counts)."""
  import optax

  import relax_optax

  cases: dict[str, Any] = {"optax-adam": optax.adam(LR)}
  for mode in relax_optax.MODES:
    for formula in relax_optax.FORMULAS:
      cases[f"adam-{mode}-{formula}"] = relax_optax.relativistic_adam(
        LR, speed_limit=C, mode=mode, formula=formula, axis_name=axis_name
      )
  for mode, formula in zip(relax_optax.MODES, ("tanh", "reference", "lorentz"), strict=True):
    cases[f"adamw-{mode}-{formula}"] = relax_optax.relativistic_adamw(
      LR, speed_limit=C, weight_decay=0.1, mode=mode, formula=formula, axis_name=axis_name
    )
  cases["rgd-global"] = relax_optax.rgd(LR, momentum=0.9, speed_limit=C, axis_name=axis_name)
  cases["rgd-leapfrog-per_param"] = relax_optax.rgd(
    LR, momentum=0.9, speed_limit=C, alpha=0.9, mode="per_param", axis_name=axis_name
  )
  for mode in ("global", "per_param"):
    cases[f"relative-{mode}"] = optax.chain(
      optax.scale_by_adam(),
      optax.scale_by_learning_rate(LR),
      relax_optax.scale_by_relative_speed_limit(
        2.0, warmup_steps=2, mode=mode, axis_name=axis_name
      ),
    )
  return cases


def _loss_fn(graphdef):
  import jax.numpy as jnp
  from flax import nnx

  def loss(params, x, y):
    return jnp.mean((nnx.merge(graphdef, params)(x) - y) ** 2)

  return loss


def jit_step(txs: dict[str, Any], graphdef):
  """One jitted program that takes a step of every optimizer in ``txs``.

  Parameters, states and losses are dicts keyed like ``txs``; one program
  for all compiles in a third of the time of one per optimizer.
  """
  import jax
  import optax

  loss_fn = _loss_fn(graphdef)

  def one(tx, params, state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  def step(params, states, x, y):
    out = {n: one(tx, params[n], states[n], x, y) for n, tx in txs.items()}
    return tuple({n: o[i] for n, o in out.items()} for i in range(3))

  return jax.jit(step)


def shard_map_step(txs: dict[str, Any], graphdef, mesh, param_specs, state_specs):
  """:func:`jit_step` with the whole step inside ``shard_map``.

  Each device holds its shards. Kernels are gathered for the forward pass
  (the transpose of the gather sums and scatters their gradients); the
  gradients of replicated leaves are summed across the axis by the transpose
  of their implicit broadcast. The optimizers see local shards and sum their
  norms over ``axis_name``.
  """
  import jax
  import optax
  from jax.sharding import PartitionSpec as P

  loss_fn = _loss_fn(graphdef)
  n_shards = mesh.shape[AXIS]

  def gather(p, spec):
    return jax.lax.all_gather(p, AXIS, axis=0, tiled=True) if spec != P() else p

  def one(tx, params, state, x, y):
    def local_loss(p):
      full = jax.tree.map(gather, p, param_specs)
      return loss_fn(full, x, y) / n_shards  # the global mean is the sum of these

    loss, grads = jax.value_and_grad(local_loss)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, jax.lax.psum(loss, AXIS)

  def local(params, states, x, y):
    out = {n: one(tx, params[n], states[n], x, y) for n, tx in txs.items()}
    return tuple({n: o[i] for n, o in out.items()} for i in range(3))

  data = P(AXIS, None)
  every = lambda spec: {n: spec for n in txs}
  return jax.jit(
    jax.shard_map(
      local,
      mesh=mesh,
      in_specs=(every(param_specs), state_specs, data, data),
      out_specs=(every(param_specs), state_specs, every(P())),
    )
  )


# ---------------------------------------------------------------------------
# Collectives in compiled HLO.
# ---------------------------------------------------------------------------

_COLLECTIVE = re.compile(
  r"=\s*(?P<shape>\([^=]*?\)|\S+)\s+"
  r"(?P<op>all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)(?:-start)?\("
)


def collectives(hlo: str) -> list[tuple[str, str]]:
  """``(op, shape)`` for each array a collective in compiled HLO text moves.

  XLA packs independent all-reduces into one op over a tuple of arrays (its
  all-reduce combiner does so with the optimizer's and the gradients' alike),
  so each member of a tuple counts as one entry. Async pairs count once
  (``-start``; ``-done`` is not matched); layouts (``{1,0}``) are dropped.
  """
  found = []
  for line in hlo.splitlines():
    m = _COLLECTIVE.search(re.sub(r"/\*.*?\*/", "", line))
    if m:
      shape = re.sub(r"\{[^}]*\}", "", m.group("shape")).strip("()")
      found += [(m.group("op"), member.strip()) for member in shape.split(", ")]
  return found


def collective_ops(hlo: str) -> collections.Counter:
  """How many collective ops of each kind (a packed tuple is one op)."""
  ops = collections.Counter()
  for line in hlo.splitlines():
    m = _COLLECTIVE.search(re.sub(r"/\*.*?\*/", "", line))
    if m:
      ops[m.group("op")] += 1
  return ops


def added_collectives(hlo: str, baseline: str) -> tuple[dict[str, list[str]], list]:
  """The arrays that ``hlo``'s collectives move and ``baseline``'s do not, by
  op, and those of ``baseline`` that ``hlo`` does not move."""
  mine, base = collections.Counter(collectives(hlo)), collections.Counter(collectives(baseline))
  added: dict[str, list[str]] = collections.defaultdict(list)
  for (op, shape), k in sorted((mine - base).items()):
    added[op] += [shape] * k
  return dict(added), sorted((base - mine).elements())


# ---------------------------------------------------------------------------
# The workers.
# ---------------------------------------------------------------------------


def _init_distributed(port: int, process_id: int, num_processes: int) -> None:
  import jax

  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.config.update("jax_numpy_rank_promotion", "raise")
  jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{port}",
    num_processes=num_processes,
    process_id=process_id,
    initialization_timeout=60,
  )


def _global(tree, specs, mesh):
  """Global arrays from full host values (each process keeps its shards)."""
  import jax
  from jax.sharding import NamedSharding

  def one(value, spec):
    value = np.asarray(value)
    sharding = NamedSharding(mesh, spec)
    return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])

  return jax.tree.map(one, tree, specs)


def _host(tree) -> dict[str, np.ndarray]:
  """What this process holds: each leaf's local shard, keyed by path and the
  shard's index (``start:stop`` of its first axis, ``:`` when whole)."""
  import jax

  out = {}
  for path, leaf in _flat(tree):
    for shard in leaf.addressable_shards:
      first = shard.index[0] if shard.index else slice(None)
      where = f"{first.start or 0}:{first.stop}" if first.stop is not None else ":"
      out[f"{jax.tree_util.keystr(path)}@{where}"] = np.asarray(shard.data)
  return out


def _assemble(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """Full arrays from the processes' shards; the copies of a replicated leaf
  (``:``) must be equal bit for bit in every process."""
  whole: dict[str, np.ndarray] = {}
  pieces: dict[str, dict[int, np.ndarray]] = collections.defaultdict(dict)
  for i, part in enumerate(parts):
    for key, value in part.items():
      path, where = key.rsplit("@", 1)
      if where == ":":
        if path in whole:
          np.testing.assert_array_equal(value, whole[path], err_msg=f"process {i}: {path}")
        whole[path] = value
      else:
        pieces[path][int(where.split(":")[0])] = value
  for path, by_start in pieces.items():
    whole[path] = np.concatenate([by_start[k] for k in sorted(by_start)])
  return whole


def _flat(tree):
  import jax

  return jax.tree_util.tree_flatten_with_path(tree)[0]


def _shardings_ok(tree, specs, mesh) -> list[str]:
  from jax.sharding import NamedSharding

  bad = []
  for (path, leaf), (_, spec) in zip(_flat(tree), _flat_specs(specs), strict=True):
    if not leaf.sharding.is_equivalent_to(NamedSharding(mesh, spec), leaf.ndim):
      bad.append(f"{path}: {leaf.sharding} != {spec}")
  return bad


def _flat_specs(specs):
  import jax
  from jax.sharding import PartitionSpec as P

  return jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: isinstance(x, P))[0]


def _named(specs, mesh):
  import jax
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def _restore(path: Path, abstract):
  import orbax.checkpoint as ocp

  checkpointer = ocp.StandardCheckpointer()
  restored = checkpointer.restore(path, abstract)
  checkpointer.close()
  return restored


def _abstract(tree, shardings):
  import jax

  return jax.tree.map(
    lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
    jax.eval_shape(lambda t: t, tree),
    shardings,
  )


def _train(step, params, states, batches, start: int, stop: int, save=None):
  """Steps ``start`` to ``stop``; ``save(params, states)`` before step ``K``."""
  losses = []
  for t in range(start, stop):
    if save is not None and t == K:
      save(params, states)
    params, states, loss = step(params, states, *batches[t])
    losses.append(loss)
  return params, states, {n: np.asarray([float(x[n]) for x in losses]) for n in params}


def _worker(phase: str, port: int, process_id: int, out: Path) -> None:
  _init_distributed(port, process_id, N_PROCESSES)
  import jax
  import orbax.checkpoint as ocp
  from jax.sharding import AxisType
  from jax.sharding import PartitionSpec as P

  assert jax.process_count() == N_PROCESSES and jax.device_count() == N_PROCESSES
  mesh = jax.make_mesh((N_PROCESSES,), (AXIS,), axis_types=(AxisType.Auto,), devices=jax.devices())
  graphdef, params0 = _model()
  param_specs = _specs(params0)
  data_spec = P(AXIS, None)
  batches = [
    tuple(_global(b, (data_spec, data_spec), mesh)) for b in (_batch(t) for t in range(STEPS))
  ]
  params = _global(params0, param_specs, mesh)
  results: dict[str, Any] = {}
  timings: dict[str, float] = {}
  clock = time.perf_counter()

  def lap(what: str) -> None:
    nonlocal clock
    now = time.perf_counter()
    timings[what] = round(now - clock, 2)
    clock = now

  def start(txs):
    """Parameters and states (sharded like the parameters) for every optimizer."""
    specs = {n: _state_specs(tx, params0) for n, tx in txs.items()}
    init = jax.jit(
      lambda p: {n: tx.init(p) for n, tx in txs.items()}, out_shardings=_named(specs, mesh)
    )
    return {n: params for n in txs}, init(params), specs

  def record(prefix, txs, final_params, final_states, losses, specs):
    for n in txs:
      results[f"{prefix}/{n}"] = {
        "params": _host(final_params[n]),
        "state": _host(final_states[n]),
        "losses": losses[n],
        "bad_shardings": _shardings_ok(final_params[n], param_specs, mesh)
        + _shardings_ok(final_states[n], specs[n], mesh),
      }

  ckpt_txs = {n: tx for n, tx in optimizers().items() if n in CHECKPOINTED}
  ckpt_path = out / "ckpt"
  if phase in ("train", "counts"):
    txs, sm_txs = optimizers(), optimizers(axis_name=AXIS)
    counted = _names() if phase == "counts" else COUNTED
    hlo: dict[str, dict[str, str]] = {"jit": {}, "shard_map": {}}
    ps, states, specs = start(txs)
    for n in counted:
      one = {n: txs[n]}
      hlo["jit"][n] = (
        jit_step(one, graphdef).lower({n: ps[n]}, {n: states[n]}, *batches[0]).compile().as_text()
      )
      one = {n: sm_txs[n]}
      hlo["shard_map"][n] = (
        shard_map_step(one, graphdef, mesh, param_specs, {n: specs[n]})
        .lower({n: ps[n]}, {n: states[n]}, *batches[0])
        .compile()
        .as_text()
      )
    lap("compile for counts")
    if process_id == 0:
      (out / "hlo.json").write_text(json.dumps(hlo))
    if phase == "counts":
      jax.distributed.shutdown()
      return
    record("jit", txs, *_train(jit_step(txs, graphdef), ps, states, batches, 0, STEPS), specs)
    lap("jit")
    ps, states, specs = start(sm_txs)
    step = shard_map_step(sm_txs, graphdef, mesh, param_specs, specs)
    record("shard_map", sm_txs, *_train(step, ps, states, batches, 0, STEPS), specs)
    lap("shard_map")

    def save(params, states):
      checkpointer = ocp.StandardCheckpointer()
      step_k = _global(np.int32(K), P(), mesh)
      checkpointer.save(ckpt_path, {"params": params, "opt_state": states, "step": step_k})
      checkpointer.wait_until_finished()
      checkpointer.close()

    ps, states, specs = start(ckpt_txs)
    step = jit_step(ckpt_txs, graphdef)
    record("ckpt", ckpt_txs, *_train(step, ps, states, batches, 0, STEPS, save=save), specs)
    lap("checkpointed")
  elif phase == "resume":
    ps, states, specs = start(ckpt_txs)
    shardings = _named(
      {
        "params": {n: param_specs for n in ckpt_txs},
        "opt_state": specs,
        "step": P(),
      },
      mesh,
    )
    restored = _restore(
      ckpt_path, _abstract({"params": ps, "opt_state": states, "step": np.int32(0)}, shardings)
    )
    step = jit_step(ckpt_txs, graphdef)
    record(
      "resumed",
      ckpt_txs,
      *_train(
        step, restored["params"], restored["opt_state"], batches, int(restored["step"]), STEPS
      ),
      specs,
    )
    lap("resumed")
  else:
    raise ValueError(phase)
  _save_results(out / f"{phase}_{process_id}.npz", results)
  (out / f"{phase}_{process_id}_timings.json").write_text(json.dumps(timings))
  jax.distributed.shutdown()


def _save_results(path: Path, results: dict[str, Any]) -> None:
  flat = {}
  for run, entry in results.items():
    for part, value in entry.items():
      if isinstance(value, dict):
        for key, arr in value.items():
          flat[f"{run}|{part}|{key}"] = arr
      elif part == "bad_shardings":
        flat[f"{run}|{part}"] = np.asarray(json.dumps(value))
      else:
        flat[f"{run}|{part}"] = value
  np.savez(path, **flat)


def _load_results(path: Path) -> dict[str, dict[str, Any]]:
  out: dict[str, dict[str, Any]] = collections.defaultdict(lambda: collections.defaultdict(dict))
  with np.load(path) as data:
    for key in data.files:
      parts = key.split("|")
      if len(parts) == 3:
        out[parts[0]][parts[1]][parts[2]] = data[key]
      elif parts[1] == "bad_shardings":
        out[parts[0]][parts[1]] = json.loads(str(data[key]))
      else:
        out[parts[0]][parts[1]] = data[key]
  return out


# ---------------------------------------------------------------------------
# Launching the workers (also used by examples/multihost_training.py's pattern).
# ---------------------------------------------------------------------------


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start_and_wait(args: list[str], n: int, logs: Path, timeout: float) -> list[int | None]:
  """Starts ``n`` workers; returns their exit codes (``None``: killed).

  As soon as one exits with an error, or at the deadline, the others are
  killed: a worker whose peer died would wait for it in a collective.
  """
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device each
  env["JAX_PLATFORMS"] = "cpu"
  port = free_port()
  procs, files = [], []
  try:
    for i in range(n):
      files.append(open(logs / f"{args[0]}_{i}.log", "w"))  # closed below
      procs.append(
        subprocess.Popen(
          [sys.executable, __file__, args[0], str(port), str(i), *args[1:]],
          stdout=files[-1],
          stderr=subprocess.STDOUT,
          env=env,
        )
      )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      codes = [p.poll() for p in procs]
      if all(c == 0 for c in codes) or any(c not in (None, 0) for c in codes):
        break
      time.sleep(0.1)
  finally:
    codes = [p.poll() for p in procs]
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
    for f in files:
      f.close()
  return codes


def launch(args: list[str], n: int, logs: Path, timeout: float) -> None:
  """Runs ``n`` copies of this file's worker (``args``: phase, then its
  arguments); fails with every process's log if one fails or hangs. A start
  that failed because the free port was taken meanwhile is retried once."""
  for attempt in range(2):
    codes = _start_and_wait(args, n, logs, timeout)
    if all(c == 0 for c in codes):
      return
    texts = [(logs / f"{args[0]}_{i}.log").read_text() for i in range(n)]
    if attempt == 0 and any("address already in use" in t.lower() for t in texts):
      continue
    report = [
      f"--- process {i} (exit code {c}; None: killed, by the timeout of {timeout} s "
      f"or after another process failed) ---\n{t[-6000:]}"
      for i, (c, t) in enumerate(zip(codes, texts, strict=True))
    ]
    pytest.fail(f"worker {args[0]!r} failed:\n" + "\n".join(report), pytrace=False)


# ---------------------------------------------------------------------------
# The pytest side.
# ---------------------------------------------------------------------------


def _by_path(tree) -> dict[str, np.ndarray]:
  import jax

  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in _flat(tree)}


@pytest.fixture(scope="module")
def runs():
  """The workers' runs, and the single-process runs they must equal."""
  import jax
  import jax.numpy as jnp

  root = Path(tempfile.mkdtemp(prefix="relax_optax_multiprocess_"))
  try:
    launch(["train", str(root)], N_PROCESSES, root, TIMEOUT_S)
    launch(["resume", str(root)], N_PROCESSES, root, TIMEOUT_S)
    workers = [
      {**_load_results(root / f"train_{i}.npz"), **_load_results(root / f"resume_{i}.npz")}
      for i in range(N_PROCESSES)
    ]
    hlo = json.loads((root / "hlo.json").read_text())
    graphdef, params0 = _model()
    params0 = jax.tree.map(jnp.asarray, params0)
    batches = [_batch(t) for t in range(STEPS)]
    txs = optimizers()
    states = {n: tx.init(params0) for n, tx in txs.items()}
    ps, ss, losses = _train(
      jit_step(txs, graphdef), {n: params0 for n in txs}, states, batches, 0, STEPS
    )
    single = {n: (ps[n], ss[n], losses[n]) for n in txs}
    # Restore into one process, resharded onto its one device, and continue.
    ckpt_txs = {n: tx for n, tx in txs.items() if n in CHECKPOINTED}
    tree = {
      "params": {n: params0 for n in ckpt_txs},
      "opt_state": {n: states[n] for n in ckpt_txs},
      "step": np.int32(0),
    }
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    restored = _restore(root / "ckpt", _abstract(tree, jax.tree.map(lambda _: device, tree)))
    ps, ss, _ = _train(
      jit_step(ckpt_txs, graphdef),
      restored["params"],
      restored["opt_state"],
      batches,
      int(restored["step"]),
      STEPS,
    )
    yield {
      "workers": workers,
      "hlo": hlo,
      "single": single,
      "resharded": {n: (ps[n], ss[n]) for n in ckpt_txs},
      "timings": [
        json.loads((root / f"{phase}_{i}_timings.json").read_text())
        for phase in ("train", "resume")
        for i in range(N_PROCESSES)
      ],
    }
  finally:
    shutil.rmtree(root, ignore_errors=True)


def _close(actual: dict, expected: dict, what: str) -> None:
  assert actual.keys() == expected.keys(), (what, actual.keys(), expected.keys())
  for key in expected:
    np.testing.assert_allclose(
      actual[key], expected[key], rtol=2e-5, atol=2e-6, err_msg=f"{what} {key}"
    )


def _equal(a: dict, b: dict, what: str) -> None:
  assert a.keys() == b.keys(), what
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=f"{what} {key}")


def _names() -> list[str]:
  """The optimizer names, without importing jax at collection time."""
  modes = ("global", "per_param", "per_component")
  formulas = ("lorentz", "tanh", "reference")
  names = ["optax-adam"]
  names += [f"adam-{m}-{f}" for m in modes for f in formulas]
  names += [f"adamw-{m}-{f}" for m, f in zip(modes, ("tanh", "reference", "lorentz"), strict=True)]
  names += ["rgd-global", "rgd-leapfrog-per_param", "relative-global", "relative-per_param"]
  return names


def test_names_cover_every_optimizer():
  assert list(optimizers()) == _names()


def _multi(runs, key: str) -> dict[str, Any]:
  """One run of the workers: full arrays, checked equal in every process."""
  entries = [w[key] for w in runs["workers"]]
  for i, entry in enumerate(entries):
    assert not entry.get("bad_shardings"), (i, entry["bad_shardings"])
  out = {part: _assemble([e[part] for e in entries]) for part in ("params", "state")}
  if "losses" in entries[0]:
    for e in entries[1:]:
      np.testing.assert_array_equal(e["losses"], entries[0]["losses"])
    out["losses"] = entries[0]["losses"]
  return out


@pytest.mark.slow
@pytest.mark.parametrize("how", ["jit", "shard_map"])
@pytest.mark.parametrize("name", _names())
def test_two_processes_equal_one(runs, how, name):
  """Both processes hold the same values, equal to one process's run."""
  key = f"{how}/{name}"
  multi = _multi(runs, key)
  params, state, losses = runs["single"][name]
  _close(multi["params"], _by_path(params), f"{key} params")
  _close(multi["state"], _by_path(state), f"{key} state")
  np.testing.assert_allclose(multi["losses"], losses, rtol=2e-5, err_msg=f"{key} losses")
  # The run is not trivial: the parameters moved.
  _, params0 = _model()
  moved = max(float(np.max(np.abs(multi["params"][k] - v))) for k, v in _by_path(params0).items())
  assert moved > 1e-3, key


@pytest.mark.slow
@pytest.mark.parametrize("name", CHECKPOINTED)
def test_checkpoint_resumes_bit_identically_in_two_processes(runs, name):
  """Saved from both processes at step K, restored into two: the same bits."""
  uninterrupted, resumed = _multi(runs, f"ckpt/{name}"), _multi(runs, f"resumed/{name}")
  _equal(resumed["params"], uninterrupted["params"], f"{name} params")
  _equal(resumed["state"], uninterrupted["state"], f"{name} state")


@pytest.mark.slow
@pytest.mark.parametrize("name", CHECKPOINTED)
def test_checkpoint_restores_resharded_into_one_process(runs, name):
  """Restored into one process (one device): the uninterrupted run's result."""
  uninterrupted = _multi(runs, f"ckpt/{name}")
  params, state = runs["resharded"][name]
  _close(_by_path(params), uninterrupted["params"], f"{name} params")
  _close(_by_path(state), uninterrupted["state"], f"{name} state")


# Where the measured collectives miss the budget (reported, not yet fixed).
_OVER_BUDGET = {
  ("jit", "global"): (
    "under jit the SPMD partitioner all-reduces each sharded leaf's partial sum "
    "on its own: one f32[] per sharded leaf (2 here), not one scalar"
  ),
  ("jit", "per_param"): (
    "under jit the SPMD partitioner all-reduces each sharded leaf's sum on its own: "
    "one f32[] per sharded leaf (2 here), not one vector"
  ),
}


def _budget_params():
  for how in ("jit", "shard_map"):
    for mode in ("global", "per_param", "per_component"):
      marks = [pytest.mark.xla_cpu, pytest.mark.slow]
      if (how, mode) in _OVER_BUDGET:
        marks.append(pytest.mark.xfail(strict=False, reason=_OVER_BUDGET[how, mode]))
      yield pytest.param(how, mode, marks=marks, id=f"{how}-{mode}")


@pytest.mark.parametrize(("how", "mode"), list(_budget_params()))
def test_collectives_added_over_adam(runs, how, mode):
  """The budget: ``global`` adds one scalar all-reduce, ``per_param`` one
  all-reduce of a vector of per-leaf sums, ``per_component`` nothing; no
  all-gather (Adam's moments stay sharded); nothing of Adam's goes away.

  The workers run on XLA:CPU, so the HLO is that backend's (marker
  ``xla_cpu``); another backend's partitioner may place them differently.
  """
  hlo = runs["hlo"][how]
  added, removed = added_collectives(hlo[f"adam-{mode}-lorentz"], hlo["optax-adam"])
  assert not removed, removed
  assert set(added) <= {"all-reduce"}, added
  reduced = added.get("all-reduce", [])
  if mode == "global":
    assert reduced == ["f32[]"], reduced
  elif mode == "per_param":
    n_leaves = 6  # the model's parameter leaves
    assert len(reduced) == 1 and re.fullmatch(r"f32\[(\d*)\]", reduced[0]), reduced
    assert int(re.fullmatch(r"f32\[(\d*)\]", reduced[0]).group(1) or 1) <= n_leaves, reduced
  else:
    assert reduced == [], reduced


@pytest.mark.slow
@pytest.mark.smoke
def test_example_multihost_training_runs():
  """``examples/multihost_training.py`` starts 2 processes that print the same losses."""
  example = Path(__file__).resolve().parent.parent / "examples" / "multihost_training.py"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run(
    [sys.executable, str(example), "--steps", "3", "--log-every", "1"],
    capture_output=True,
    text=True,
    timeout=TIMEOUT_S,
    check=False,
    env=env,
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
  losses = collections.defaultdict(list)
  # The processes share stdout: their lines may interleave.
  for m in re.finditer(r"process (\d)/2  step +\d+  loss (\d+\.\d{5})", proc.stdout):
    losses[int(m.group(1))].append(float(m.group(2)))
  assert sorted(losses) == [0, 1] and len(losses[0]) == 3, proc.stdout
  assert losses[0] == losses[1], proc.stdout
  assert losses[0][-1] < losses[0][0], proc.stdout


def print_counts() -> None:
  """Prints what each optimizer adds over ``optax.adam`` in one sharded step."""
  root = Path(tempfile.mkdtemp(prefix="relax_optax_counts_"))
  try:
    launch(["counts", str(root)], N_PROCESSES, root, TIMEOUT_S)
    hlo = json.loads((root / "hlo.json").read_text())
  finally:
    shutil.rmtree(root, ignore_errors=True)
  print(f"{N_PROCESSES} processes, kernels split over {AXIS!r}; arrays moved by collectives")
  print("| step | optimizer | all-reduce ops (Adam's) | arrays added over optax.adam |")
  print("| --- | --- | --- | --- |")
  for how, texts in hlo.items():
    base_ops = collective_ops(texts["optax-adam"])
    for name, text in texts.items():
      added, removed = added_collectives(text, texts["optax-adam"])
      what = "; ".join(f"{op}: {', '.join(shapes)}" for op, shapes in added.items()) or "none"
      if removed:
        what += f" (removed: {removed})"
      ops = collective_ops(text)["all-reduce"]
      print(f"| {how} | {name} | {ops} ({base_ops['all-reduce']}) | {what} |")


if __name__ == "__main__":
  if sys.argv[1] in ("train", "resume", "counts") and len(sys.argv) == 5:
    _worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
  elif sys.argv[1:] == ["counts"]:
    print_counts()
