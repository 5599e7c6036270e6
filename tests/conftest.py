"""Strict settings for the whole suite: silent rank promotion is an error."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
