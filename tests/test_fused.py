"""The fused step of ``relativistic_adam`` (``_fused.py``) against the reference chain.

``relax_optax._fused.FAST_PATH`` is read at trace time. Each run below sets it,
then traces and compiles its own function ahead of time, so that no later call
can reuse (or retrace) a program built under the other setting.

Compilation dominates the time of this file, so the optimizers of a section
(every variant, in both modes) run side by side in one program per setting,
each on its own copy of the parameters; the program is built once
(``functools.cache``) and each parametrized test checks its own part.
"""

import functools
import re
from typing import Any, NamedTuple

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings

import relax_optax
from relax_optax import _fused

MODES = ("global", "per_param")
FORMULAS = ("lorentz", "tanh", "reference")
LR = 0.1
LIMIT = 0.05  # Adam's first step is ±LR per entry: the limit binds in every group
N_STEPS = 20
# The two paths differ by the float32 rounding of the group norm (taken from the
# moments on the fast path, from Adam's update on the chain): a relative error
# of a few ulps in each step's scale (measured: at most 3e-7 for one step from
# the same state), which the steps carry into the parameters and moments.
RTOL, ATOL = 2e-6, 1e-7


def _params(dtype=jnp.float32):
  """A small pytree: leaves of different shapes, a scalar leaf, a nested dict."""
  rng = np.random.default_rng(0)
  return {
      "w": jnp.asarray(rng.standard_normal((4, 3)), dtype),
      "b": jnp.asarray(rng.standard_normal(3), dtype),
      "head": {"s": jnp.asarray(rng.standard_normal(()), dtype)},
  }


def _loss(params):
  """A deterministic, non-quadratic loss with a different curvature per leaf."""
  total = jnp.zeros((), jnp.float32)
  for i, x in enumerate(jax.tree.leaves(params)):
    x = x.astype(jnp.float32)
    total = total + (i + 1) * jnp.sum(jnp.square(x - 0.3)) + 0.5 * jnp.sum(jnp.sin(3 * x))
  return total


_grad = jax.jit(jax.grad(_loss))


@jax.jit
def _loss_grads_jit(params):
  return {k: jax.grad(_loss)(p) for k, p in params.items()}


def _loss_grads(t, params):
  """The loss's gradient for each optimizer's parameters (``t``: the step)."""
  del t
  return _loss_grads_jit(params)


_apply_updates = jax.jit(optax.apply_updates)


def _side_by_side(txs):
  """One transformation applying ``txs[k]`` to ``tree[k]``, for each key ``k``."""

  def init_fn(params):
    return {k: tx.init(params[k]) for k, tx in txs.items()}

  def update_fn(updates, state, params=None):
    out = {k: tx.update(updates[k], state[k], params[k]) for k, tx in txs.items()}
    return {k: u for k, (u, _) in out.items()}, {k: s for k, (_, s) in out.items()}

  return optax.GradientTransformation(init_fn, update_fn)


def _compile(fn, fast, *args, **jit_kwargs):
  """``fn`` traced and compiled with ``FAST_PATH = fast`` (restored afterwards).

  ``jax.jit`` caches traces per Python function, also across ``jit`` wrappers:
  each call traces a new function object, so it never reuses a trace made
  under the other setting.
  """
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(_fused, "FAST_PATH", fast)
    return jax.jit(lambda *a: fn(*a), **jit_kwargs).lower(*args).compile()


class Run(NamedTuple):
  trajectory: list[Any]  # the parameters after each step
  updates: list[Any]  # each step's update
  state: Any  # the final state
  hlo: str  # the compiled update


def _run(tx, fast, params, n_steps=N_STEPS, grads=_loss_grads):
  """``n_steps`` steps of ``tx``, with the gradients ``grads(t, params)``."""
  update = _compile(lambda g, s, p: tx.update(g, s, p), fast, params, tx.init(params), params)
  state = tx.init(params)
  trajectory, updates = [], []
  for t in range(n_steps):
    u, state = update(grads(t, params), state, params)
    params = _apply_updates(params, u)
    trajectory.append(params)
    updates.append(u)
  return Run(trajectory, updates, state, update.as_text())


def _part(run, key):
  """One optimizer's trajectory, updates and final state in a side-by-side run."""
  return [p[key] for p in run.trajectory], [u[key] for u in run.updates], run.state[key]


