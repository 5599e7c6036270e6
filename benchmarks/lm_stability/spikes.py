"""Induced instabilities: do the guards hold where AdamW spikes?

On the default transformer, at AdamW's best learning rate from the recorded sweep:
gradient spikes x100 and x10,000 into one layer; b2 = 0.999 with that layer's gradients
rescaled x100 mid-run; 3x and 10x the learning rate. Compared: AdamW without and with
gradient clipping, a Levanter-style hard historical clip, StableAdamW, fixed-c
``relativistic_adam`` and the relative speed limit at k in {1.5, 2, 3, 5}.

Run from the repository root::

  python -m benchmarks.lm_stability.spikes            # ~4 minutes
  python -m benchmarks.lm_stability.spikes --quick    # a tiny transformer, a smoke run
  python -m benchmarks.lm_stability.spikes --commit-results   # update benchmarks/results/

Writes ``lm_stability_spikes.{json,png}`` under ``benchmarks/results/scratch/``, or with
``--commit-results`` under ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

import relax_optax
from benchmarks._common import (
  RESULTS,
  add_output_args,
  historical_clip,
  output_path,
  run_metadata,
  run_start,
  tree_norm,
  write_json,
)
from benchmarks.lm_stability import configs, data, report
from benchmarks.lm_stability.configs import (
  B1,
  EPS,
  SPIKE_BLOCK,
  SPIKE_KS,
  SPIKE_LAYER,
  SPIKE_SCENARIOS,
  SPIKE_THRESHOLD,
  WEIGHT_DECAY,
)
from benchmarks.lm_stability.optimizers import cap_scale, scale_by_stable_adamw

SWEEP = RESULTS / "lm_stability.json"  # the recorded sweep: AdamW's best LR, the best c


def spike_arms(c_entry: float, c_scale: float) -> dict[str, tuple[Callable, bool]]:
  """``name -> (make(learning_rate, b2), clip gradients at 1)``; every guard sits on
  AdamW *without* the recipe's gradient clip, so that it is compared alone."""

  def adam(lr, b2, *after):
    return optax.chain(optax.scale_by_adam(B1, b2, EPS), optax.scale_by_learning_rate(lr), *after)

  out = {
    "adamw (no grad clip)": (adam, False),
    "adamw + grad clip 1": (adam, True),
    "hist clip (mean+2sd, 128)": (lambda lr, b2: adam(lr, b2, historical_clip()), False),
    "stable_adamw": (
      lambda lr, b2: optax.chain(scale_by_stable_adamw(b2=b2), optax.scale_by_learning_rate(lr)),
      False,
    ),
    f"relativistic c_entry={c_entry:g}": (
      lambda lr, b2: relax_optax.relativistic_adam(
        lr, B1, b2, EPS, speed_limit=c_entry * c_scale, mode="per_param"
      ),
      False,
    ),
  }
  for k in SPIKE_KS:
    out[f"relative k={k:g}"] = (
      lambda lr, b2, k=k: relax_optax.relativistic_adam(
        lr, B1, b2, EPS, speed_limit=relax_optax.RelativeSpeedLimit(k=k), mode="per_param"
      ),
      False,
    )
  return out


def _leaf_index(params, name: str) -> int:
  paths = [
    "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]
  ]
  hits = [i for i, p in enumerate(paths) if p.startswith(name)]
  if len(hits) != 1:
    raise ValueError(f"{name!r} matches {hits} of {paths}")
  return hits[0]


