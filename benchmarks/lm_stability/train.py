"""One trainer for every arm and domain: a jitted scan over steps, vmapped over
(learning rate or c, seed), and the per-run summaries of its curves.

Measurements, per (arm, learning rate, seed):

- LR sensitivity (Wortsman et al.): over the LR grid, the mean of
  ``min(final validation loss, L0) - best`` with ``L0 = ln(vocabulary)`` the uniform
  predictor's loss (``benchmarks._common.lr_sensitivity``); mean and range over seeds;
- for every capped arm, the same sensitivity over the c grid at a fixed high learning
  rate (default 1), next to its sensitivity in LR, and the fraction of (step, group)
  pairs where the cap binds;
- best validation loss, the largest attention logit and output-logit RMS over
  training, update RMS per step, the first non-finite step.
"""

from __future__ import annotations

import os
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from benchmarks._common import lr_sensitivity as sensitivity
from benchmarks._common import tree_norm
from benchmarks.lm_stability.configs import WEIGHT_DECAY, Config
from benchmarks.lm_stability.data import Domain
from benchmarks.lm_stability.optimizers import Arm, binding, cap_scale, selected


def make_runner(
  domain: Domain,
  arm: Arm,
  graphdef,
  c_scale: float,
  *,
  steps: int,
  warmup: int,
  eval_every: int,
  chunk: int,
):
  """``init(params, lr, c_entry) -> opt_state`` and ``run(carry, lr, c_entry, start)``,
  both vmapped over runs; ``run`` advances ``chunk`` steps."""
  factor = optax.warmup_cosine_decay_schedule(
    0.0, 1.0, int(warmup * arm.warmup_factor), steps, end_value=0.0
  )

  def cap_at(c_entry, t):
    return c_entry * c_scale * (factor(t) if arm.scheduled_c else 1.0)

  def tx_for(lr, c_entry):
    c = c_entry * c_scale
    inner = arm.make(lambda t: lr * factor(t), (lambda t: c * factor(t)) if arm.scheduled_c else c)
    return optax.chain(optax.clip_by_global_norm(1.0), inner)

  def loss_fn(params, batch):
    return domain.loss(nnx.merge(graphdef, params), batch, arm.z_loss)

  def init(params, lr, c_entry):
    return tx_for(lr, c_entry).init(params)

  def run(carry, lr, c_entry, start):
    tx = tx_for(lr, c_entry)

    def step(carry, t):
      params, opt_state, key = carry
      key, sub = jax.random.split(key)
      (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, domain.sample(sub))
      updates, opt_state = tx.update(grads, opt_state, params)
      n = sum(x.size for x in jax.tree.leaves(updates))
      metrics = {
        "train_loss": aux["xent"],
        "max_attn_logit": aux["max_attn_logit"],
        "out_logit_rms": aux["out_logit_rms"],
        "log_z": aux["log_z"],
        "update_rms": tree_norm(updates) / np.sqrt(n),
        "bind": binding(arm.cap, updates, cap_at(c_entry, t)),
      }
      # Independent weight decay (Wortsman et al.): not multiplied by the learning rate.
      decay = WEIGHT_DECAY * factor(t)
      params = jax.tree.map(lambda p, u: p + u - decay * p, params, updates)
      metrics["val_loss"] = jax.lax.cond(
        (t + 1) % eval_every == 0,
        lambda p: loss_fn(p, domain.val_batch)[1]["xent"],
        lambda p: jnp.full((), jnp.nan),
        params,
      )
      return (params, opt_state, key), metrics

    return jax.lax.scan(step, carry, start + jnp.arange(chunk))

  init = jax.jit(jax.vmap(init))
  run = jax.jit(jax.vmap(run, in_axes=(0, 0, 0, None)), donate_argnums=(0,))
  return init, run


