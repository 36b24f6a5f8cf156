"""ImageNet, ResNet-18: the paper's ImageNet table (IR 10, NR 0 and 0.1).

    python -m experiments.train --config=experiments/configs/imagenet_resnet18.py:10-0.1 \\
        --config.data_dir=~/tensorflow_datasets

ARG is the column "IR-NR": 10-0.0 or 10-0.1 (default 10-0.1). ``--config.method=none``
runs the baseline row.

Setting (the original's): ``imagenet2012`` train 1,281,167, clean validation 20 % of train
drawn first (the dataset default), test = the 50,000 ILSVRC validation images; 224x224
random-resized crops (test: resize 256, centre crop 224); ResNet-18; 200 epochs of SGD
Nesterov, lr 0.1, batch 256, 5 warm-up epochs then cosine to lr·1e-3; hyper steps from
epoch 100, one pass over the train rows per epoch at hyper batch 128, table lr 0.01; the
warp at native resolution (no upsampling); host colour subset RandAugment(2, 9) for
AutoDO.

Targets, top-1 test error % (the paper; best-on-test protocol):

| method | 10-0.0 | 10-0.1 |
|---|---|---|
| baseline (``none``) | 43.1 | 46.2 |
| RandAugment (``randaugment``) | 42.0 | 45.4 |
| Fast AA (``fast_aa``) | 41.6 | 44.7 |
| DADA (``dada``) | 41.9 | 44.9 |
| λ^{A,W,S} (``autodo_aws``) | 40.4 | 44.1 |
"""
from experiments.configs import base

COLUMNS = ("10-0.0", "10-0.1")


def get_config(arg=None):
    return base.paper_column(arg, COLUMNS, dataset="imagenet2012", model="resnet18",
                             epochs=200, batch_size=256, learning_rate=0.1,
                             hyper_start_epoch=100, hyper_batch_size=128, hyper_lr=0.01,
                             upsample=1)