def train_spikes(
  domain, make, grad_clip, graphdef, params, runs: dict, *, steps, warmup, eval_every
):
  """Trains every run (vmapped; ``runs`` holds per-run arrays): curves (runs, steps)."""
  factor = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, steps, end_value=0.0)
  idx = _leaf_index(params, SPIKE_LAYER)

  def tx_for(lr, b2):
    inner = make(lambda t: lr * factor(t), b2)
    return optax.chain(optax.clip_by_global_norm(1.0), inner) if grad_clip else inner

  def loss_fn(p, batch):
    return domain.loss(nnx.merge(graphdef, p), batch, 0.0)

  def run(params, key, r):
    tx = tx_for(r["lr"], r["b2"])

    def step(carry, t):
      params, opt_state, key = carry
      key, sub = jax.random.split(key)
      (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, domain.sample(sub))
      leaves, treedef = jax.tree.flatten(grads)
      g = leaves[idx]
      # A spike: the layer's gradient replaced by a random direction of size x its norm.
      size = jnp.sum(jnp.where(r["spike_steps"] == t, r["spike_sizes"], 0.0))
      noise = jax.random.normal(jax.random.fold_in(sub, 1), g.shape)
      spiked = noise * (size * tree_norm(g) / jnp.maximum(tree_norm(noise), 1e-30))
      g = jnp.where(size > 0, spiked, g)
      leaves[idx] = g * jnp.where(t >= r["rescale_at"], r["rescale"], 1.0)
      updates, opt_state = tx.update(jax.tree.unflatten(treedef, leaves), opt_state, params)
      decay = WEIGHT_DECAY * factor(t)
      params = jax.tree.map(lambda p, u: p + u - decay * p, params, updates)
      metrics = {
        "train_loss": aux["xent"],
        "update_norm": tree_norm(updates),
        "update_norm_layer": tree_norm(jax.tree.leaves(updates)[idx]),
        "val_loss": jax.lax.cond(
          (t + 1) % eval_every == 0,
          lambda p: loss_fn(p, domain.val_batch)[1]["xent"],
          lambda p: jnp.full((), jnp.nan),
          params,
        ),
      }
      return (params, opt_state, key), metrics

    carry = (params, tx.init(params), key)
    return jax.lax.scan(step, carry, jnp.arange(steps))[1]

  return jax.device_get(jax.jit(jax.vmap(run))(params, runs["key"], runs["r"]))


def spike_events(loss: np.ndarray, block: int = SPIKE_BLOCK, threshold: float = SPIKE_THRESHOLD):
  """Loss spikes of one run's training-loss curve.

  The loss is averaged over blocks of ``block`` steps (one batch is noisy); a spike is a
  maximal run of blocks whose mean exceeds ``threshold`` times the lowest earlier block
  mean. Returns (number of spikes, the highest ratio to the running minimum (1 if none),
  the mean length of a spike in steps: the steps to recover; the run's end if it never
  does; 0 if none). A non-finite block counts as above the threshold.
  """
  n = loss.size // block
  means = loss[: n * block].reshape(n, block).mean(1)
  means = np.where(np.isfinite(means), means, np.inf)
  run_min = np.minimum.accumulate(np.concatenate([[np.inf], means[:-1]]))
  ratio = means / run_min
  above = ratio > threshold
  starts = np.nonzero(above & ~np.concatenate([[False], above[:-1]]))[0]
  lengths = []
  for s in starts:
    e = s
    while e < n and above[e]:
      e += 1
    lengths.append((e - s) * block)
  height = float(np.max(ratio[1:])) if n > 1 else 1.0
  return len(starts), max(height, 1.0), float(np.mean(lengths)) if lengths else 0.0


