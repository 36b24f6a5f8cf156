"""CIFAR-10, WideResNet-28-10: the paper's CIFAR-10 table (four IR-NR columns).

    python -m experiments.train --config=experiments/configs/cifar10_wrn28_10.py:10-0.1 \\
        --config.data_dir=~/tensorflow_datasets

ARG is the column "IR-NR": 1-0.0, 10-0.0, 1-0.1 or 10-0.1 (default 10-0.1).
``--config.method=none|randaugment|fast_aa|...`` runs the table's other rows.

Setting (the original's): ``cifar10`` train 50,000, clean validation 10,000 drawn first
(the dataset default), test 10,000; WRN-28-10 (CELU); 200 epochs of SGD Nesterov, lr 0.1,
batch 256, 5 warm-up epochs then cosine to lr·1e-3; hyper steps from epoch 50, one pass
over the train rows per epoch at hyper batch 256, table lr 0.05; the 4x upsampled warp;
host colour subset RandAugment(1, 15) for AutoDO.

Targets, top-1 test error %, mean ± std (the paper; best-on-test protocol):

| method | 1-0.0 | 10-0.0 | 1-0.1 | 10-0.1 |
|---|---|---|---|---|
| baseline (``none``) | 6.0 ± 0.10 | 16.3 ± 0.54 | 12.8 ± 0.14 | 22.8 ± 1.09 |
| RandAugment (``randaugment``) | 5.2 ± 0.08 | 13.4 ± 0.30 | 7.8 ± 0.16 | 17.4 ± 0.21 |
| Fast AA (``fast_aa``) | 5.0 ± 0.14 | 13.3 ± 0.38 | 8.2 ± 0.28 | 17.9 ± 0.32 |
| DADA (``dada``) | 5.5 ± 0.12 | 14.2 ± 0.15 | 10.6 ± 0.08 | 20.2 ± 0.83 |
| λ^A_SHA (``autodo_sha``) | 5.9 ± 0.22 | 17.1 ± 0.87 | 7.6 ± 0.28 | 19.4 ± 1.23 |
| λ^A (``autodo_a``) | 5.2 ± 0.20 | 13.0 ± 0.47 | 7.1 ± 0.16 | 16.6 ± 0.20 |
| λ^{A,W} (``autodo_aw``) | 5.4 ± 0.17 | 12.9 ± 0.40 | 6.8 ± 0.07 | 15.1 ± 0.19 |
| λ^{A,W,S} (``autodo_aws``) | 4.9 ± 0.09 | 11.8 ± 0.35 | 5.8 ± 0.29 | 13.1 ± 0.16 |
"""
from experiments.configs import base

COLUMNS = ("1-0.0", "10-0.0", "1-0.1", "10-0.1")


def get_config(arg=None):
    imbalance_ratio, noise_ratio = base.columns(arg, COLUMNS)
    return base.make(
        dataset="cifar10", model="wrn28_10", method="autodo_aws",
        imbalance_ratio=imbalance_ratio, noise_ratio=noise_ratio,
        epochs=200, batch_size=256, learning_rate=0.1,
        hyper_start_epoch=50, hyper_batch_size=256, hyper_lr=0.05, upsample=4)
