"""Compile-count guard: a short training run compiles each jitted step exactly once.

A recompilation regression (a state whose sharding, dtype or weak type changes after the
first dispatch, a Python scalar where an array was, a padded last batch of another shape,
``valid=None`` in one call and an array in the next) makes a step compile twice and
fails here. The run uses a learning rate no other test uses, so its StepConfig (a static
jit argument) is new to this process and every step compiles afresh.
"""
from experiments import config as cfg_lib, trainer

RUN = dict(epochs=2, hyper_start_epoch=1, batch_size=8, hyper_batch_size=16,
           eval_batch_size=64, eval_limit=100, max_steps_per_epoch=3, steps_per_dispatch=2,
           subsample_ratio=0.2, warmup_epochs=1.0, checkpoint_every=1,
           learning_rate=0.0437)


def test_training_run_compiles_each_step_once(tmp_path, compile_counts):
    # 3 steps a pass at 2 steps a dispatch: one full and one padded dispatch per pass;
    # 100 eval examples at 64 a batch: one full and one padded batch per evaluation.
    summary = trainer.train_and_evaluate(cfg_lib.Config(**RUN), str(tmp_path),
                                         log=lambda m: None)
    assert summary["epochs"] == 2
    steps = {name: n for name, n in compile_counts.items() if "step" in name}
    assert {"jit(inner_steps)", "jit(hyper_steps)", "jit(eval_step)"} <= set(steps), steps
    assert all(n == 1 for n in steps.values()), steps
