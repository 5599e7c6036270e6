"""Records golden trajectories of relativistic-adam 1.0.0 (PyTorch) for parity tests.

Never run by CI and never imported by the package: the committed ``.npz`` files
next to this script are its output, and ``tests/test_reference_parity.py``
replays them through ``relax_optax``. To regenerate them, in a throwaway virtual
environment::

  python -m venv /tmp/torchvenv
  /tmp/torchvenv/bin/pip install torch==2.13.0 relativistic-adam==1.0.0 numpy
  /tmp/torchvenv/bin/python tests/reference/make_torch_reference.py

Each case feeds the *same precomputed gradients* (a seeded NumPy stream, not a
model re-run) to the original optimizer, so the comparison isolates the
optimizer. A file holds, for a small multi-tensor model (two weight matrices and
two biases of different shapes):

- ``init/<name>``: the initial parameters;
- ``grads/<name>``: the gradient fed at every step, shape ``[steps, *shape]``;
- ``params/<name>``: the parameters after every step, shape ``[steps, *shape]``;
- ``meta``: a JSON string with the case's constructor arguments, the package,
  torch, NumPy and Python versions, and the measured coverage of the speed
  limit: how many groups (tensors, or elements in ``per_component``) were below
  and at/above it, and the smallest ``| ‖u‖/c - 1 |`` seen.

Every case must see both sides of the limit, and no group may come within
``MIN_MARGIN`` of it: there the original's formula jumps (from ``‖v‖ ≈ 0`` to
``0.76 c``), so float32 rounding could put the two implementations on different
branches and the comparison would test rounding, not the optimizer.

The script is deterministic: fixed seeds, one thread, deterministic algorithms,
float32 throughout; rerunning it rewrites byte-identical arrays.
"""

from __future__ import annotations

import json
import pathlib
import platform
from importlib import metadata

import numpy as np

STEPS = 32
SHAPES = {"w1": (6, 4), "b1": (6,), "w2": (3, 6), "b2": (3,)}
MIN_MARGIN = 1e-4
OUT_DIR = pathlib.Path(__file__).resolve().parent

# (name, optimizer class, constructor kwargs, gradient stream kwargs).
CASES = [
  (
    "per_param",
    "RelativisticAdam",
    dict(lr=0.05, speed_limit=0.085, relativistic_mode="per_param"),
    dict(seed=1),
  ),
  # The original's "global" takes the norm tensor by tensor.
  (
    "global",
    "RelativisticAdam",
    dict(lr=0.03, speed_limit=0.06, relativistic_mode="global"),
    dict(seed=2),
  ),
  (
    "per_component",
    "RelativisticAdam",
    dict(lr=0.05, speed_limit=0.025, relativistic_mode="per_component"),
    dict(seed=3),
  ),
  (
    "per_component_betas",
    "RelativisticAdam",
    dict(
      lr=0.02, betas=(0.8, 0.99), eps=1e-6, speed_limit=0.012, relativistic_mode="per_component"
    ),
    dict(seed=4),
  ),
  (
    "adaptive_speed",
    "RelativisticAdam",
    dict(
      lr=0.05,
      speed_limit=0.15,
      relativistic_mode="per_param",
      adaptive_speed=True,
      speed_warmup_steps=8,
    ),
    dict(seed=5),
  ),
  (
    "weight_decay",
    "RelativisticAdam",
    dict(lr=0.05, speed_limit=0.1, weight_decay=0.1, relativistic_mode="per_param"),
    dict(seed=6),
  ),
  (
    "amsgrad",
    "RelativisticAdam",
    dict(lr=0.05, speed_limit=0.1, amsgrad=True, relativistic_mode="per_param"),
    dict(seed=7, decay=0.9),
  ),
  (
    "adamw",
    "RelativisticAdamW",
    dict(lr=0.05, speed_limit=0.1, weight_decay=0.5, relativistic_mode="per_param"),
    dict(seed=8),
  ),
  (
    "adamw_amsgrad_per_component_adaptive",
    "RelativisticAdamW",
    dict(
      lr=0.05,
      speed_limit=0.03,
      weight_decay=0.2,
      amsgrad=True,
      relativistic_mode="per_component",
      adaptive_speed=True,
      speed_warmup_steps=5,
    ),
    dict(seed=9, decay=0.93),
  ),
  # Gradients of order 1e-6, as in deep networks: here eps = 1e-8 is not
  # negligible, and where it is added (before or after bias correction) shows.
  (
    "small_gradients",
    "RelativisticAdam",
    dict(lr=0.01, speed_limit=0.02, relativistic_mode="per_param"),
    dict(seed=10, scale=1e-6),
  ),
]


