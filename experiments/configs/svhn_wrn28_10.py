"""SVHN, WideResNet-28-10: the paper's SVHN table (AutoDO λ^{A,W,S}, four IR-NR columns).

    python -m experiments.train --config=experiments/configs/svhn_wrn28_10.py:100-0.1 \\
        --config.data_dir=~/tensorflow_datasets

ARG is the column "IR-NR": 1-0.0, 100-0.0, 1-0.1 or 100-0.1 (default 100-0.1).
``--config.method=none`` (or randaugment, fast_aa, dada, autodo_sha, autodo_a, autodo_aw)
runs the table's other rows with the same settings.

Setting (the original's): ``svhn_cropped`` train 73,257 (no ``extra``), clean validation
23,257 drawn first (the dataset default), test 26,032; WRN-28-10 (CELU); 200 epochs of
SGD Nesterov, lr 0.005, batch 256, 5 warm-up epochs then cosine to lr·1e-3; hyper steps
from epoch 50, one pass over the train rows per epoch at hyper batch 256, table lr 0.05;
the 4x upsampled warp; host colour subset RandAugment(3, 7) for AutoDO.

Targets, top-1 test error %, mean ± std (the paper; best-on-test protocol, reported as
``test_accuracy_best_on_test_paper_protocol`` in summary.json):

| method | 1-0.0 | 100-0.0 | 1-0.1 | 100-0.1 |
|---|---|---|---|---|
| baseline (``none``) | 3.6 ± 0.10 | 13.6 ± 0.69 | 5.3 ± 0.27 | 20.0 ± 1.92 |
| RandAugment (``randaugment``) | 2.7 ± 0.04 | 10.9 ± 0.66 | 3.4 ± 0.11 | 13.6 ± 0.96 |
| Fast AA (``fast_aa``) | 2.8 ± 0.02 | 11.5 ± 0.32 | 3.7 ± 0.08 | 15.3 ± 1.07 |
| DADA (``dada``) | 2.9 ± 0.03 | 12.2 ± 0.54 | 4.1 ± 0.13 | 16.5 ± 1.51 |
| λ^A_SHA (``autodo_sha``) | 2.8 ± 0.10 | 12.6 ± 1.53 | 3.0 ± 0.17 | 13.7 ± 0.77 |
| λ^A (``autodo_a``) | 2.7 ± 0.09 | 10.2 ± 0.50 | 3.0 ± 0.07 | 12.3 ± 0.80 |
| λ^{A,W} (``autodo_aw``) | 2.8 ± 0.04 | 6.1 ± 0.22 | 2.8 ± 0.07 | 8.1 ± 0.14 |
| λ^{A,W,S} (``autodo_aws``) | 2.5 ± 0.04 | 5.3 ± 0.21 | 2.6 ± 0.05 | 6.3 ± 0.57 |
"""
from experiments.configs import base

COLUMNS = ("1-0.0", "100-0.0", "1-0.1", "100-0.1")


def get_config(arg=None):
    return base.paper_column(arg, COLUMNS, dataset="svhn_cropped", model="wrn28_10",
                             epochs=200, batch_size=256, learning_rate=0.005,
                             hyper_start_epoch=50, hyper_batch_size=256, hyper_lr=0.05,
                             upsample=4)