def run(config: configs.Config, sweep: Path = SWEEP) -> dict:
  """Trains every guard under every scenario; prints the table; returns the results.

  AdamW's best learning rate and ``relativistic per_param``'s best c come from the
  recorded sweep ``sweep`` (its first transformer).
  """
  best = json.loads(sweep.read_text())["results"][0]
  assert best["domain"].startswith("lm")
  lrs = best["lrs"]
  adam_final = np.median(np.asarray(best["arms"]["adamw"]["lr_sweep"]["final_val"], float), 1)
  best_lr = float(lrs[int(np.nanargmin(adam_final))])
  rel = best["arms"]["relativistic per_param"]
  rel_final = np.median(np.asarray(rel["c_sweep"]["final_val"], float), 1)
  best_c = float(best["c_entry"][int(np.nanargmin(rel_final))])
  domain = data.config_lm_domain(data.stdlib_corpus(), config)
  seeds = list(range(config.seeds))
  steps = config.steps
  states = [nnx.split(domain.init(s, False), nnx.Param) for s in seeds]
  graphdef = states[0][0]
  n_params = int(sum(x.size for x in jax.tree.leaves(states[0][1])))
  c_scale = cap_scale("per_param", states[0][1])
  # Runs: (scenario, seed), scenario-major.
  rs = []
  for sc in SPIKE_SCENARIOS:
    sp = list(sc.spikes) + [(2.0, 0.0)] * (2 - len(sc.spikes))
    for _ in seeds:
      rs.append(
        {
          "lr": best_lr * sc.lr_factor,
          "b2": sc.b2,
          "spike_steps": [int(f * steps) for f, _ in sp],
          "spike_sizes": [s for _, s in sp],
          "rescale": sc.rescale,
          "rescale_at": int(sc.rescale_at * steps),
        }
      )
  r_arr = {
    k: jnp.asarray([r[k] for r in rs], jnp.int32 if "steps" in k or k.endswith("_at") else None)
    for k in rs[0]
  }
  r_arr = {k: v.astype(jnp.float32) if v.dtype == jnp.float64 else v for k, v in r_arr.items()}
  # The data order depends on the seed only: every arm and scenario sees the same batches.
  keys = jax.vmap(jax.random.key)(jnp.tile(jnp.asarray(seeds) + 1000, len(SPIKE_SCENARIOS)))
  params = jax.tree.map(lambda *xs: jnp.stack(xs * len(SPIKE_SCENARIOS)), *[s[1] for s in states])
  runs = {"key": keys, "r": r_arr}
  arm_list = spike_arms(best_c, c_scale)
  print(
    f"--spikes on {domain.name} ({n_params} parameters), {steps} steps, {len(seeds)} seeds;"
    f" AdamW's best LR {best_lr:g} and relativistic per_param's best c_entry {best_c:g}"
    f" (from {sweep}); spikes into {SPIKE_LAYER}"
  )
  start = run_start()
  out = {}
  for name, (make, clip) in tqdm(arm_list.items(), unit="arm"):
    t1 = time.perf_counter()
    cv = train_spikes(
      domain,
      make,
      clip,
      graphdef,
      params,
      runs,
      steps=steps,
      warmup=config.warmup,
      eval_every=config.eval_every,
    )
    res = {"seconds": time.perf_counter() - t1, "scenarios": {}}
    for i, sc in enumerate(SPIKE_SCENARIOS):
      sl = slice(i * len(seeds), (i + 1) * len(seeds))
      tl = np.asarray(cv["train_loss"][sl], np.float64)
      ev = [spike_events(x) for x in tl]
      val = np.asarray(cv["val_loss"][sl], np.float64)[
        :, config.eval_every - 1 :: config.eval_every
      ]
      # Update-norm peak: the largest global update norm in the 10 steps from the first
      # injection (0.48 of the run; a control in the scenarios without one) over the
      # median of the 20 steps before it.
      t_in = int(0.48 * steps)
      un = np.asarray(cv["update_norm"][sl], np.float64)
      peak = un[:, t_in : t_in + 10].max(1) / np.median(un[:, max(t_in - 20, 0) : t_in], 1)
      res["scenarios"][sc.name] = {
        "n_spikes": [e[0] for e in ev],
        "max_height": [e[1] for e in ev],
        "recover_steps": [e[2] for e in ev],
        "final_val": val[:, -1].tolist(),
        "update_norm_peak": peak.tolist(),
        "final_train": np.mean(tl[:, -25:], 1).tolist(),
        "curves_seed0": {
          k: np.round(np.asarray(cv[k][sl][0], np.float64), 5).tolist()
          for k in ("train_loss", "update_norm", "update_norm_layer")
        },
      }
    out[name] = res
  meta = {
    "model": domain.info | {"corpus": None, "n_params": n_params},
    "steps": steps,
    "warmup": config.warmup,
    "seeds": len(seeds),
    "best_lr": best_lr,
    "best_c_entry": best_c,
    "c_scale": c_scale,
    "spike_layer": SPIKE_LAYER,
    "scenarios": [sc._asdict() for sc in SPIKE_SCENARIOS],
    "spike_definition": f"mean training loss over blocks of {SPIKE_BLOCK} steps above"
    f" {SPIKE_THRESHOLD}x the lowest earlier block mean",
  } | run_metadata(start)
  results = {"config": meta, "arms": out}
  print("\n".join(report.spike_table(results)))
  return results


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help=configs.spikes_quick.__doc__)
  parser.add_argument("--sweep", type=Path, default=SWEEP, help="the sweep's JSON to read")
  configs.add_override_args(parser)
  add_output_args(parser, "lm_stability_spikes")
  args = parser.parse_args(argv)
  base = configs.spikes_quick() if args.quick else configs.spikes()
  config = configs.with_overrides(base, args)
  out = output_path(args, "lm_stability_quick_spikes" if args.quick else None)
  results = run(config, args.sweep)
  write_json(out.with_suffix(".json"), results)
  report.plot_spikes(results, out.with_suffix(".png"))
  print(f"\nwrote {out}.{{json,png}} ({results['config']['seconds']:.0f} s)")
  return results


if __name__ == "__main__":
  main()