def gradient_stream(seed: int, scale: float = 0.3, decay: float = 1.0) -> dict:
  """A seeded gradient sequence: a slowly drifting signal, noise and spikes.

  The drift gives Adam's momentum something to follow (updates grow towards
  ``lr·sqrt(size)``), the noise and the sign flip at mid-run shrink them again,
  and the spikes (x25 on some tensors at a few steps) push the normalised
  update far past its usual size; ``decay`` < 1 shrinks the gradients over
  time, so that AMSGrad's running maximum is what sets the denominator.
  """
  rng = np.random.default_rng(seed)
  grads = {}
  for k, (name, shape) in enumerate(SHAPES.items()):
    signal = rng.normal(size=shape)
    steps = []
    for t in range(STEPS):
      signal = signal + 0.3 * rng.normal(size=shape)
      sign = 1.0 if t < STEPS // 2 else -1.0
      g = sign * signal + 0.8 * rng.normal(size=shape)
      if (t + k) % 11 == 7:
        g = 25.0 * g
      g = g * (0.5 + rng.uniform(size=shape))  # per-element scales
      steps.append(scale * decay**t * g)
    grads[name] = np.stack(steps).astype(np.float32)
  return grads


def run_case(name: str, cls_name: str, kwargs: dict, stream: dict) -> None:
  import relativistic_adam  # only in the throwaway venv
  import torch

  grads = gradient_stream(**stream)
  rng = np.random.default_rng(1000 + stream["seed"])
  init = {n: (0.5 * rng.normal(size=s)).astype(np.float32) for n, s in SHAPES.items()}

  params = [torch.nn.Parameter(torch.from_numpy(init[n].copy())) for n in SHAPES]
  opt = getattr(relativistic_adam, cls_name)(params, **kwargs)

  # Record ‖u‖/c exactly as the original compares it (float32 tensors).
  ratios = {"below": 0, "above": 0, "mixed_tensor_steps": 0, "margin": np.inf}
  scale_fn = opt._apply_relativistic_scaling

  def recording_scale(update, speed_limit, mode="per_param"):
    if mode == "per_component":
      r = (torch.abs(update) / speed_limit).numpy()
    else:
      r = np.array([(torch.norm(update) / speed_limit).item()])
    below = int(np.sum(r < 1.0))
    ratios["below"] += below
    ratios["above"] += r.size - below
    ratios["mixed_tensor_steps"] += int(0 < below < r.size)
    ratios["margin"] = min(ratios["margin"], float(np.min(np.abs(r - 1.0))))
    return scale_fn(update, speed_limit, mode)

  opt._apply_relativistic_scaling = recording_scale

  trajectory = {n: [] for n in SHAPES}
  for t in range(STEPS):
    for p, n in zip(params, SHAPES, strict=True):
      p.grad = torch.from_numpy(grads[n][t].copy())
    opt.step()
    for p, n in zip(params, SHAPES, strict=True):
      trajectory[n].append(p.detach().numpy().copy())

  if not (ratios["below"] and ratios["above"]):
    raise RuntimeError(f"{name}: not both sides of the speed limit: {ratios}")
  if kwargs["relativistic_mode"] == "per_component" and not ratios["mixed_tensor_steps"]:
    raise RuntimeError(f"{name}: no tensor with elements on both sides: {ratios}")
  if ratios["margin"] < MIN_MARGIN:
    raise RuntimeError(f"{name}: a group at |‖u‖/c - 1| < {MIN_MARGIN}: {ratios}")

  meta = {
    "case": name,
    "optimizer": cls_name,
    "kwargs": kwargs,
    "gradient_stream": stream,
    "steps": STEPS,
    "coverage": ratios,
    "versions": {
      "relativistic-adam": metadata.version("relativistic-adam"),
      "torch": torch.__version__,
      "numpy": np.__version__,
      "python": platform.python_version(),
    },
  }
  arrays = {"meta": np.array(json.dumps(meta, sort_keys=True))}
  for n in SHAPES:
    arrays[f"init/{n}"] = init[n]
    arrays[f"grads/{n}"] = grads[n]
    arrays[f"params/{n}"] = np.stack(trajectory[n])
  path = OUT_DIR / f"{name}.npz"
  np.savez_compressed(path, **arrays)
  print(
    f"{path.name:45s} below={ratios['below']:5d} above={ratios['above']:5d}"
    f" mixed={ratios['mixed_tensor_steps']:3d} margin={ratios['margin']:.2e}"
  )


def main() -> None:
  import torch

  torch.manual_seed(0)
  torch.set_num_threads(1)
  torch.use_deterministic_algorithms(True)
  torch.set_default_dtype(torch.float32)
  for name, cls_name, kwargs, stream in CASES:
    run_case(name, cls_name, kwargs, stream)


if __name__ == "__main__":
  main()
