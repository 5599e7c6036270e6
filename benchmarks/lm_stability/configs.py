"""The study's configurations: one function per experiment, each returning a :class:`Config`.

The recipe (Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer
training instabilities"): Adam with b1 = 0.9, b2 = 0.95, eps = 1e-8, gradient clipping
at global norm 1, linear warm-up then cosine decay, independent weight decay 1e-4.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import NamedTuple

B1, B2, EPS, WEIGHT_DECAY, Z_LOSS = 0.9, 0.95, 1e-8, 1e-4, 1e-4
LRS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
C_ENTRY = tuple(0.1 * lr for lr in LRS)  # the c grid (per-entry units), at c_lr


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything a run of the study depends on (the command line overrides any field)."""

  domains: tuple[str, ...] = ("lm", "digits")
  arms: tuple[str, ...] | None = None  # a subset of arms by name (adamw always runs)
  lrs: tuple[float, ...] = LRS
  c_entry: tuple[float, ...] = C_ENTRY  # the c sweep's grid, in per-entry units
  c_lr: float = 1.0  # the learning rate of the c sweep
  cap_lr_sweep: bool = True  # capped arms also over the LR grid (at c_entry = speed_limit)
  speed_limit: float = 1e-3  # c_entry of the caps in the LR sweep
  seeds: int = 3
  steps: int = 250
  warmup: int = 25
  eval_every: int = 50
  # The transformer (``models.Transformer``) and its data.
  d: int = 64
  depth: int = 2
  heads: int = 4
  seq_len: int = 64
  batch: int = 8
  val_windows: int = 48
  full: bool = False  # add a second transformer of full_size = (d, depth)
  full_size: tuple[int, ...] = (128, 3)
  # The digits MLP.
  digits_steps: int = 500
  digits_warmup: int = 50
  digits_width: int = 64
  digits_depth: int = 8
  # Step time.
  time_steps: int = 100
  time_rounds: int = 15


def default() -> Config:
  """The sweep of the results page: one transformer (d 64, depth 2) and digits (~14 min)."""
  return Config()


def full() -> Config:
  """The default sweep and a second transformer, width 128 and depth 3 (~55 min)."""
  return Config(full=True)


def quick() -> Config:
  """A tiny grid on tiny models, for a smoke test (under a minute)."""
  return Config(
    lrs=(1e-2, 1.0),
    c_entry=(1e-3, 1e-1),
    seeds=2,
    steps=20,
    warmup=4,
    eval_every=10,
    digits_steps=20,
    digits_warmup=4,
    d=16,
    depth=1,
    heads=2,
    seq_len=16,
    batch=4,
    val_windows=8,
    digits_width=16,
    digits_depth=4,
    arms=("adamw", "stable_adamw", "relativistic global"),
    full_size=(32, 2),  # with full=True: a tiny second size
  )


# Is per_component a stabiliser or a renamed step size (``per_component.py``)?

PER_COMPONENT_ARMS = (
  "adamw",
  "adamw+qk_norm",
  "relativistic per_component",
  "relativistic per_component tanh",
  "adamw+clip",
  "adam_atan2",
  "lion",
  "relativistic global",
)


class Part(NamedTuple):
  """One transformer of the per_component study: a name and its config."""

  name: str
  config: Config


def _thin(lrs: tuple[float, ...]) -> dict:
  """A thinned LR grid and its c grid (c_entry = lr / 10, as the full grids)."""
  return {"lrs": lrs, "c_entry": tuple(0.1 * lr for lr in lrs)}