def _group_norms(tree, mode):
  """The float64 norms of the groups of ``mode``: one, or one per leaf."""
  leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]
  if mode == "global":
    return np.array([np.sqrt(sum(np.sum(x**2) for x in leaves))])
  return np.array([np.linalg.norm(x.ravel()) for x in leaves])


def _assert_close(fused, chain, rtol=RTOL, atol=ATOL, what=""):
  """Same structure, shapes, dtypes; close values; NaN and inf where the other's are."""
  assert jax.tree.structure(fused) == jax.tree.structure(chain), what
  for (path, a), b in zip(
      jax.tree_util.tree_leaves_with_path(fused), jax.tree.leaves(chain), strict=True
  ):
    a, b = np.asarray(a), np.asarray(b)
    where = f"{what} {jax.tree_util.keystr(path)}"
    assert (a.dtype, a.shape) == (b.dtype, b.shape), where
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, equal_nan=True, err_msg=where)


# ---------------------------------------------------------------------------
# 1. The fused step equals the chain, variant by variant.
# ---------------------------------------------------------------------------

_SCHEDULE = optax.cosine_decay_schedule(LR, N_STEPS, alpha=0.1)
_MATRICES = lambda params: jax.tree.map(lambda x: x.ndim > 1, params)  # adamw's mask

VARIANTS = {
    "default": (relax_optax.relativistic_adam, {}),
    "amsgrad": (relax_optax.relativistic_adam, dict(amsgrad=True)),
    "nesterov": (relax_optax.relativistic_adam, dict(nesterov=True)),
    "step_size": (relax_optax.relativistic_adam, dict(bias_correction="step_size")),
    "step_size_amsgrad": (
        relax_optax.relativistic_adam, dict(bias_correction="step_size", amsgrad=True)
    ),
    "eps_root": (relax_optax.relativistic_adam, dict(eps_root=1e-8)),
    "tanh": (relax_optax.relativistic_adam, dict(formula="tanh")),
    "reference": (relax_optax.relativistic_adam, dict(formula="reference")),
    "lr_schedule": (relax_optax.relativistic_adam, dict(learning_rate=_SCHEDULE)),
    "adaptive_speed": (
        relax_optax.relativistic_adam, dict(adaptive_speed=True, speed_warmup_steps=5)
    ),
    "coupled_weight_decay": (relax_optax.relativistic_adam, dict(weight_decay=1e-2)),
    "adamw_mask": (relax_optax.relativistic_adamw, dict(weight_decay=0.1, mask=_MATRICES)),
}


@functools.cache
def _variant_runs():
  """Every (variant, mode), side by side, with the fast path on and off."""
  txs = {
      (name, mode): make(**{"learning_rate": LR, "speed_limit": LIMIT, "mode": mode, **kwargs})
      for name, (make, kwargs) in VARIANTS.items()
      for mode in MODES
  }
  tx = _side_by_side(txs)
  params = {k: _params() for k in txs}
  return {fast: _run(tx, fast, params) for fast in (True, False)}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(VARIANTS))
def test_fused_equals_chain(name, mode):
  runs = _variant_runs()
  fused, fused_updates, fused_state = _part(runs[True], (name, mode))
  chain, chain_updates, chain_state = _part(runs[False], (name, mode))

  assert jax.tree.structure(fused_state) == jax.tree.structure(chain_state)
  chex.assert_trees_all_equal_shapes_and_dtypes(fused_state, chain_state)
  chex.assert_trees_all_close(fused, chain, rtol=RTOL, atol=ATOL)
  chex.assert_trees_all_close(fused_updates, chain_updates, rtol=RTOL, atol=ATOL)
  chex.assert_trees_all_close(fused_state, chain_state, rtol=RTOL, atol=ATOL)
  chex.assert_tree_all_finite((fused, fused_state))

  # The scaling is exercised: Adam's first step from a zero state is ±lr(0)
  # per entry (|g| >> eps; larger with nesterov), so its group norm is at least
  # LR·sqrt(size). The fused step is far below that in some group, and no step
  # exceeds the limit (relativistic_adamw's decay after the step is not limited).
  sizes = np.array([x.size for x in jax.tree.leaves(_params())])
  plain = LR * np.sqrt(sizes.sum() if mode == "global" else sizes)
  assert (plain / _group_norms(fused_updates[0], mode)).max() >= 2
  if VARIANTS[name][0] is relax_optax.relativistic_adam:
    for u in fused_updates:
      assert _group_norms(u, mode).max() <= LIMIT * (1 + 1e-5)


