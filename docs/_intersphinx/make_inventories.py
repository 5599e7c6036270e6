"""Writes minimal Sphinx inventories (objects.inv) for JAX, Optax and Flax.

The documentation build has no network (CI has none), so intersphinx cannot download
the projects' inventories; these small ones list the names our pages and signatures use,
with the address of each on the project's published documentation. Add a name here
and re-run ``python docs/_intersphinx/make_inventories.py`` when the docs reference a
new one.
"""

import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name: (role, page relative to the project's documentation root)
INVENTORIES: dict[str, tuple[str, str, dict[str, tuple[str, str]]]] = {
  "jax": (
    "JAX",
    "latest",
    {
      "jax.Array": ("class", "_autosummary/jax.Array.html"),
      "jax.typing.ArrayLike": ("data", "jax.typing.html"),
      "jax.typing.DTypeLike": ("data", "jax.typing.html"),
      "jax.jit": ("function", "_autosummary/jax.jit.html"),
      "jax.grad": ("function", "_autosummary/jax.grad.html"),
      "jax.value_and_grad": ("function", "_autosummary/jax.value_and_grad.html"),
      "jax.vmap": ("function", "_autosummary/jax.vmap.html"),
      "jax.lax.psum": ("function", "_autosummary/jax.lax.psum.html"),
      "jax.lax.pmean": ("function", "_autosummary/jax.lax.pmean.html"),
      "jax.lax.scan": ("function", "_autosummary/jax.lax.scan.html"),
      "jax.tree.map": ("function", "_autosummary/jax.tree.map.html"),
    },
  ),
  "optax": (
    "Optax",
    "latest",
    {
      "optax.GradientTransformation": ("class", "api/transformations.html"),
      "optax.GradientTransformationExtraArgs": ("class", "api/transformations.html"),
      "optax.EmptyState": ("class", "api/transformations.html"),
      "optax.OptState": ("data", "api/transformations.html"),
      "optax.Params": ("data", "api/transformations.html"),
      "optax.Updates": ("data", "api/transformations.html"),
      "optax.Schedule": ("data", "api/transformations.html"),
      "optax.ScalarOrSchedule": ("data", "api/transformations.html"),
      "optax.scale_by_adam": ("function", "api/transformations.html"),
      "optax.scale_by_learning_rate": ("function", "api/transformations.html"),
      "optax.add_decayed_weights": ("function", "api/transformations.html"),
      "optax.clip_by_global_norm": ("function", "api/transformations.html"),
      "optax.adam": ("function", "api/optimizers.html"),
      "optax.adamw": ("function", "api/optimizers.html"),
      "optax.sgd": ("function", "api/optimizers.html"),
      "optax.chain": ("function", "api/combining_optimizers.html"),
      "optax.inject_hyperparams": ("function", "api/optimizer_schedules.html"),
      "optax.warmup_cosine_decay_schedule": ("function", "api/optimizer_schedules.html"),
      "optax.MultiSteps": ("class", "api/optimizer_wrappers.html"),
      "optax.apply_if_finite": ("function", "api/optimizer_wrappers.html"),
      "optax.masked": ("function", "api/optimizer_wrappers.html"),
      "optax.apply_updates": ("function", "api/utilities.html"),
    },
  ),
  "flax": (
    "Flax",
    "latest",
    {
      "flax.nnx.Module": ("class", "api_reference/flax.nnx/module.html"),
      "flax.nnx.Optimizer": ("class", "api_reference/flax.nnx/training/optimizer.html"),
      "flax.nnx.Rngs": ("class", "api_reference/flax.nnx/rnglib.html"),
    },
  ),
}


def write(path: Path, project: str, version: str, names: dict[str, tuple[str, str]]) -> None:
  header = (
    "# Sphinx inventory version 2\n"
    f"# Project: {project}\n"
    f"# Version: {version}\n"
    "# The remainder of this file is compressed using zlib.\n"
  )
  body = "".join(
    f"{name} py:{role} 1 {page}#{name} -\n" for name, (role, page) in sorted(names.items())
  )
  path.write_bytes(header.encode() + zlib.compress(body.encode()))


if __name__ == "__main__":
  for key, (project, version, names) in INVENTORIES.items():
    write(HERE / f"{key}.inv", project, version, names)