def per_component() -> tuple[Part, ...]:
  """Three transformer sizes and, at width 128, a run twice as long (~75 min, 2 cores).

  Every uncapped arm over the LR grid, every capped arm over the c grid at lr = 1 (the
  decisive sweep; not over LR, to fit the budget). The largest size and the long run
  have thinned grids of 5 points around the optimum found at width 128 (AdamW's best
  LR 3e-3, ``per_component``'s best c_entry 3e-4).
  """
  base = Config(domains=("lm",), arms=PER_COMPONENT_ARMS, cap_lr_sweep=False)
  long_arms = ("adamw", "relativistic per_component", "adamw+clip", "relativistic global")
  return (
    Part("d64 L2", base),
    Part("d128 L3", dataclasses.replace(base, d=128, depth=3)),
    Part(
      "d192 L3",
      dataclasses.replace(base, d=192, depth=3, **_thin((3e-4, 1e-3, 3e-3, 1e-2, 3e-2))),
    ),
    Part(
      "d128 L3, 500 steps",
      dataclasses.replace(
        base,
        d=128,
        depth=3,
        steps=500,
        warmup=50,
        arms=long_arms,
        **_thin((1e-3, 3e-3, 1e-2, 3e-2, 1e-1)),
      ),
    ),
  )


def per_component_quick() -> tuple[Part, ...]:
  """The study's parts on tiny models and grids, for a smoke test (well under a minute)."""
  q = dataclasses.replace(quick(), domains=("lm",), arms=PER_COMPONENT_ARMS, cap_lr_sweep=False)
  long_arms = ("adamw", "relativistic per_component", "adamw+clip")
  return (Part("tiny", q), Part("tiny, long", dataclasses.replace(q, steps=40, arms=long_arms)))


def spikes() -> Config:
  """Induced instabilities on the default transformer (~4 minutes)."""
  return Config()


def spikes_quick() -> Config:
  """Induced instabilities on a tiny transformer, for a smoke test."""
  return Config(
    steps=40,
    warmup=4,
    eval_every=10,
    seeds=1,
    d=16,
    depth=1,
    heads=2,
    seq_len=16,
    batch=4,
    val_windows=8,
  )


def step_time() -> Config:
  """The end-to-end train step of the default transformer (~3 minutes)."""
  return Config()


def add_override_args(parser: argparse.ArgumentParser) -> None:
  """One command-line option per :class:`Config` field (``--c-entry 1e-3 1e-1``, ...);
  an option given replaces the field of the experiment's config."""
  for f in dataclasses.fields(Config):
    flag, what = "--" + f.name.replace("_", "-"), f"replaces the config's {f.name}"
    if f.type.startswith("bool"):
      parser.add_argument(flag, action="store_true", default=None, help=what)
    elif f.type.startswith("tuple"):
      kind = str if "str" in f.type else int if "int" in f.type else float
      parser.add_argument(flag, type=kind, nargs="+", default=None, help=what)
    else:
      kind = int if f.type == "int" else float
      parser.add_argument(flag, type=kind, default=None, help=what)


def with_overrides(config: Config, args: argparse.Namespace) -> Config:
  """``config`` with the fields given on the command line replaced."""
  given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)}
  given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items() if v is not None}
  return dataclasses.replace(config, **given)


# Induced instabilities (the spikes experiment).

SPIKE_KS = (1.5, 2.0, 3.0, 5.0)
SPIKE_LAYER = "blocks/0/attn/qkv"  # the leaf that receives the injected spikes/rescale
SPIKE_BLOCK = 5  # steps per block of the smoothed training loss
SPIKE_THRESHOLD = 1.2  # a loss spike: smoothed loss above 1.2x its running minimum


class SpikeScenario(NamedTuple):
  """One induced instability (steps as fractions of the run)."""

  name: str
  lr_factor: float = 1.0  # x AdamW's best LR
  b2: float = B2
  spikes: tuple = ()  # ((fraction of the run, size), ...): one layer's gradient x size
  rescale: float = 1.0  # the layer's gradients x rescale from rescale_at on
  rescale_at: float = 0.48


SPIKE_SCENARIOS = (
  SpikeScenario("clean"),
  SpikeScenario("grad spikes x1e2, x1e4", spikes=((0.48, 1e2), (0.68, 1e4))),
  SpikeScenario("b2=0.999, layer x100", b2=0.999, rescale=100.0),
  SpikeScenario("lr x3", lr_factor=3.0),
  SpikeScenario("lr x10", lr_factor=10.0),
)