def train_arm(
  domain: Domain,
  arm: Arm,
  params0: dict,
  lrs,
  c_entries,
  seeds,
  *,
  steps: int,
  warmup: int,
  eval_every: int,
  bar: tqdm,
) -> dict[str, np.ndarray]:
  """Trains every (lr, c_entry) pair for every seed: curves of shape (pairs, seeds, steps)."""
  graphdef, stacked = params0[arm.qk_norm]
  n_pairs, n_seeds = len(lrs), len(seeds)
  params = jax.tree.map(lambda x: jnp.tile(x, (n_pairs,) + (1,) * (x.ndim - 1)), stacked)
  lr = jnp.repeat(jnp.asarray(lrs, jnp.float32), n_seeds)
  c_entry = jnp.repeat(jnp.asarray(c_entries, jnp.float32), n_seeds)
  # The data order depends on the seed only: every arm and LR sees the same batches.
  keys = jax.vmap(jax.random.key)(jnp.tile(jnp.asarray(seeds) + 1000, n_pairs))
  c_scale = cap_scale(arm.cap, stacked) if arm.cap else 1.0
  chunk = min(steps, 50)
  init, run = make_runner(
    domain, arm, graphdef, c_scale, steps=steps, warmup=warmup, eval_every=eval_every, chunk=chunk
  )
  carry = (params, init(params, lr, c_entry), keys)
  chunks = []
  for start in range(0, steps, chunk):
    carry, metrics = run(carry, lr, c_entry, start)
    chunks.append(jax.device_get(metrics))
    bar.update(chunk * n_pairs * n_seeds)
  return {
    k: np.concatenate([m[k] for m in chunks], axis=1).reshape(n_pairs, n_seeds, -1)
    for k in chunks[0]
  }


def init_params(domain: Domain, seeds: list[int]) -> dict[bool, tuple]:
  """(graphdef, params stacked over seeds) without and with qk-layernorm."""
  out = {}
  for qk in (False, True):
    states = []
    for s in seeds:
      graphdef, state = nnx.split(domain.init(s, qk), nnx.Param)
      states.append(state)
    out[qk] = (graphdef, jax.tree.map(lambda *xs: jnp.stack(xs), *states))
  return out


def summarise(cv: dict[str, np.ndarray], eval_every: int) -> dict:
  """Per (grid point, seed) scalars from curves of shape (points, seeds, steps)."""
  evaluated = cv["val_loss"][..., eval_every - 1 :: eval_every]
  finite = np.isfinite(cv["train_loss"])
  first_bad = np.where(finite.all(-1), -1, np.argmax(~finite, -1) + 1)

  def finite_max(x):
    return np.nanmax(np.where(np.isfinite(x), x, np.nan), -1) if x.size else x

  with warnings.catch_warnings():  # all-NaN slices (diverged runs) give NaN, as meant
    warnings.simplefilter("ignore", RuntimeWarning)
    return {
      "final_val": evaluated[..., -1].tolist(),
      "best_val": np.nanmin(np.where(np.isfinite(evaluated), evaluated, np.nan), -1).tolist(),
      "nonfinite_step": first_bad.tolist(),
      "max_attn_logit": finite_max(cv["max_attn_logit"]).tolist(),
      "max_out_logit_rms": finite_max(cv["out_logit_rms"]).tolist(),
      "final_out_logit_rms": cv["out_logit_rms"][..., -1].tolist(),
      "mean_update_rms": np.nanmean(cv["update_rms"], -1).tolist(),
      "bind_fraction": np.nanmean(cv["bind"], -1).tolist()
      if np.isfinite(cv["bind"]).any()
      else None,
    }


def curves_for_json(cv: dict[str, np.ndarray], every: int, eval_every: int) -> dict:
  """Seed-0 curves every ``every`` steps (validation at its evaluation points)."""
  out = {
    k: np.round(v[:, 0, every - 1 :: every], 5).tolist()
    for k, v in cv.items()
    if k not in ("val_loss", "bind")
  }
  out["val_loss"] = np.round(cv["val_loss"][:, 0, eval_every - 1 :: eval_every], 5).tolist()
  return out


def sens(final: list, cap_loss: float) -> np.ndarray:
  """LR (or c) sensitivity per seed, ``lr_sensitivity.sensitivity`` with L0 = cap_loss."""
  final = np.asarray(final, float)
  return sensitivity(final, np.full(final.shape[1], cap_loss))


