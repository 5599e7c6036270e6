"""Step time: the end-to-end train step of ``relativistic_adamw`` vs ``optax.adamw``
(and vs AdamW with its update clipped entry by entry, ``optax.clip``).

On the default transformer: the jitted pure-JAX step (parameters donated) and the
``nnx.Optimizer`` step, every optimizer timed in interleaved rounds so that load
changes hit them alike.

Run from the repository root::

  python -m benchmarks.lm_stability.step_time     # ~3 minutes (2 cores)
  python -m benchmarks.lm_stability.step_time --commit-results

Writes ``lm_stability_step_time.json`` under ``benchmarks/results/scratch/``, or with
``--commit-results`` under ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np
import optax
from flax import nnx

import relax_optax
from benchmarks._common import add_output_args, output_path, run_metadata, run_start, write_json
from benchmarks.lm_stability import configs, data
from benchmarks.lm_stability.configs import B1, B2, EPS, WEIGHT_DECAY


def run(config: configs.Config) -> dict:
  """Times the jitted train step (pure JAX, params donated) and the nnx.Optimizer step."""
  domain = data.config_lm_domain(data.stdlib_corpus(), config, val_windows=8)
  txs = {"optax.adamw": lambda: optax.adamw(1e-3, B1, B2, EPS, weight_decay=WEIGHT_DECAY)}
  for mode in relax_optax.MODES:
    txs[f"relativistic_adamw {mode}"] = lambda mode=mode: relax_optax.relativistic_adamw(
      1e-3, 0.1, B1, B2, EPS, mode=mode, weight_decay=WEIGHT_DECAY
    )
  # per_component's elementwise twin: AdamW's update hard-capped entry by entry.
  txs["optax.adamw+optax.clip"] = lambda: optax.chain(
    optax.adamw(1e-3, B1, B2, EPS, weight_decay=WEIGHT_DECAY), optax.clip(1e-4)
  )
  batch = domain.sample(jax.random.key(0))
  start = run_start()
  steps, rounds = config.time_steps, config.time_rounds
  rows = {}
  for name, make in txs.items():
    model = domain.init(0, False)
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optax.chain(optax.clip_by_global_norm(1.0), make())

    def pure_step(params, opt_state, batch, tx=tx, graphdef=graphdef):
      grads = jax.grad(lambda p: domain.loss(nnx.merge(graphdef, p), batch, 0.0)[0])(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    jitted = jax.jit(pure_step, donate_argnums=(0, 1))
    opt_state = tx.init(params)
    t0 = time.perf_counter()
    params, opt_state = jax.block_until_ready(jitted(params, opt_state, batch))
    compile_s = time.perf_counter() - t0

    nnx_model = domain.init(0, False)
    optimizer = nnx.Optimizer(nnx_model, tx, wrt=nnx.Param)

    @nnx.jit
    def nnx_step(model, optimizer, batch):
      grads = nnx.grad(lambda m: domain.loss(m, batch, 0.0)[0])(model)
      optimizer.update(model, grads)

    nnx_step(nnx_model, optimizer, batch)
    rows[name] = {
      "compile_s": compile_s,
      "pure": [],
      "nnx": [],
      "state": [params, opt_state, jitted, nnx_model, optimizer, nnx_step],
    }
  for _ in range(rounds):  # interleaved rounds, so that load changes hit every arm alike
    for r in rows.values():
      params, opt_state, jitted, nnx_model, optimizer, nnx_step = r["state"]
      t0 = time.perf_counter()
      for _ in range(steps):
        params, opt_state = jitted(params, opt_state, batch)
      jax.block_until_ready(params)
      r["pure"].append((time.perf_counter() - t0) / steps)
      t0 = time.perf_counter()
      for _ in range(steps):
        nnx_step(nnx_model, optimizer, batch)
      jax.block_until_ready(nnx.state(nnx_model))
      r["nnx"].append((time.perf_counter() - t0) / steps)
      r["state"][:2] = [params, opt_state]
  base = rows["optax.adamw"]
  print(
    f"\nEnd-to-end train step on {domain.name} ({domain.info['batch']}x"
    f"{domain.info['seq_len']} bytes), {rounds} interleaved rounds of {steps} steps (ms: median"
    " over rounds; ratio: median over rounds of the same round's ratio to optax.adamw);"
    f" load average {start.load[0]:.2f} -> {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
  )
  print(
    f"{'optimizer':<32s} {'1st call s':>10s} {'jit step ms':>11s} {'ratio':>6s}"
    f" {'nnx step ms':>11s} {'ratio':>6s}"
  )
  out = {}
  for name, r in rows.items():
    pure, nnx_ms = np.median(r["pure"]) * 1e3, np.median(r["nnx"]) * 1e3
    rp = float(np.median(np.asarray(r["pure"]) / np.asarray(base["pure"])))
    rn = float(np.median(np.asarray(r["nnx"]) / np.asarray(base["nnx"])))
    print(
      f"{name:<32s} {r['compile_s']:>10.2f} {pure:>11.3f} {rp:>6.3f} {nnx_ms:>11.3f} {rn:>6.3f}"
    )
    out[name] = {
      "compile_s": r["compile_s"],
      "jit_step_ms": pure,
      "jit_ratio": rp,
      "nnx_step_ms": nnx_ms,
      "nnx_ratio": rn,
      "jit_rounds_ms": (np.asarray(r["pure"]) * 1e3).tolist(),
      "nnx_rounds_ms": (np.asarray(r["nnx"]) * 1e3).tolist(),
    }
  ours = [k for k in out if k.startswith("relativistic")]
  worst = max(ours, key=lambda k: out[k]["jit_ratio"])
  print(
    f"relativistic_adamw vs optax.adamw, jitted step: worst {worst}"
    f" {out[worst]['jit_ratio']:.3f}x (goal <= 1.03x)"
  )
  meta = {"model": domain.info | {"corpus": None}, "steps": steps, "rounds": rounds}
  return {"config": meta | run_metadata(start), "results": out}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  configs.add_override_args(parser)
  add_output_args(parser, "lm_stability_step_time")
  args = parser.parse_args(argv)
  results = run(configs.with_overrides(configs.step_time(), args))
  path = write_json(output_path(args).with_suffix(".json"), results, indent=1)
  print(f"wrote {path}")
  return results


if __name__ == "__main__":
  main()
