"""Same-machine PyTorch reference: a plain training step of the MNIST ResNet shape.

Usage::

    pip install torch==2.13.0   # optional; not a project requirement
    python -m benchmarks.torch_reference [--batch 32] [--steps 40] [--threads 2]

The original AutoDO code could not be run here, and its published figures
(``shared/reference/peer_figures.md``) come from another CPU (Zen 4 with AVX-512). This script
times the *floor* of the original's inner step on this machine instead: a plain PyTorch SGD
Nesterov step (weight decay 1e-4) of the same network shape (3x3 stem with 16 channels and
BatchNorm, 3 stages x 2 BasicBlocks of 16/32/64 channels with CELU, global average pool,
linear head), on random 1x28x28 images, with no augmentation and no hyperparameter tables.
The original does strictly more per step, so its img/s here is at most this figure.

Prints one JSON line ``{"framework": "torch", "model", "batch", "img_per_s", "ms_median",
"threads", "torch_version"}``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def _network(torch):
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.act = nn.CELU()
            self.short = nn.Identity()
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                           nn.BatchNorm2d(cout))

        def forward(self, x):
            out = self.act(self.bn1(self.conv1(x)))
            return self.act(self.bn2(self.conv2(out)) + self.short(x))

    layers = [nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.CELU()]
    cin = 16
    for cout, stride in ((16, 1), (32, 2), (64, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)]
    return nn.Sequential(*layers)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        sys.exit("benchmarks.torch_reference needs PyTorch: pip install torch==2.13.0")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = _network(torch)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                          weight_decay=1e-4)
    x = torch.randn(args.batch, 1, 28, 28)
    y = torch.randint(0, 10, (args.batch,))
    times = []
    for step in range(args.steps + 5):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        if step >= 5:
            times.append(time.perf_counter() - start)
    ms = 1e3 * statistics.median(times)
    print(json.dumps({"framework": "torch", "model": "mnist_resnet", "batch": args.batch,
                      "img_per_s": round(args.batch / ms * 1e3, 1), "ms_median": round(ms, 2),
                      "threads": args.threads, "torch_version": torch.__version__}))


if __name__ == "__main__":
    main()
