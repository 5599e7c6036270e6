"""Plots ‖v‖/c against ‖u‖/c for the three formulas and prints the table.

Writes ``docs/formulas.png`` (used by ``docs/migrating_from_pytorch.md`` and
the README) and prints ‖v‖/c at a few points, computed with
``relax_optax.relativistic_scale`` itself, so the plot shows what the library
does. The ``reference`` formula (relativistic-adam 1.0.0) is
``sqrt(1 - ρ²)·ρ`` below the limit and ``tanh(ρ)`` at or above it, with
``ρ = ‖u‖/c``: it falls to 0 as ρ → 1⁻ and jumps to tanh(1) = 0.762 at ρ = 1.

Run: ``python docs/plot_formulas.py [--out docs/formulas.png]``.
"""

from __future__ import annotations

import argparse
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

import relax_optax

TABLE_POINTS = (0.1, 0.5, 0.707, 0.9, 0.99, 0.999, 1.0, 1.5, 2.0, 3.0)
COLORS = {"lorentz": "tab:blue", "tanh": "tab:green", "reference": "tab:red"}


def speed(formula: str, rho: np.ndarray) -> np.ndarray:
  """``‖v‖/c`` for updates of norm ``ρ·c`` (c = 1, one tensor of two entries)."""

  def one(r):
    u = jnp.stack([r * 0.6, r * 0.8])  # ‖u‖ = r
    v = relax_optax.relativistic_scale(u, 1.0, mode="per_param", formula=formula)
    return jnp.linalg.norm(v)

  return np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(rho, jnp.float32)))


def main(out: pathlib.Path) -> None:
  import matplotlib  # only this script needs it

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  points = np.array(TABLE_POINTS)
  print(f"{'‖u‖/c':>10s}" + "".join(f"{f:>11s}" for f in relax_optax.FORMULAS))
  table = {f: speed(f, points) for f in relax_optax.FORMULAS}
  for i, rho in enumerate(points):
    print(f"{rho:10.3f}" + "".join(f"{table[f][i]:11.3f}" for f in relax_optax.FORMULAS))
  below = np.nextafter(np.float32(1), np.float32(0))
  jump = speed("reference", np.array([below, 1.0], np.float32))
  peak = speed("reference", np.array([np.sqrt(0.5)], np.float32))[0]
  print(
    f"reference: ‖v‖/c = {jump[0]:.2e} at ‖u‖/c = 1⁻ (float32), {jump[1]:.3f} at 1;"
    f" local maximum {peak:.3f} at ‖u‖/c = 1/√2"
  )

  # A uniform grid, plus points crowding 1 from below to show the fall to 0.
  rho = np.unique(
    np.concatenate([np.linspace(0, 3, 601), 1 - np.logspace(-6, -1, 200), [below]]).astype(
      np.float32
    )
  )
  fig, ax = plt.subplots(figsize=(7, 4.5))
  ax.plot(rho, np.minimum(rho, 1.2), ":", color="gray", lw=1, label="no limit: ‖v‖ = ‖u‖")
  ax.axhline(1, color="gray", lw=0.8)
  for formula in ("lorentz", "tanh"):
    ax.plot(rho, speed(formula, rho), color=COLORS[formula], lw=2, label=formula)
  ref = speed("reference", rho)
  left = rho < 1
  ax.plot(
    rho[left],
    ref[left],
    color=COLORS["reference"],
    lw=2,
    label="reference (relativistic-adam 1.0.0;\n= tanh for ‖u‖ ≥ c)",
  )
  ax.plot(rho[~left], ref[~left], color=COLORS["reference"], lw=2)
  ax.plot([1, 1], jump, "--", color=COLORS["reference"], lw=1)
  ax.plot([1], [jump[1]], "o", color=COLORS["reference"], ms=6)
  ax.plot([1], [jump[0]], "o", color=COLORS["reference"], ms=6, mfc="white")
  ax.annotate(
    f"jump at ‖u‖ = c:\n{jump[0]:.0e} → {jump[1]:.3f}",
    (1, 0.3),
    xytext=(1.2, 0.1),
    arrowprops=dict(arrowstyle="->", color="0.3"),
  )
  ax.annotate(
    f"peak {peak:.2f} at 1/√2,\nthen falls to 0",
    (np.sqrt(0.5), peak),
    xytext=(0.05, 0.72),
    arrowprops=dict(arrowstyle="->", color="0.3"),
  )
  ax.set(
    xlim=(0, 3),
    ylim=(0, 1.2),
    xlabel="‖u‖ / c  (proposed step / speed limit)",
    ylabel="‖v‖ / c  (applied step / speed limit)",
    title="Relativistic scaling: applied vs proposed step",
  )
  ax.legend(loc="center right", bbox_to_anchor=(1, 0.47))
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  print(f"wrote {out}")


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--out", type=pathlib.Path, default=pathlib.Path(__file__).resolve().parent / "formulas.png"
  )
  main(parser.parse_args().out)
