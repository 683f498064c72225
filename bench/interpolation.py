"""Which interpolation path stays a handwritten digit? Judged by bench/classifier.py's CNN.

    VD_DATA_ROOT=../shared/datasets python bench/interpolation.py --ldm bench/runs/mnist_latent/latest --pairs 40

Takes ``pairs`` pairs of MNIST test digits of different classes (a fixed draw) and walks from one
to the other in ``frames`` frames along three paths, as ``vd interpolate`` draws them:
- pixel blend: (1 − α) a + α b, a cross-fade;
- VAE latent path: slerp between the posterior means of a and b, decoded (the LDM's own VAE);
- LDM inversion path: DDIM-``steps`` inversion of both latents with the unconditional model,
  slerp between the two noises, DDIM decoding (``tasks.ldm.interpolate``).
For the middle frames (α strictly between 1/4 and 3/4) it reports the fraction the judge
classifies with probability ≥ 0.9 ("confident": it looks like one digit, not two overlaid),
and the fraction judged as a or b. Appends a JSON line to bench/results.jsonl and writes
bench/runs/interpolation_paths.png (the first pairs, three rows each).
"""

import argparse
import json
import time

import torch
from common import CONFIDENT, RUNS, data_root, judge, load_judge, record

from vdcli import images
from vdcli.checkpoint import load_checkpoint
from vdcli.data import load_split
from vdcli.recipe import DataConfig
from vdcli.runs import find_checkpoint
from vdcli.tasks import ldm as ldm_tasks
from vdcli.tasks import vae as vae_tasks

PATHS = ("pixel blend", "VAE latent path", "LDM inversion path")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ldm", required=True)
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    cpu = torch.device("cpu")
    ckpt = load_checkpoint(find_checkpoint(args.ldm, "ldm")[0], "ldm")
    ldm = ldm_tasks.load_ldm(ckpt, cpu)
    test = load_split(DataConfig(name="mnist", image_size=ckpt.meta["data"]["image_size"]), "test", data_root())
    model = load_judge()

    g = torch.Generator().manual_seed(0)
    pairs = []
    while len(pairs) < args.pairs:
        i, j = torch.randint(len(test), (2,), generator=g).tolist()
        if test.labels[i] != test.labels[j]:
            pairs.append((i, j))

    alphas = torch.linspace(0, 1, args.frames)
    middle = ((alphas > 0.25) & (alphas < 0.75)).nonzero().flatten()
    t0 = time.perf_counter()
    walks = {name: [] for name in PATHS}
    for i, j in pairs:
        a, b = test.images[i], test.images[j]
        through_ldm = ldm_tasks.interpolate(ldm, a, b, args.frames, args.steps)  # its .pixels is the blend
        walks["pixel blend"].append(through_ldm.pixels)
        walks["VAE latent path"].append(vae_tasks.interpolate(ldm.vae, a, b, args.frames).latents)
        walks["LDM inversion path"].append(through_ldm.latents)
    seconds = time.perf_counter() - t0

    row = {"bench": "interpolation", "pairs": args.pairs, "frames": args.frames, "middle_frames": len(middle),
           "steps": args.steps, "ldm": str(args.ldm), "seconds": round(seconds, 1)}
    for name in PATHS:
        frames = torch.stack(walks[name])[:, middle]  # (pairs, m, C, H, W)
        probs, _ = judge(model, frames.flatten(0, 1))
        top, pred = probs.max(1)
        ends = torch.tensor([[int(test.labels[i]), int(test.labels[j])] for i, j in pairs]).repeat_interleave(len(middle), 0)
        row[name] = {"confident": round((top >= CONFIDENT).float().mean().item(), 4),
                     "a_or_b": round(((pred == ends[:, 0]) | (pred == ends[:, 1])).float().mean().item(), 4),
                     "confident_a_or_b": round(((top >= CONFIDENT) & ((pred == ends[:, 0]) | (pred == ends[:, 1]))).float().mean().item(), 4)}
    shown = min(4, args.pairs)
    rows = torch.cat([walks[name][k] for k in range(shown) for name in PATHS])
    picture = images.grid(rows, nrow=args.frames)
    names = [name for _ in range(shown) for name in PATHS]
    images.save(images.with_row_labels(picture, names, picture.height // len(names)), RUNS / "interpolation_paths.png")
    print(json.dumps(record(row), indent=2))


if __name__ == "__main__":
    main()
