"""CIFAR-10 and CIFAR-100, WideResNet-28-10: the paper's two CIFAR tables (IR-NR columns).

    python -m experiments.train --config=experiments/configs/cifar_wrn28_10.py:cifar10:10-0.1 \\
        --config.data_dir=~/tensorflow_datasets

ARG is "DATASET:IR-NR" with DATASET cifar10 or cifar100 and the column 1-0.0, 10-0.0,
1-0.1 or 10-0.1 (default ``cifar10:10-0.1``; ``cifar100`` alone means its 10-0.1).
``--config.method=none|randaugment|fast_aa|dada|autodo_sha|autodo_a|autodo_aw`` runs the
tables' other rows with the same settings.

Setting (the original's): train 50,000, clean validation 10,000 drawn first (the dataset
default), test 10,000; WRN-28-10 (CELU); 200 epochs of SGD Nesterov, lr 0.1, batch 256,
5 warm-up epochs then cosine to lr·1e-3; hyper steps from epoch 50, one pass over the train
rows per epoch at hyper batch 256, table lr 0.05; the 4x upsampled warp; host colour
subset RandAugment(1, 15) for AutoDO.

Targets, top-1 test error %, mean ± std (the paper; best-on-test protocol, reported as
``test_accuracy_best_on_test_paper_protocol`` in summary.json).

CIFAR-10:

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

CIFAR-100:

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
DATASETS = ("cifar10", "cifar100")


def get_config(arg=None):
    dataset, _, column = (arg or DATASETS[0]).partition(":")
    if dataset not in DATASETS:
        raise ValueError(f"config argument {arg!r}: the dataset must be one of "
                         f"{', '.join(DATASETS)} (ARG = DATASET:IR-NR)")
    return base.paper_column(column, COLUMNS, dataset=dataset, model="wrn28_10", epochs=200,
                             batch_size=256, learning_rate=0.1, hyper_start_epoch=50,
                             hyper_batch_size=256, hyper_lr=0.05, upsample=4)
