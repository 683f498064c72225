"""How good are the samples? Class agreement and a Fréchet distance, judged by the trained ViT.

    VD_DATA_ROOT=../shared/datasets python bench/ldm_quality.py \
        --ldm bench/runs/mnist_latent/latest --vit bench/runs/mnist_vit/latest

For each sampler setting it draws `per_class` images of every digit (fixed seed), and reports
- agreement: the fraction the ViT from recipes/mnist_vit.yaml classifies as the asked digit;
- FD: the Fréchet distance between ViT features (the normed class token) of the samples and of
  the MNIST test set, ||μ1 − μ2||² + tr(Σ1 + Σ2 − 2 (Σ1^½ Σ2 Σ1^½)^½), an FID with the ViT as
  the feature network (lower is better; it grows when samples are few, so compare equal counts);
- ms per image, on this machine.
It appends one JSON line per setting to bench/results.jsonl.
"""

import argparse
import json
import os
import time
from pathlib import Path

import torch

from vdcli.checkpoint import load_checkpoint
from vdcli.data import fit_images, load_split, to_float
from vdcli.recipe import DataConfig
from vdcli.runs import find_checkpoint
from vdcli.tasks.ldm import class_grid, load_ldm, save_class_grid
from vdcli.tasks.vit import load_vit

HERE = Path(os.path.relpath(Path(__file__).parent))  # relative, so that the recorded command reads as typed
SETTINGS = {  # name: (sampler, steps, eta)
    "ddim-10": ("ddim", 10, 0.0),
    "ddim-20": ("ddim", 20, 0.0),
    "ddim-50": ("ddim", 50, 0.0),
    "ddim-100": ("ddim", 100, 0.0),
    "ddim-50-eta0.5": ("ddim", 50, 0.5),
    "ddim-50-eta1": ("ddim", 50, 1.0),
    "ddpm-1000": ("ddpm", 1000, 1.0),
}


def sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(m)
    return vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = torch.cov(a.T), torch.cov(b.T)
    root = sqrtm_psd(s1)
    cross = sqrtm_psd(root @ s2 @ root)
    return ((mu1 - mu2).pow(2).sum() + torch.trace(s1 + s2 - 2 * cross)).item()


@torch.no_grad()
def vit_view(vit, images: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted class, features) of uint8 images, brought to the ViT's input size."""
    if images.shape[-1] > size:  # the LDM works on 28 -> 32 padded digits: take the centre back
        off = (images.shape[-1] - size) // 2
        images = images[..., off : off + size, off : off + size]
    images = fit_images(images, size, None)
    preds, feats = [], []
    for i in range(0, len(images), 500):
        x = to_float(images[i : i + 500])
        preds.append(vit(x).argmax(-1))
        feats.append(vit.features(x))
    return torch.cat(preds), torch.cat(feats)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ldm", required=True)
    parser.add_argument("--vit", required=True)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--guidance", type=float, default=None, help="default: the LDM recipe's")
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    cpu = torch.device("cpu")
    ldm = load_ldm(load_checkpoint(find_checkpoint(args.ldm, "ldm")[0], "ldm"), cpu)
    vit_ckpt = load_checkpoint(find_checkpoint(args.vit, "vit")[0], "vit")
    vit, size = load_vit(vit_ckpt, cpu), vit_ckpt.meta["data"]["image_size"]
    test = load_split(DataConfig(name="mnist", image_size=size), "test", os.environ.get("VD_DATA_ROOT"))
    _, test_feats = vit_view(vit, test.images, size)
    guidance = ldm.defaults.guidance if args.guidance is None else args.guidance
    classes = list(range(len(ldm.classes)))

    for name in args.settings.split(","):
        sampler, steps, eta = SETTINGS[name]
        t0 = time.perf_counter()
        samples, _ = class_grid(ldm, classes, args.per_class, seed=0, sampler=sampler, steps=steps, eta=eta, guidance=guidance)
        ms = (time.perf_counter() - t0) / len(samples) * 1000
        preds, feats = vit_view(vit, samples, size)
        asked = torch.tensor(classes).repeat_interleave(args.per_class)
        row = {
            "bench": "ldm_quality",
            "setting": name,
            "per_class": args.per_class,
            "guidance": guidance,
            "images": len(samples),
            "agreement": round((preds == asked).float().mean().item(), 4),
            "frechet_distance": round(frechet_distance(feats, test_feats), 3),
            "ms_per_image": round(ms, 1),
            "ldm": str(args.ldm),
            "date": time.strftime("%Y-%m-%d %H:%M"),
        }
        shown = torch.cat([samples[c * args.per_class : c * args.per_class + 10] for c in classes])
        save_class_grid(shown, ldm.classes, 10, HERE / f"samples_{name}.png")
        print(json.dumps(row), flush=True)
        with open(HERE / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
