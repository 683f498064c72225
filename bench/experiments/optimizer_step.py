"""The optimiser's share of a training step: torch's default AdamW and clipping against vd's trainer's.

    python bench/experiments/optimizer_step.py [--reps 50]

On the recipe's U-Net (recipes/mnist_latent.yaml, 185 parameter tensors) with random gradients:
the AdamW step and the gradient clipping as torch runs them by default (on the CPU, a Python loop
over the tensors: what diffusers' and timm's training scripts get) and as ``trainer.adamw``
(fused) and ``trainer.clip_gradients`` (multi-tensor) run them. Median milliseconds over --reps calls, interleaved.
Prints; records nothing.
"""

import argparse
import statistics
import time
from pathlib import Path

import torch

from vdcli.models.unet import UNet, UNetConfig
from vdcli.recipe import load_recipe
from vdcli.trainer import adamw, clip_gradients

ROOT = Path(__file__).resolve().parent.parent.parent  # the repository


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=50)
    args = parser.parse_args()
    recipe = load_recipe(ROOT / "recipes" / "mnist_latent.yaml", "ldm")
    model = UNet(UNetConfig(**recipe.model.model_dump(exclude={"arch"})), 8, 4, 10)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    cases = {
        "AdamW, torch's default": torch.optim.AdamW(model.parameters(), lr=1e-3).step,
        "AdamW, trainer.adamw (fused)": adamw(model, 1e-3, 0.05).step,
        "clip, torch's default": lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0),
        "clip, trainer.clip_gradients": lambda: clip_gradients(model, 1.0),
    }
    times = {name: [] for name in cases}
    for fn in cases.values():
        fn()  # warm-up: the optimisers' state
    for _ in range(args.reps):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    print(f"{sum(1 for _ in model.parameters())} parameter tensors, {sum(p.numel() for p in model.parameters()):,} weights, "
          f"{torch.get_num_threads()} threads")
    for name, ts in times.items():
        print(f"{name:<32} {statistics.median(ts) * 1e3:7.2f} ms")


if __name__ == "__main__":
    main()
