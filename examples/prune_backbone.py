"""Prune only the ViT backbone of a model with its own head (here a per-patch segmentation head), export the whole
model, and rebuild the pruned model later from its definition and the saved weights.

    python examples/prune_backbone.py --out seg/ && hiap bench seg/model.onnx --device x86-cpu
"""

from __future__ import annotations

import argparse
from pathlib import Path

import timm
import torch
from torch import nn

import hiap.api as hp


class PatchSegmenter(nn.Module):
    """A timm ViT backbone (its classifier removed) and a linear head that labels every patch."""

    def __init__(self, classes: int = 4, **vit_kwargs: int) -> None:
        super().__init__()
        self.backbone = timm.create_model("vit_tiny_patch16_224", num_classes=0, **vit_kwargs)
        self.head = nn.Linear(self.backbone.embed_dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.backbone.forward_features(x)[:, self.backbone.num_prefix_tokens :]
        return self.head(tokens)  # [B, patches, classes]


def toy_batch(generator: torch.Generator, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose patches are labelled by their mean brightness quartile: something a head can learn."""
    x = torch.randn(n, 3, 32, 32, generator=generator)
    patches = x.mean(1).unfold(1, 8, 8).unfold(2, 8, 8).mean((-1, -2)).flatten(1)  # [n, 16]
    return x, torch.bucketize(patches, torch.tensor([-0.1, 0.0, 0.1]))


def build(seed: int = 0) -> PatchSegmenter:
    torch.manual_seed(seed)
    return PatchSegmenter(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--gate-lr", type=float, default=0.05)
    args = parser.parse_args(argv)

    model = build()
    # The pruner finds the one ViT inside the model; the head is left alone.
    pruner = hp.Pruner(model, args.steps, budget=0.5, options=hp.PruneOptions(gate_lr=args.gate_lr),
                       model_name="vit_tiny_patch16_224")  # fmt: skip
    optimizer = torch.optim.AdamW([{"params": list(pruner.weight_parameters()), "lr": 1e-3}, *pruner.param_groups()])
    gen = torch.Generator().manual_seed(0)
    for _ in range(args.steps):
        x, y = toy_batch(gen)
        loss = pruner.penalty(nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.step(optimizer)

    # toy_batch's images are already normalised (zero mean, unit variance): mean 0, std 1 per channel.
    report = hp.export(pruner, args.out, preprocessing={"mean": (0.0,) * 3, "std": (1.0,) * 3},
                       sample_inputs=toy_batch(gen, 4)[0])  # fmt: skip
    plan = hp.materialize(pruner)
    hp.save_pruned(model, args.out / "pruned.safetensors", plan)
    # Later, elsewhere: the same definition, then the plan and the weights from the file (no pickle).
    rebuilt = hp.load_pruned(build(seed=1), args.out / "pruned.safetensors").eval()
    x = toy_batch(gen, 2)[0]
    with torch.no_grad():
        report["rebuilt_max_abs_diff"] = float((rebuilt(x) - model.eval()(x)).abs().max())
    return report


if __name__ == "__main__":
    result = main()
    print(
        f"backbone {result['gmacs']:.4f} of {result['dense_gmacs']:.4f} GMACs; whole file {result['onnx_gmacs']:.4f};"
        f" parity {result['parity']['passed']}; rebuilt max abs diff {result['rebuilt_max_abs_diff']:.1e}"
    )