def test_the_flag_switches_the_program():
  """The comparisons in this file compare two programs, not one with itself."""
  runs = _variant_runs()
  assert runs[True].hlo != runs[False].hlo
  steps = _extreme_steps()
  assert steps[True].as_text() != steps[False].as_text()


# ---------------------------------------------------------------------------
# 2. Non-finite and extreme inputs.
# ---------------------------------------------------------------------------

_KINDS = {
    "adam": {},
    "amsgrad": dict(amsgrad=True),
    "step_size": dict(bias_correction="step_size"),
}


_EXTREME_KEYS = [(kind, mode) for kind in _KINDS for mode in MODES]


def _extreme_tx(key, speed_limit=LIMIT):
  kind, mode = key
  return relax_optax.relativistic_adam(LR, speed_limit=speed_limit, mode=mode, **_KINDS[kind])


@functools.cache
def _extreme_steps():
  """One step of every (kind, mode) with a traced speed limit: fused and chain."""

  def step(g, state, params, c):
    return _side_by_side({k: _extreme_tx(k, c) for k in _EXTREME_KEYS}).update(g, state, params)

  params = {k: _params() for k in _EXTREME_KEYS}
  state = _side_by_side({k: _extreme_tx(k) for k in _EXTREME_KEYS}).init(params)
  return {
      fast: _compile(step, fast, params, state, params, jnp.float32(LIMIT))
      for fast in (True, False)
  }


@functools.cache
def _extreme_states():
  """A zero state, and one with non-trivial moments (three steps on the chain)."""
  params = {k: _params() for k in _EXTREME_KEYS}
  fresh = warm = _side_by_side({k: _extreme_tx(k) for k in _EXTREME_KEYS}).init(params)
  for t in range(3):
    _, warm = _extreme_steps()[False](_loss_grads(t, params), warm, params, jnp.float32(LIMIT))
  return fresh, warm


def _set(tree, key, value):
  """``tree`` with entry 0 of leaf ``key`` set to ``value``."""
  return {**tree, key: tree[key].at[0].set(value)}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", list(_KINDS))
def test_non_finite_and_extreme_inputs(kind, mode):
  steps, (fresh, warm) = _extreme_steps(), _extreme_states()
  params = _params()
  g = _grad(params)
  cases = {
      "nan": (_set(g, "b", jnp.nan), warm, LIMIT),
      "inf": (_set(g, "b", jnp.inf), warm, LIMIT),
      "large_1e18": (jax.tree.map(lambda x: 1e18 * x, g), warm, LIMIT),  # g² finite
      "huge_1e30": (jax.tree.map(lambda x: 1e30 * x, g), warm, LIMIT),  # g² overflows
      "huge_1e30_one_entry": (_set(g, "w", 1e30), warm, LIMIT),
      "zeros": (jax.tree.map(jnp.zeros_like, g), fresh, LIMIT),
      "zeros_tiny_limit": (jax.tree.map(jnp.zeros_like, g), fresh, 1e-25),
      "small_1e-8": (jax.tree.map(lambda x: 1e-8 * x, g), fresh, LIMIT),  # |g| ~ eps
      "mixed_scales": ({**g, "w": 1e-12 * g["w"], "b": 1e12 * g["b"]}, warm, LIMIT),
      "tiny_limit": (g, warm, 1e-25),  # (‖u‖/c)² overflows: the saturated branch
      "zero_limit": (g, warm, 0.0),  # a traced limit of 0 (inject_hyperparams): no step
  }
  key = (kind, mode)
  for case, (grads, state, limit) in cases.items():
    what = f"{kind} {mode} {case}"
    copies = lambda tree: {k: tree for k in _EXTREME_KEYS}
    args = (copies(grads), state, copies(params), jnp.float32(limit))
    u_fused, s_fused = (x[key] for x in steps[True](*args))
    u_chain, s_chain = (x[key] for x in steps[False](*args))
    # Each entry of the step is Adam's u_i (the same on both paths) times its
    # group's scale, so the relative error is the scale's, also near 0: atol=0.
    _assert_close(u_fused, u_chain, atol=0, what=what)
    _assert_close(s_fused, s_chain, atol=0, what=what)

    if case in ("nan", "inf"):
      # Adam's update of that entry is NaN (NaN, or inf / inf): its group's
      # scale is NaN, so the whole group is NaN, and no other group.
      for path, x in jax.tree_util.tree_leaves_with_path(u_fused):
        leaf = jax.tree_util.keystr(path)
        if mode == "global" or leaf == "['b']":
          assert np.isnan(x).all(), (what, leaf)
        else:
          assert np.isfinite(x).all(), (what, leaf)
    else:
      chex.assert_tree_all_finite((u_fused, u_chain))
    if case.startswith("zeros") or case == "zero_limit":
      for x in jax.tree.leaves(u_fused):
        np.testing.assert_array_equal(x, 0)
    if case == "tiny_limit":
      np.testing.assert_allclose(_group_norms(u_fused, mode), limit, rtol=1e-5)


