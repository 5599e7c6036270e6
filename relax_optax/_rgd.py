"""Relativistic Gradient Descent (França et al. 2020) as an Optax optimizer.

RGD integrates a relativistic particle with friction in the potential ``f``;
the speed of light ``c`` bounds the distance moved per step. The Lorentz factor
it applies to the momentum is exactly :func:`relax_optax.relativistic_scale`
(with the authors' ``δ = 1/c²``: ``v / sqrt(1 + δ‖v‖²) = v / sqrt(1 + (‖v‖/c)²)``),
so every factor here is computed by that function and by nothing else.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from relax_optax._groups import MODES, AxisName, Mode, check_speed_limit, scale_tree
from relax_optax._validation import check_choice, check_scalar, check_scalar_or_schedule


class RGDState(NamedTuple):
  """State of the simple form of :func:`rgd` (``alpha=None``)."""

  count: jax.Array  # shape=(), dtype=jnp.int32: steps taken (the schedules' argument).
  velocity: optax.Updates  # the authors' v (parameter units), shaped and typed as params.


class RGDLeapfrogState(NamedTuple):
  """State of the leapfrog form of :func:`rgd` (``alpha`` given).

  The parameters the user holds are the half-step points ``x_half`` where the
  gradient is taken; the iterate ``x`` (the point to evaluate, see
  :func:`rgd_eval_params`) lives here.
  """

  count: jax.Array  # shape=(), dtype=jnp.int32: steps taken (the schedules' argument).
  velocity: optax.Updates  # the authors' v after the step, shaped and typed as params.
  iterate: optax.Params  # the authors' x, shaped and typed as params.


def _at(value: optax.ScalarOrSchedule, count: jax.Array) -> Any:
  return value(count) if callable(value) else value


def rgd(
  learning_rate: optax.ScalarOrSchedule,
  momentum: jax.typing.ArrayLike = 0.9,
  speed_limit: optax.ScalarOrSchedule = 1.0,
  alpha: float | None = None,
  *,
  mode: Mode = "global",
  axis_name: AxisName | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Relativistic Gradient Descent (RGD): heavy ball with a speed limit.

  With ``ε`` the learning rate, ``μ`` the momentum, ``c`` the speed limit and
  ``R(u) = u / sqrt(1 + (‖u‖/c)²)`` (:func:`relax_optax.relativistic_scale`;
  the paper's ``δ = 1/c²``), step ``k`` with gradient ``g`` is

  * simple form (``alpha=None``), the gradient taken at the parameters ``x``::

      v ← μ·v − ε·g(x)
      x ← x + R(v)                       so ‖x_{k+1} − x_k‖ < c

  * leapfrog form (``alpha`` in [0, 1]; 1 is the leapfrog integrator, 0 is
    Nesterov-like), the gradient taken at a half step ``x_half``::

      x_half = x + R(√μ·v)
      v_half = √μ·v − ε·g(x_half)
      x ← α·x_half + (1 − α)·x + R(v_half)    so ‖x_{k+1} − x_k‖ < (1 + α)·c
      v ← √μ·v_half

  both exactly as in the authors' ``solvers_scaled.py`` (``relativistic`` and
  ``relativistic2``), with ``v_0 = 0``. ``c = inf`` (``δ = 0``) removes the
  limit: the simple form is then classical momentum, equal to
  ``optax.sgd(ε, momentum=μ)`` for a constant ``ε`` (the authors' ``v`` is
  ``−ε`` times Optax's trace); the leapfrog form with ``α = 0`` is Nesterov's
  method. The norm is global by default, as in the paper.

  **Leapfrog form: what the parameters are.** The gradient must be taken at
  ``x_half``, so, as in ``optax.contrib.schedule_free``, the parameters you
  hold and differentiate at are the points ``x_half``, and the iterate ``x``
  is kept in the state. At ``init`` (``v_0 = 0``) they coincide:
  ``x_half_0 = x_0 = params``. Each update returns ``x_half_{k+1} − params``,
  so ``optax.apply_updates`` gives the next gradient point (to float rounding:
  the state, not the parameters, carries the trajectory, so rounding does not
  accumulate in them). To evaluate, report, or save the model, use
  ``rgd_eval_params(state, params)``, which returns ``x``; ``params`` must be
  passed to ``update``. The simple form needs neither: its parameters are
  ``x``.

  Differences from the authors' code: a learning-rate schedule ``ε_k``
  multiplies each gradient as it enters ``v`` (their form), so with a schedule
  the ``c = inf`` simple form is not ``optax.sgd``, which scales the whole
  trace by the current rate. A speed-limit schedule gives ``c_k`` at step
  ``k`` (counted from 0) to both factors of the step, and ``c_{k+1}`` to the
  half step it ends on. ``mode="per_param"`` and ``"per_component"`` (one
  norm per leaf or per entry) are this library's extension; the bound above
  then holds per group. ``x_{k+1}`` is computed as ``x + α·R(√μ·v) + R(v_half)``
  (equal to the authors' expression; it differs by float rounding only).

  Numerics: a velocity whose norm overflows moves ``x`` by ``c`` in its
  direction (as :func:`relax_optax.relativistic_scale` does), so the bounds
  above hold for any gradient, including huge and infinite ones. The velocity
  is clipped to its dtype's finite range (the identity unless ``v − ε·g``
  overflows): where the authors' float arithmetic would store ``±inf`` and a
  later step compute ``inf − inf = NaN``, it stays finite, so no NaN arises
  from finite gradients (an infinite gradient times ``ε = 0`` is NaN, as in
  IEEE arithmetic). A velocity near the dtype's maximum decays by ``μ`` per
  step while ``x`` moves at ``c``; to skip bad steps instead, wrap the
  optimizer in ``optax.apply_if_finite``. The state has the parameters' dtype.

  Args:
    learning_rate: the step size ``ε ≥ 0``, or an Optax schedule of the step
      count.
    momentum: ``μ`` in [0, 1): the friction, ``v`` is multiplied by ``μ`` per
      step.
    speed_limit: ``c >= 0`` in parameter units (the paper's ``δ = 1/c²``), or
      ``inf`` for no limit (``0`` stops the parameters), or an Optax schedule
      of the step count.
    alpha: ``None`` for the simple form; ``α`` in [0, 1] for the leapfrog form.
    mode: the group over which ``‖v‖`` is taken: ``"global"`` (the paper's),
      ``"per_param"`` or ``"per_component"``.
    axis_name: inside ``shard_map`` / ``pmap`` with parameters sharded over
      this axis, the norms are summed across it (see
      :func:`relax_optax.relativistic_scale`); ``None`` under plain ``jit``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a :class:`RGDState`
    (simple form) or a :class:`RGDLeapfrogState` (leapfrog form).

  Raises:
    TypeError: an argument is not a number (or a schedule where allowed).
    ValueError: a concrete argument is out of range, or ``mode`` is unknown.

  References:
    França, Sulam, Robinson, Vidal, 2020, "Conformal symplectic and
    relativistic optimization", NeurIPS 2020 and J. Stat. Mech. 124008
    (arXiv:1903.04100); code: github.com/guisf/rgd, ``solvers_scaled.py``.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import relax_optax
    >>> f = lambda x: 0.5 * jnp.sum(x**2)
    >>> tx = relax_optax.rgd(0.1, momentum=0.8, speed_limit=1.0, alpha=0.9)
    >>> @jax.jit
    ... def step(params, state):
    ...   updates, state = tx.update(jax.grad(f)(params), state, params)
    ...   return optax.apply_updates(params, updates), state   # the next x_half
    >>> params = jnp.array([10.0, -5.0])     # x_0 (= x_half_0)
    >>> state = tx.init(params)
    >>> for _ in range(100):
    ...   params, state = step(params, state)
    >>> x = relax_optax.rgd_eval_params(state, params)  # the iterate x
    >>> bool(f(x) < 1e-6)
    True
  """
  check_scalar_or_schedule("learning_rate", learning_rate, lower=0.0)
  check_scalar("momentum", momentum, lower=0.0, upper=1.0, upper_open=True)
  check_speed_limit(speed_limit)
  if alpha is not None:
    check_scalar("alpha", alpha, lower=0.0, upper=1.0)
  check_choice("mode", mode, MODES)

  def scale(u: optax.Updates, c: Any) -> optax.Updates:
    # The library's scaling core: u / sqrt(1 + (‖u‖/c)²), per group of `mode`.
    return scale_tree(u, c, mode, "lorentz", axis_name)

  def mul(s: Any, tree: optax.Updates) -> optax.Updates:
    return jax.tree.map(lambda t: (s * t).astype(t.dtype), tree)

  def kick(v: optax.Updates, g: optax.Updates, eps: Any) -> optax.Updates:
    # v − ε·g in the velocity's dtype, clipped to its finite range: where ε·g
    # overflows (or g is infinite) v is ±max, not ±inf, so a later step cannot
    # compute inf − inf = NaN; the step is then c in v's direction either way.
    # Elsewhere the clip is the identity (and NaN stays NaN).
    def clip(x: jax.Array) -> jax.Array:
      big = jnp.finfo(x.dtype).max
      return jnp.minimum(jnp.maximum(x, -big), big)

    def one(vi: jax.Array, gi: jax.Array) -> jax.Array:
      x = (vi - eps * gi).astype(vi.dtype)
      if jnp.iscomplexobj(x):  # each component; the phase is kept below the bound
        return jax.lax.complex(clip(x.real), clip(x.imag))
      return clip(x)

    return jax.tree.map(one, v, g)

  if alpha is None:

    def init_fn(params: optax.Params) -> RGDState:
      return RGDState(count=jnp.zeros([], jnp.int32), velocity=optax.tree.zeros_like(params))

    def update_fn(updates, state, params=None, **extra_args):
      del params, extra_args
      eps, c = _at(learning_rate, state.count), _at(speed_limit, state.count)
      v = kick(mul(momentum, state.velocity), updates, eps)  # v ← μ·v − ε·g
      step = scale(v, c)  # x ← x + v / sqrt(1 + δ‖v‖²)
      return step, RGDState(count=optax.safe_increment(state.count), velocity=v)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)

  def init_fn(params: optax.Params) -> RGDLeapfrogState:
    return RGDLeapfrogState(
      count=jnp.zeros([], jnp.int32),
      velocity=optax.tree.zeros_like(params),
      iterate=jax.tree.map(jnp.array, params),  # a copy: x_0 = params
    )

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError("rgd with alpha (the leapfrog form) needs params in update.")
    count = state.count
    count_next = optax.safe_increment(count)
    eps, c = _at(learning_rate, count), _at(speed_limit, count)
    c_next = _at(speed_limit, count_next)
    sqrt_mu = jnp.sqrt(momentum)
    w = mul(sqrt_mu, state.velocity)
    drift = scale(w, c)  # x_half − x = √μ·v / sqrt(1 + δμ‖v‖²)
    v_half = kick(w, updates, eps)  # v_half = √μ·v − ε·g(x_half)
    # x ← α·x_half + (1 − α)·x + v_half / sqrt(1 + δ‖v_half‖²)
    x = jax.tree.map(
      lambda xi, di, ki: (xi + alpha * di + ki).astype(xi.dtype),
      state.iterate,
      drift,
      scale(v_half, c),
    )
    v = mul(sqrt_mu, v_half)  # v ← √μ·v_half
    # The next gradient point, as the next step recomputes it from the state.
    x_half = optax.tree.add(x, scale(mul(sqrt_mu, v), c_next))
    new_updates = jax.tree.map(lambda h, p: (h - p).astype(p.dtype), x_half, params)
    return new_updates, RGDLeapfrogState(count=count_next, velocity=v, iterate=x)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def rgd_eval_params(state: optax.OptState, params: optax.Params) -> optax.Params:
  """The parameters to evaluate for :func:`rgd`: the iterate ``x``.

  For the leapfrog form (``alpha`` given) the parameters the user holds are
  the gradient points ``x_half``; the iterate ``x``, whose ``f(x)`` the paper
  reports, is in the state. For the simple form the parameters are ``x``.

  Args:
    state: the optimizer state; it may be an :class:`RGDLeapfrogState` or hold
      exactly one (inside ``optax.chain``, ``optax.MultiSteps``,
      ``optax.inject_hyperparams``, ...).
    params: the parameters the user holds.

  Returns:
    ``x`` from the state if it holds an :class:`RGDLeapfrogState`, else
    ``params`` (the simple form), with the structure and dtypes of ``params``.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import relax_optax
    >>> tx = relax_optax.rgd(0.1, momentum=0.81, speed_limit=1.0, alpha=1.0)
    >>> params = jnp.array([1.0])            # x_0 = x_half_0
    >>> state = tx.init(params)
    >>> updates, state = jax.jit(tx.update)(jnp.array([1.0]), state, params)
    >>> params = params + updates            # x_half_1 = x_1 + R(0.9·v_1)
    >>> x = relax_optax.rgd_eval_params(state, params)
    >>> print(f"x_1 = {float(x[0]):.4f}, x_half_1 = {float(params[0]):.4f}")
    x_1 = 0.9005, x_half_1 = 0.8198
  """
  found = optax.tree_utils.tree_get(state, "RGDLeapfrogState")
  if found is None:
    return params
  return jax.tree.map(lambda x, p: jnp.asarray(x, p.dtype), found.iterate, params)
