#!/usr/bin/env python3
"""PyTorch's side of `cargo bench -p trainer --bench throughput`'s training rows.

A random-weight torchvision ResNet50 (3 classes), random input, one training step (forward,
cross-entropy, backward, SGD momentum 0.9) at 224x224 batch 8 and at 112x112 batch 32, the median
of 3 timed steps after one warm-up; prints the same table. CPU, all cores unless
--threads is given.

    /usr/bin/python3 -s scripts/bench_reference_step.py
"""
import argparse
import statistics
import time

import torch
import torchvision


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet50(num_classes=3).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    print(f"PyTorch {torch.__version__}, random-weight ResNet50, f32, CPU, "
          f"{torch.get_num_threads()} threads")
    print("| what | batch | ms per batch | ms per image | images/s |")
    print("|---|---|---|---|---|")
    for batch, size in [(8, 224), (32, 112)]:
        x = torch.randn(batch, 3, size, size)
        y = torch.arange(batch) % 3

        def step():
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()

        step()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        s = statistics.median(times)
        print(f"| training step (fwd+bwd+SGD), {size}x{size} | {batch} | {s * 1e3:.1f} | "
              f"{s * 1e3 / batch:.1f} | {batch / s:.2f} |")


if __name__ == "__main__":
    main()
