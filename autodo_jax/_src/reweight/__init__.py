"""Implementation of ``autodo_jax.reweight`` (look-ahead example weights: L2RW, MW-Net).

Import the public names from :mod:`autodo_jax.reweight`; the modules here are private.
"""