# ---------------------------------------------------------------------------
# 3. The speed limit holds on the fast path (hypothesis).
# ---------------------------------------------------------------------------

_N_RANDOM_STEPS = 3
_N_SCALES = len(jax.tree.leaves(_params())) * _N_RANDOM_STEPS  # one per step and leaf
_LIMIT_KEYS = [(mode, formula) for mode in MODES for formula in FORMULAS]


@functools.cache
def _fused_steps():
  """``_N_RANDOM_STEPS`` fused steps from a zero state of every (mode, formula).

  The learning rate and the speed limit are traced; every optimizer gets the
  same gradients ``grads[t]``.
  """

  def steps(grads, lr, c):
    tx = _side_by_side({
        (mode, formula): relax_optax.relativistic_adam(
            lr, speed_limit=c, mode=mode, formula=formula
        )
        for mode, formula in _LIMIT_KEYS
    })
    params = {k: jax.tree.map(lambda g: jnp.zeros_like(g[0]), grads) for k in _LIMIT_KEYS}

    def body(state, g):
      u, state = tx.update({k: g for k in _LIMIT_KEYS}, state, params)
      return state, u

    return jax.lax.scan(body, tx.init(params), grads)[1]

  shapes = jax.tree.map(lambda p: jnp.zeros((_N_RANDOM_STEPS, *p.shape), p.dtype), _params())
  return _compile(steps, True, shapes, jnp.float32(0), jnp.float32(0))


@settings(
    max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    seed=st.integers(0, 2**32 - 1),
    exponents=st.lists(st.floats(-8, 8), min_size=_N_SCALES, max_size=_N_SCALES),
    log_lr=st.floats(-3, 0.5),
    log_c=st.floats(-4, 1),
)
def test_speed_limit_holds_on_the_fast_path(seed, exponents, log_lr, log_c):
  rng = np.random.default_rng(seed)
  scales = iter(10.0 ** np.asarray(exponents))  # gradients of random scale
  grads = jax.tree.map(
      lambda p: jnp.asarray(
          np.stack([next(scales) * rng.standard_normal(p.shape) for _ in range(_N_RANDOM_STEPS)]),
          jnp.float32,
      ),
      _params(),
  )
  c = float(np.float32(10.0**log_c))
  updates = _fused_steps()(grads, jnp.float32(10.0**log_lr), jnp.float32(c))
  chex.assert_tree_all_finite(updates)
  for (mode, formula), u in updates.items():
    for t in range(_N_RANDOM_STEPS):
      norms = _group_norms(jax.tree.map(lambda x, t=t: x[t], u), mode)
      assert norms.max() <= c * (1 + 1e-5), (mode, formula, t, norms, c)


# ---------------------------------------------------------------------------
# 4. Optax wrappers around the fused step.
# ---------------------------------------------------------------------------


def _adam(mode):
  return relax_optax.relativistic_adam(LR, speed_limit=LIMIT, mode=mode)


WRAPPERS = {
    "multi_steps": lambda m: optax.MultiSteps(_adam(m), every_k_schedule=3),
    "apply_if_finite": lambda m: optax.apply_if_finite(_adam(m), max_consecutive_errors=3),
    "masked": lambda m: optax.masked(_adam(m), {"w": True, "b": False, "head": {"s": True}}),
}
_NAN_STEP = 2  # apply_if_finite's gradients have a NaN at this step


def _wrapper_grads(t, params):
  grads = _loss_grads(t, params)
  if t != _NAN_STEP:
    return grads
  return {
      k: _set(g, "w", jnp.nan) if k[0] == "apply_if_finite" else g for k, g in grads.items()
  }


@functools.cache
def _wrapper_runs():
  tx = _side_by_side({(name, m): wrap(m) for name, wrap in WRAPPERS.items() for m in MODES})
  params = {(name, m): _params() for name in WRAPPERS for m in MODES}
  return {fast: _run(tx, fast, params, n_steps=6, grads=_wrapper_grads) for fast in (True, False)}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(WRAPPERS))
