"""CIFAR-100, WideResNet-28-10: the paper's CIFAR-100 table (four IR-NR columns).

    python -m experiments.train --config=experiments/configs/cifar100_wrn28_10.py:10-0.1 \\
        --config.data_dir=~/tensorflow_datasets

ARG is the column "IR-NR": 1-0.0, 10-0.0, 1-0.1 or 10-0.1 (default 10-0.1).
``--config.method=none`` runs the baseline row.

Setting (the original's): ``cifar100`` train 50,000, clean validation 10,000 drawn first
(the dataset default), test 10,000; WRN-28-10 (CELU); 200 epochs of SGD Nesterov, lr 0.1,
batch 256, 5 warm-up epochs then cosine to lr·1e-3; hyper steps from epoch 50, one pass
over the train rows per epoch at hyper batch 256, table lr 0.05; the 4x upsampled warp;
host colour subset RandAugment(1, 15) for AutoDO.

Targets, top-1 test error %, mean ± std (the paper; best-on-test protocol):

| method | 1-0.0 | 10-0.0 | 1-0.1 | 10-0.1 |
|---|---|---|---|---|
| baseline (``none``) | 24.9 ± 0.19 | 45.9 ± 0.86 | 36.6 ± 0.65 | 54.5 ± 0.74 |
| RandAugment (``randaugment``) | 23.0 ± 0.15 | 41.7 ± 0.29 | 33.7 ± 0.66 | 50.1 ± 0.52 |
| Fast AA (``fast_aa``) | 22.7 ± 0.23 | 40.0 ± 0.27 | 31.4 ± 0.25 | 48.9 ± 0.51 |
| DADA (``dada``) | 23.1 ± 0.05 | 41.1 ± 0.22 | 32.4 ± 0.48 | 49.6 ± 0.44 |
| λ^A_SHA (``autodo_sha``) | 24.7 ± 0.94 | 41.0 ± 1.29 | 31.4 ± 1.75 | 48.9 ± 1.80 |
| λ^A (``autodo_a``) | 23.1 ± 0.25 | 40.8 ± 0.43 | 30.6 ± 0.48 | 47.4 ± 0.33 |
| λ^{A,W} (``autodo_aw``) | 22.2 ± 0.22 | 39.0 ± 0.30 | 30.6 ± 0.50 | 48.0 ± 0.38 |
| λ^{A,W,S} (``autodo_aws``) | 22.4 ± 0.25 | 36.7 ± 0.32 | 27.3 ± 0.29 | 39.6 ± 0.06 |
"""
from experiments.configs import base

COLUMNS = ("1-0.0", "10-0.0", "1-0.1", "10-0.1")


def get_config(arg=None):
    imbalance_ratio, noise_ratio = base.columns(arg, COLUMNS)
    return base.make(
        dataset="cifar100", model="wrn28_10", method="autodo_aws",
        imbalance_ratio=imbalance_ratio, noise_ratio=noise_ratio,
        epochs=200, batch_size=256, learning_rate=0.1,
        hyper_start_epoch=50, hyper_batch_size=256, hyper_lr=0.05, upsample=4)
