"""Config files of ``experiments.train`` (ml_collections style).

Each ``<setting>.py`` file here has ``get_config(arg=None) -> ml_collections.ConfigDict``
holding every field of ``experiments.config.Config``; use it with
``python -m experiments.train --config=experiments/configs/<setting>.py[:ARG]`` and
override fields with ``--config.<field>=value``. ``base.py`` builds them.
"""
