"""Argument validation, done once at each public entry point.

Concrete values (Python numbers, NumPy and JAX scalars) are checked when the
transformation is built; traced values (``optax.inject_hyperparams`` under
``jit``) and schedules cannot be checked then and pass as they are.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import numpy as np


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
  """Raises a ``ValueError`` naming ``name`` unless ``value`` is one of ``choices``."""
  if not isinstance(value, str) or value not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {value!r}.")


def _concrete_scalar(name: str, value: Any) -> float | None:
  """``value`` as a float, ``None`` if traced; a ``TypeError`` if not a real scalar."""
  if isinstance(value, jax.core.Tracer):
    return None
  if isinstance(value, (bool, np.bool_)) or value is None or isinstance(value, (str, bytes)):
    raise TypeError(f"{name} must be a real scalar, got {value!r}.")
  if isinstance(value, numbers.Real):
    return float(value)
  if isinstance(value, (jax.Array, np.ndarray, np.generic)):
    if np.ndim(value) != 0:
      raise TypeError(f"{name} must be a scalar, got an array of shape {np.shape(value)}.")
    dtype = np.dtype(value.dtype)
    if dtype == np.bool_ or not (
        np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)
    ):
      raise TypeError(f"{name} must be a real scalar, got dtype {dtype}.")
    return float(value)
  raise TypeError(f"{name} must be a real scalar, got {type(value).__name__} {value!r}.")


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
      a list, a non-scalar array, a complex number).
    ValueError: if a concrete ``value`` is NaN or out of range.
  """
  x = _concrete_scalar(name, value)
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


def check_int(name: str, value: Any) -> None:
  """Checks an integer hyperparameter (traced values pass unchecked)."""
  if isinstance(value, jax.core.Tracer):
    return
  if isinstance(value, (bool, np.bool_)) or not (
      isinstance(value, numbers.Integral)
      or (isinstance(value, (jax.Array, np.ndarray, np.generic))
          and np.ndim(value) == 0 and np.issubdtype(value.dtype, np.integer))
  ):
    raise TypeError(f"{name} must be an integer, got {value!r}.")


def check_bool(name: str, value: Any) -> None:
  """Raises a ``TypeError`` unless ``value`` is a Python bool."""
  if not isinstance(value, bool):
    raise TypeError(f"{name} must be True or False, got {value!r}.")


def concrete_float(value: Any) -> float | None:
  """A concrete real scalar as a float, else ``None`` (schedules, tracers, arrays)."""
  if isinstance(value, (bool, np.bool_)):
    return None
  if isinstance(value, numbers.Real):
    return float(value)
  if isinstance(value, (jax.Array, np.ndarray, np.generic)) and not isinstance(
      value, jax.core.Tracer
  ):
    if np.ndim(value) == 0 and np.issubdtype(value.dtype, np.number):
      return float(value)
  return None
