"""Private implementation modules of autodo_jax."""