def domain_header(domain: Domain, config: Config, params0: dict) -> dict:
  """What a domain's results record before its arms: sizes, grids, the loss cap."""
  n_params = int(sum(x[0].size for x in jax.tree.leaves(params0[False][1])))
  return {
    "domain": domain.name,
    "info": domain.info | {"n_params": n_params},
    "cap_loss": domain.cap_loss,
    "lrs": config.lrs,
    "c_entry": config.c_entry,
    "c_lr": config.c_lr,
    "c_default_entry": config.speed_limit,
    "arms": {},
  }


def grid(arm: Arm, config: Config) -> tuple[list[tuple[float, float]], int]:
  """An arm's (learning rate, c_entry) pairs and how many of them, first, are the LR
  sweep: the LR sweep (for a capped arm only if ``config.cap_lr_sweep``), then for a
  capped arm the c sweep at ``config.c_lr``."""
  pairs = (
    [] if arm.cap and not config.cap_lr_sweep else [(lr, config.speed_limit) for lr in config.lrs]
  )
  n = len(pairs)
  if arm.cap:
    pairs += [(config.c_lr, c) for c in config.c_entry]
  return pairs, n


def arm_steps(domain: Domain, arm: Arm, config: Config, seeds: list[int]) -> int:
  """Training steps (summed over runs) that :func:`run_arm` takes, for a progress bar."""
  steps = config.steps if domain.name.startswith("lm") else config.digits_steps
  return len(grid(arm, config)[0]) * len(seeds) * steps


def run_arm(
  domain: Domain, arm: Arm, config: Config, params0: dict, seeds: list[int], bar: tqdm
) -> dict:
  """One arm on ``domain``: the LR sweep (for a capped arm only if
  ``config.cap_lr_sweep``) and, for a capped arm, the c sweep at ``config.c_lr``, as one
  vmapped program; per sweep the summaries, seed-0 curves and sensitivities."""
  lm = domain.name.startswith("lm")
  t0 = time.perf_counter()
  pairs, n = grid(arm, config)
  cv = train_arm(
    domain,
    arm,
    params0,
    *zip(*pairs, strict=True),
    seeds,
    steps=config.steps if lm else config.digits_steps,
    warmup=config.warmup if lm else config.digits_warmup,
    eval_every=config.eval_every,
    bar=bar,
  )
  res = {"c_scale": cap_scale(arm.cap, params0[False][1]) if arm.cap else None}
  if n:
    lr_cv = {k: v[:n] for k, v in cv.items()}
    res["lr_sweep"] = summarise(lr_cv, config.eval_every)
    res["lr_curves_seed0"] = curves_for_json(lr_cv, 10, config.eval_every)
    res["lr_sensitivity"] = sens(res["lr_sweep"]["final_val"], domain.cap_loss).tolist()
  if arm.cap:
    c_cv = {k: v[n:] for k, v in cv.items()}
    res["c_sweep"] = summarise(c_cv, config.eval_every)
    res["c_curves_seed0"] = curves_for_json(c_cv, 10, config.eval_every)
    res["c_sensitivity"] = sens(res["c_sweep"]["final_val"], domain.cap_loss).tolist()
  res["seconds"] = time.perf_counter() - t0
  return res


def run_steps(domain: Domain, config: Config, seeds: list[int]) -> int:
  """Training steps (summed over runs) that :func:`run_domain` takes, for a progress bar."""
  arms = selected(domain.name.split()[0], config.arms)
  return sum(arm_steps(domain, arm, config, seeds) for arm in arms)


def run_domain(domain: Domain, config: Config, seeds: list[int], bar: tqdm) -> dict:
  """Trains every selected arm on ``domain`` (:func:`run_arm`); returns the domain's
  results (per arm: summaries, seed-0 curves, sensitivities)."""
  params0 = init_params(domain, seeds)
  out = domain_header(domain, config, params0)
  n_params = out["info"]["n_params"]
  t_domain, load0 = time.perf_counter(), os.getloadavg()
  for arm in selected(domain.name.split()[0], config.arms, n_params):
    bar.set_description(f"{domain.name}: {arm.name}"[:40])
    out["arms"][arm.name] = run_arm(domain, arm, config, params0, seeds, bar)
  # Wall time of the whole domain (every arm, compilation included) and the load around it.
  out |= {
    "seconds": time.perf_counter() - t_domain,
    "load_before": load0,
    "load_after": os.getloadavg(),
  }
  return out