def test_wrappers_on_the_fast_path(name, mode):
  runs = _wrapper_runs()
  fused, chain = _part(runs[True], (name, mode)), _part(runs[False], (name, mode))
  for f, c in zip(fused, chain, strict=True):
    _assert_close(f, c, what=name)
  params, (trajectory, updates, _) = _params(), fused
  if name == "multi_steps":  # nothing applied before the 3rd mini-step
    chex.assert_trees_all_equal(trajectory[1], params)
    assert not np.allclose(trajectory[2]["w"], params["w"])
  if name == "apply_if_finite":  # the NaN step changed nothing, the others did
    chex.assert_trees_all_equal(trajectory[_NAN_STEP], trajectory[_NAN_STEP - 1])
    assert not np.allclose(trajectory[_NAN_STEP + 1]["w"], trajectory[_NAN_STEP]["w"])
    chex.assert_tree_all_finite(trajectory)
  if name == "masked":  # masked-out leaves get the gradient itself
    np.testing.assert_array_equal(updates[0]["b"], _grad(params)["b"])
  for u in updates:  # every applied step is limited (or zero)
    limited = {"w": u["w"], "head": u["head"]} if name == "masked" else u
    assert _group_norms(limited, mode).max() <= LIMIT * (1 + 1e-5)


def test_inject_hyperparams_on_the_fast_path_without_retracing():
  make = optax.inject_hyperparams(relax_optax.relativistic_adam)
  tx = _side_by_side({m: make(learning_rate=LR, speed_limit=LIMIT, mode=m) for m in MODES})
  updates, traces = {}, {True: [], False: []}
  for fast in (True, False):

    def update(g, s, p, traces=traces[fast]):
      traces.append(None)  # runs at trace time only
      return tx.update(g, s, p)

    with pytest.MonkeyPatch.context() as mp:
      mp.setattr(_fused, "FAST_PATH", fast)
      updates[fast] = jax.jit(update)  # a new function per setting: its own cache
      params = {m: _params() for m in MODES}
      updates[fast](params, tx.init(params), params)  # traced here, under the setting

  # Each step from the chain's state and parameters: with lr = 1 the loss's
  # gradient crosses 0 in some entries, where a trajectory comparison would
  # measure how rounding differences grow, not the step.
  params = {m: _params() for m in MODES}
  state = tx.init(params)
  for lr, c in [(0.1, 0.05), (1.0, 0.01), (1e-3, 10.0), (0.3, 0.02), (0.3, 0.2)]:
    for mode in MODES:
      hyperparams = state[mode].hyperparams
      hyperparams["learning_rate"] = jnp.asarray(lr, hyperparams["learning_rate"].dtype)
      hyperparams["speed_limit"] = jnp.asarray(c, hyperparams["speed_limit"].dtype)
    grads = _loss_grads(0, params)
    fused = updates[True](grads, state, params)
    u, state = updates[False](grads, state, params)
    _assert_close(fused, (u, state), what=f"inject_hyperparams lr={lr} c={c}")
    for mode in MODES:
      assert _group_norms(fused[0][mode], mode).max() <= c * (1 + 1e-5)
    params = _apply_updates(params, u)
  assert len(traces[True]) == len(traces[False]) == 1


# ---------------------------------------------------------------------------
# 5. Inputs the fast path does not cover take the chain itself.
# ---------------------------------------------------------------------------

FALLBACKS = {
    "bfloat16_params": (jnp.bfloat16, {}),
    "bfloat16_mu": (jnp.float32, dict(mu_dtype=jnp.bfloat16)),
}


@functools.cache
def _fallback_runs():
  """Every (fallback, mode) side by side: jaxprs and runs with the flag on and off."""
  tx = _side_by_side({
      (name, m): relax_optax.relativistic_adam(LR, speed_limit=LIMIT, mode=m, **kwargs)
      for name, (_, kwargs) in FALLBACKS.items()
      for m in MODES
  })
  params = {(name, m): _params(dtype) for name, (dtype, _) in FALLBACKS.items() for m in MODES}
  jaxprs = {}
  for fast in (True, False):
    with pytest.MonkeyPatch.context() as mp:
      mp.setattr(_fused, "FAST_PATH", fast)
      trace = jax.make_jaxpr(lambda g, s, p: tx.update(g, s, p))  # a new function
      jaxprs[fast] = str(trace(params, tx.init(params), params))
  return jaxprs, {fast: _run(tx, fast, params, n_steps=5) for fast in (True, False)}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(FALLBACKS))
