"""Compile-count guard: a short training run compiles each jitted step exactly once.

A recompilation regression (a state whose sharding, dtype or weak type changes after the
first dispatch, a Python scalar where an array was, a padded last batch of another shape,
``valid=None`` in one call and an array in the next) makes a step compile twice and
fails here. Each run uses a learning rate no other test uses, so its StepConfig (a static
jit argument) is new to this process and every step compiles afresh.
"""
import pytest

from experiments import config as cfg_lib, trainer

RUN = dict(epochs=2, hyper_start_epoch=1, batch_size=8, hyper_batch_size=16,
           eval_batch_size=64, eval_limit=100, max_steps_per_epoch=3, subsample_ratio=0.2,
           warmup_epochs=1.0, checkpoint_every=1)


@pytest.mark.parametrize("k, learning_rate, steps", [
    # K = 1, the default on CPU: the plain jitted steps
    (1, 0.0437, {"jit(inner_step)", "jit(hyper_step)", "jit(eval_step)"}),
    # K = 2: 3 steps a pass are one full and one padded dispatch of the scanned steps
    pytest.param(2, 0.0439, {"jit(inner_steps)", "jit(hyper_steps)", "jit(eval_step)"},
                 marks=pytest.mark.slow),
])
def test_training_run_compiles_each_step_once(k, learning_rate, steps, tmp_path,
                                              compile_counts):
    # 100 eval examples at 64 a batch: one full and one padded batch per evaluation.
    config = cfg_lib.Config(**RUN, steps_per_dispatch=k, learning_rate=learning_rate)
    summary = trainer.train_and_evaluate(config, str(tmp_path), log=lambda m: None)
    assert summary["epochs"] == 2
    compiled = {name: n for name, n in compile_counts.items() if "step" in name}
    assert steps <= set(compiled), compiled
    assert all(n == 1 for n in compiled.values()), compiled
