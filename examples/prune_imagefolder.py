"""Prune a timm ViT to half its MACs in a plain PyTorch loop on an ImageFolder (your own normalisation and your own
warmup-cosine schedule), then export it for `hiap bench`.

python examples/prune_imagefolder.py --data DATA --out pruned/          # DATA/train/<class>/*.png
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import timm
import torch
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import ImageFolder

import hiap.api as hp

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # this loop's normalisation (CIFAR-10's)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--target-macs", default="0.5")
    parser.add_argument("--gate-lr", type=float, default=0.05)
    parser.add_argument("--model", default="vit_tiny_patch16_224")
    parser.add_argument("--model-kwargs", default="img_size=32,patch_size=8,depth=2,embed_dim=64,num_heads=2")
    args = parser.parse_args(argv)

    kwargs = {k: int(v) for k, v in (kv.split("=") for kv in args.model_kwargs.split(",") if kv)}
    train = ImageFolder(args.data / "train")
    model = timm.create_model(args.model, num_classes=len(train.classes), **kwargs)
    train.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    loader = DataLoader(train, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))

    # Wrap before building the optimizer: the gate logits are their own groups (own lr, no weight decay).
    options = hp.PruneOptions(gate_lr=args.gate_lr)
    pruner = hp.Pruner(model, len(loader) * args.epochs, budget=args.target_macs, options=options,
                       model_name=args.model)  # fmt: skip
    optimizer = torch.optim.AdamW([{"params": list(pruner.weight_parameters()), "lr": 1e-3}, *pruner.param_groups()])
    # Any schedule on the whole optimizer: the pruner sets its gate groups' lrs before every step itself.
    total, warmup = pruner.total_steps, max(1, pruner.total_steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: (i + 1) / warmup if i < warmup else 0.5 * (1 + math.cos(math.pi * (i - warmup) / total))
    )
    criterion = torch.nn.CrossEntropyLoss()
    model.train()
    for _ in range(args.epochs):
        for x, y in loader:
            loss = pruner.penalty(criterion(model(x), y))  # the budget terms while the search runs
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            pruner.step(optimizer)  # controller, temperature, gate lrs; the search's end lands the structure
            schedule.step()

    sample = torch.stack([train[i][0] for i in range(4)])
    report = hp.export(pruner, args.out, preprocessing={"mean": MEAN, "std": STD},
                       sample_inputs=sample, class_names=train.classes)  # fmt: skip
    report["target_met"] = pruner.target_met
    plan = hp.materialize(pruner)  # the same model object, now physically smaller
    hp.save_pruned(model, args.out / "pruned.safetensors", plan)
    return report


if __name__ == "__main__":
    result = main()
    print(f"exported {result['gmacs']:.4f} GMACs of {result['dense_gmacs']:.4f}, parity {result['parity']['passed']}")
