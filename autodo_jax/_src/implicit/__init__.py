"""Implementation of ``autodo_jax.implicit`` (implicit-function-theorem hypergradients).

Import the public names from :mod:`autodo_jax.implicit`; the modules here are private.
"""
