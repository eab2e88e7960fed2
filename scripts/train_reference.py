#!/usr/bin/env python3
"""The seed paper's recipe in PyTorch, for comparing speed and accuracy with `trainer train`.

Same recipe and defaults as the Rust trainer: ResNet50 (from scratch, or --init weights),
Resize(256) + CenterCrop(224), RandomAffine(10 deg, translate 0.1, scale 0.9-1.1) for training,
ImageNet normalisation, stratified 85:15 split with a seed, SGD(lr 0.1, momentum 0.9),
StepLR(10, 0.1), batch 32, 20 epochs, cross-entropy, best-validation checkpoint.

    python3 scripts/train_reference.py --data ../shared/data/covid19-kaggle/train \
        --test ../shared/data/covid19-kaggle/test --exclude ../shared/data/covid19-kaggle/test-leaks.txt \
        --device cuda --out runs/torch

Prints one line per epoch (losses, accuracies, training images/s) and writes summary.json.
The split draws differ from the Rust trainer's (another RNG), the per-class counts are the same.
"""
import argparse
import json
import random
import time
from pathlib import Path

import torch
import torchvision
from torchvision import transforms

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def stratified_split(targets, fraction, seed):
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(set(targets)):
        members = [i for i, t in enumerate(targets) if t == label]
        rng.shuffle(members)
        held_out = int(fraction * len(members) + 0.5)  # Rust's f64::round (halves away from 0)
        if held_out == 0 and len(members) >= 2 and fraction > 0:
            held_out = 1
        val += members[:held_out]
        train += members[held_out:]
    return sorted(train), sorted(val)


def run_epoch(model, loader, device, optimizer=None):
    model.train(optimizer is not None)
    loss_sum, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    with torch.set_grad_enabled(optimizer is not None):
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits, y)
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return loss_sum / seen, correct / seen, seen / (time.perf_counter() - start)


def eval_transform(resize, crop):
    return transforms.Compose(
        [transforms.Resize(resize), transforms.CenterCrop(crop), transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    )


def evaluate(model, root, device, eval_tf, exclude=()):
    data = torchvision.datasets.ImageFolder(root, eval_tf)
    keep = [i for i, (p, _) in enumerate(data.samples) if str(Path(p).relative_to(root)) not in exclude]
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(data, keep), batch_size=32)
    _, accuracy, _ = run_epoch(model, loader, device)
    return accuracy, len(keep)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--test")
    parser.add_argument("--exclude")
    parser.add_argument("--init", help="ResNet50 state_dict (.pth or .safetensors)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--lr-step", type=int, default=10)
    parser.add_argument("--warmup-epochs", type=int, default=0, help="linear warm-up: lr * epoch / (warmup + 1)")
    parser.add_argument("--zero-init-residual", action="store_true")
    parser.add_argument("--resize", type=int, default=256)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    train_tf = transforms.Compose([
        transforms.Resize(args.resize), transforms.CenterCrop(args.crop),
        transforms.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)),
        transforms.ToTensor(), transforms.Normalize(MEAN, STD),
    ])
    eval_tf = eval_transform(args.resize, args.crop)
    train_view = torchvision.datasets.ImageFolder(args.data, train_tf)
    val_view = torchvision.datasets.ImageFolder(args.data, eval_tf)
    train_idx, val_idx = stratified_split(train_view.targets, 0.15, args.seed)
    loader = lambda ds, idx, shuffle: torch.utils.data.DataLoader(
        torch.utils.data.Subset(ds, idx), batch_size=args.batch_size, shuffle=shuffle,
        num_workers=args.workers, pin_memory=device.type == "cuda", persistent_workers=args.workers > 0)
    train_loader, val_loader = loader(train_view, train_idx, True), loader(val_view, val_idx, False)

    model = torchvision.models.resnet50(
        num_classes=len(train_view.classes), zero_init_residual=args.zero_init_residual)
    if args.init:
        if args.init.endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(args.init)
        else:
            state = torch.load(args.init, map_location="cpu")
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        model.load_state_dict(state, strict=False)
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9,
                                weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.lr_step, gamma=0.1)

    history, best = [], (-1.0, 0)
    for epoch in range(1, args.epochs + 1):
        if args.warmup_epochs and epoch <= args.warmup_epochs + 1:
            for group in optimizer.param_groups:
                group["lr"] = args.lr * min(1.0, epoch / (args.warmup_epochs + 1))
        lr = optimizer.param_groups[0]["lr"]
        train_loss, train_acc, rate = run_epoch(model, train_loader, device, optimizer)
        val_loss, val_acc, _ = run_epoch(model, val_loader, device)
        scheduler.step()
        history.append(dict(epoch=epoch, lr=lr, train_loss=train_loss, train_accuracy=train_acc,
                            validation_loss=val_loss, validation_accuracy=val_acc, images_per_second=rate))
        print(f"epoch {epoch:3d}  lr {lr:.4f}  train loss {train_loss:.4f} acc {train_acc:.4f}  "
              f"val loss {val_loss:.4f} acc {val_acc:.4f}  {rate:.1f} img/s", flush=True)
        if val_acc > best[0]:
            best = (val_acc, epoch)
            torch.save(model.state_dict(), out / "best.pth")

    summary = dict(device=str(device), torch=torch.__version__, args=vars(args), history=history,
                   best_validation_accuracy=best[0], best_epoch=best[1],
                   mean_train_images_per_second=sum(h["images_per_second"] for h in history) / len(history))
    if args.test:
        model.load_state_dict(torch.load(out / "best.pth", map_location=device))
        summary["test_accuracy"], summary["test_images"] = evaluate(model, args.test, device, eval_tf)
        if args.exclude:
            excluded = {l.strip() for l in Path(args.exclude).read_text().splitlines() if l.strip()}
            summary["test_accuracy_without_excluded"], summary["test_images_without_excluded"] = evaluate(
                model, args.test, device, eval_tf, excluded)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=1))


if __name__ == "__main__":
    main()
