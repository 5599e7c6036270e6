"""Argument validation, done once at each public entry point, one rule per argument.

What counts as a scalar: a Python ``int`` or ``float``, or a NumPy or JAX
scalar (0-d array) of a real dtype, including the low-precision ones of
``ml_dtypes`` (bfloat16, float16, ...) that ``optax.inject_hyperparams`` casts
hyperparameters to. Concrete values are range-checked when the transformation
is built; traced values (``optax.inject_hyperparams`` under ``jit``) and
schedules cannot be checked then and pass as they are. Other number types
(``fractions.Fraction``, ``decimal.Decimal``, complex) are refused: JAX cannot
take them as array values.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Integer hyperparameters (step counts) are compared with Optax's int32 count.
_INT32_MAX = 2**31 - 1
# The largest float32 below 1: 1 - 2^-24.
_BELOW_ONE = float(np.nextafter(np.float32(1), np.float32(0)))


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
  """Raises a ``ValueError`` naming ``name`` unless ``value`` is one of ``choices``."""
  if not isinstance(value, str) or value not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {value!r}.")


def _is_array(value: Any) -> bool:
  return isinstance(value, (jax.Array, np.ndarray, np.generic))


def _is_real_dtype(dtype: Any) -> bool:
  """Floating or integer, but not bool: ``jnp.issubdtype`` knows ml_dtypes' floats."""
  return dtype != np.bool_ and (
    jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
  )


def concrete_float(value: Any) -> float | None:
  """A concrete real scalar as a float, else ``None`` (schedules, tracers, others)."""
  if isinstance(value, (bool, np.bool_)) or isinstance(value, jax.core.Tracer):
    return None
  if isinstance(value, (int, float)):
    return float(value)
  if _is_array(value) and np.ndim(value) == 0 and _is_real_dtype(value.dtype):
    return float(value)
  return None


def _scalar(name: str, value: Any) -> float | None:
  """``value`` as a float, ``None`` if traced; a ``TypeError`` if not a real scalar."""
  if isinstance(value, jax.core.Tracer):
    if np.ndim(value) != 0 or not _is_real_dtype(value.dtype):
      raise TypeError(f"{name} must be a real scalar, got a traced {value.dtype}{value.shape}.")
    return None
  if isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be a real scalar, got {value!r}.")
  if isinstance(value, (int, float)):
    return float(value)
  if _is_array(value):
    if np.ndim(value) != 0:
      raise TypeError(f"{name} must be a scalar, got an array of shape {np.shape(value)}.")
    if not _is_real_dtype(value.dtype):
      raise TypeError(f"{name} must be a real scalar, got dtype {value.dtype}.")
    return float(value)
  raise TypeError(
    f"{name} must be a real scalar (a Python int or float, or a 0-d array), "
    f"got {type(value).__name__} {value!r}."
  )


def check_scalar(
  name: str,
  value: Any,
  *,
  lower: float,
  upper: float = math.inf,
  lower_open: bool = False,
  upper_open: bool = False,
  allow_inf: bool = False,
) -> None:
  """Checks a scalar hyperparameter: its kind and, if concrete, its range.

  Args:
    name: the argument's name, as the user wrote it.
    value: a Python, NumPy or JAX real scalar; tracers pass unchecked.
    lower: the lower bound.
    upper: the upper bound (``inf`` for none).
    lower_open: whether ``lower`` itself is excluded.
    upper_open: whether ``upper`` itself is excluded.
    allow_inf: whether ``+inf`` is accepted (otherwise the value must be finite).

  Raises:
    TypeError: if ``value`` is not a real scalar (a bool, ``None``, a string,
      a list, a non-scalar array, a complex number, a ``Fraction``).
    ValueError: if a concrete ``value`` is NaN or out of range.
  """
  x = _scalar(name, value)
  if x is None:
    return
  ok = math.isfinite(x) or (allow_inf and x == math.inf)
  ok = ok and (x > lower if lower_open else x >= lower)
  ok = ok and (x < upper if upper_open else x <= upper)
  if not ok:
    left = "(" if lower_open else "["
    right = ")" if upper_open or (upper == math.inf and not allow_inf) else "]"
    kind = "a number" if allow_inf else "a finite number"
    raise ValueError(f"{name} must be {kind} in {left}{lower:g}, {upper:g}{right}, got {value!r}.")


def check_scalar_or_schedule(name: str, value: Any, **bounds: Any) -> None:
  """:func:`check_scalar` for a value that may also be an Optax schedule (a callable)."""
  if not callable(value):
    check_scalar(name, value, **bounds)


def check_decay(name: str, value: Any) -> None:
  """A decay rate in [0, 1) that stays below 1 in float32.

  Optax computes ``1 - decay^t`` with ``decay`` in at least float32: a
  ``decay`` that rounds to 1.0 there (``1 - 3e-8`` or closer) would freeze the
  statistics and divide by zero, so it is refused. The one exception is an
  array of a dtype narrower than float32 (bfloat16, float16), which is how
  ``optax.inject_hyperparams`` passes hyperparameters for such parameters
  (``0.999`` is 1.0 in bfloat16): it is accepted up to 1, and then behaves
  as it does in ``optax.adam``.
  """
  if _is_array(value) and jnp.issubdtype(value.dtype, jnp.floating) and value.dtype.itemsize < 4:
    check_scalar(name, value, lower=0.0, upper=1.0)
    return
  check_scalar(name, value, lower=0.0, upper=1.0, upper_open=True)
  x = concrete_float(value)
  if x is not None and np.float32(x) >= 1:
    raise ValueError(f"{name} must be below 1 in float32 (at most {_BELOW_ONE!r}), got {value!r}.")


def check_int(name: str, value: Any, *, lower: int = -_INT32_MAX - 1) -> None:
  """An integer step count in [lower, 2^31): Optax counts steps in int32.

  Traced values pass unchecked.
  """
  if isinstance(value, jax.core.Tracer):
    return
  if isinstance(value, (bool, np.bool_)) or not (
    isinstance(value, int)
    or (_is_array(value) and np.ndim(value) == 0 and jnp.issubdtype(value.dtype, jnp.integer))
  ):
    raise TypeError(f"{name} must be an integer, got {value!r}.")
  if not lower <= int(value) <= _INT32_MAX:
    raise ValueError(f"{name} must be an integer in [{lower}, {_INT32_MAX}], got {value!r}.")


def check_bool(name: str, value: Any) -> None:
  """Raises a ``TypeError`` unless ``value`` is a Python bool."""
  if not isinstance(value, bool):
    raise TypeError(f"{name} must be True or False, got {value!r}.")


def check_dtype(name: str, value: Any) -> None:
  """``None`` or a floating-point dtype (``mu_dtype``)."""
  if value is None:
    return
  try:
    dtype = jnp.dtype(value)
  except TypeError as e:
    raise TypeError(f"{name} must be None or a floating-point dtype, got {value!r}.") from e
  if not jnp.issubdtype(dtype, jnp.inexact):
    raise TypeError(f"{name} must be None or a floating-point dtype, got {value!r}.")
