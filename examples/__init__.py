"""Examples: readable scripts that use relax_optax."""
