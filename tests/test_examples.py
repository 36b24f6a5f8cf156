"""The scripts in examples/ run (shortened) and show what they claim."""
import os
import runpy

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _main(name):
    return runpy.run_path(os.path.join(EXAMPLES, name), run_name="example")["main"]


def test_l2_strength_hypergradient_matches_the_grid_and_beats_it_per_feature():
    out = _main("l2_strength.py")(["--steps", "15", "--grid", "11"])
    assert out["cg_residual_max"] < 1e-6
    assert out["hypergrad_val_nll"] <= out["grid_val_nll"] + 1e-3
    assert out["per_feature_val_nll"] < out["grid_val_nll"] - 0.02
    assert out["hypergrad_inner_solves"] == 15 and out["grid_inner_solves"] == 11


def test_noisy_logistic_weights_separate_noisy_examples():
    out = _main("noisy_weights.py")(["--seeds", "1", "--outer_steps", "30",
                                     "--l2rw_steps", "150"])
    assert out["implicit_weight_auc"] > 0.75
    assert out["l2rw_weight_auc"] > 0.7
    assert out["l2rw_weight_on_noisy"] < 0.6 * out["noisy_fraction"]


@pytest.mark.slow
def test_reweighting_an_mlp_under_label_noise():
    out = _main("reweight_mlp.py")(["--steps", "200"])
    noisy = out["noisy_fraction"]
    assert abs(out["plain"]["weight_on_noisy"] - noisy) < 0.05    # plain: batch mean
    for method in ("l2rw", "mwn"):
        assert out[method]["weight_on_noisy"] < 0.6 * noisy, method
        assert out[method]["test_accuracy"] > out["plain"]["test_accuracy"] + 0.05, method