def test_fallback_is_the_chain_bitwise(name, mode):
  jaxprs, runs = _fallback_runs()
  assert jaxprs[True] == jaxprs[False]  # the same program ...
  fused, chain = _part(runs[True], (name, mode)), _part(runs[False], (name, mode))
  chex.assert_trees_all_equal(fused, chain)  # ... and the same bits
  chex.assert_trees_all_equal_dtypes(fused[0][-1], _params(FALLBACKS[name][0]))
  chex.assert_tree_all_finite(fused)


# ---------------------------------------------------------------------------
# 6. The point of the fast path: no scratch buffers (compiled, CPU).
# ---------------------------------------------------------------------------

_LEAF_SIZE = 2**16
_FULL = f"f32[{_LEAF_SIZE}]"


def _entry_scratch(hlo_text):
  """Full-size f32 arrays that the entry computation writes outside its outputs.

  Every instruction of the entry computation (conditional branches are other
  computations, not scanned) whose result is a full-size f32 array, other than
  a parameter, must be an operand of the root tuple: a step output, written to
  its (donated) output buffer. Anything else is a scratch buffer.
  """
  lines = hlo_text.splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith("ENTRY"))
  body = []
  for line in lines[start + 1 :]:
    if line.startswith("}"):
      break
    body.append(line.strip())
  (root,) = [line for line in body if line.startswith("ROOT")]
  assert " tuple(" in root, root
  outputs = set(re.findall(r"%?([\w.\-]+)", root.split(" tuple(", 1)[1]))
  scratch, n_full = [], 0
  for line in body:
    match = re.match(r"(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w\-]+)\(", line)
    if match is None:
      continue
    name, shape, opcode = match.groups()
    if shape.startswith(_FULL) and opcode != "parameter":
      n_full += 1
      if name not in outputs:
        scratch.append(name)
  assert n_full > 0, "no full-size array found: the HLO text format changed?"
  return scratch


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's buffer assignment")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "options",
    [{}, {"amsgrad": True}, {"bias_correction": "step_size"}],
    ids=["adam", "amsgrad", "step_size"],
)
def test_fast_path_writes_no_scratch_buffers(mode, options):
  """The compiled step (update + apply_updates, donated) writes no scratch buffer.

  Checked for the default optimizer, AMSGrad and the step-size bias
  correction, on 4 leaves of 2**16 float32 entries. (With AMSGrad and
  ``eps_root = 0`` the norm's ``sqrt(v)`` was once merged with Optax's own
  and written to a buffer; ``_norm_terms`` keeps them apart.)

  On the chain, Adam's update ``u`` has two consumers (the norm and the scaled
  step), so XLA:CPU writes it to a scratch buffer, one per leaf, and some
  broadcast scalars too. On the fast path every full-size array the step
  writes is an output (new parameters and moments, in the donated buffers).

  ``temp_size_in_bytes`` is not zero on either path: the never-taken saturated
  branch of each group's ``lax.cond`` holds preallocated leaf-sized buffers
  (measured on XLA:CPU with 4 leaves of 2**16 float32: 12 leaves' worth for
  ``global``, 3 for ``per_param``; the chain 16 and 10). So the test asserts
  that the fast path's temp is smaller than the chain's by at least one leaf,
  and that no instruction outside the conditionals writes a full-size array
  other than an output.
  """
  params = {f"l{i}": jnp.full(_LEAF_SIZE, i + 1.0, jnp.float32) for i in range(4)}
  grads = jax.tree.map(lambda p: 0.1 * p, params)
  tx = relax_optax.relativistic_adam(LR, speed_limit=LIMIT, mode=mode, **options)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  compiled = {
      fast: _compile(step, fast, params, tx.init(params), grads, donate_argnums=(0, 1))
      for fast in (True, False)
  }
  temp = {fast: c.memory_analysis().temp_size_in_bytes for fast, c in compiled.items()}
  leaf_bytes = 4 * _LEAF_SIZE
  assert temp[True] + leaf_bytes <= temp[False], temp
  assert _entry_scratch(compiled[True].as_text()) == [], temp
  assert len(_entry_scratch(compiled[False].as_text())) >= 4  # u of each leaf
