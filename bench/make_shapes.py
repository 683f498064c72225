"""Make a folder of coloured shapes: RGB photos-to-be for trying the folder recipes offline.

    python bench/make_shapes.py OUT --n 2000 --size 64 [--seed 0] [--flat] [--no-captions]

OUT/<shape>/00000.png ... (one sub-folder per shape: square, disk, ring, cross, bar, diamond),
or with --flat all images in OUT itself, plus OUT/metadata.jsonl in the Hugging Face
``imagefolder`` convention, one line per image: {"file_name": "disk/00003.png", "text": "a red disk"}.
A shape of one of eight colours on a dark background of another hue, at a random place and size:
the same seed makes the same folder, byte for byte.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image

from vdcli.data import synthetic_shapes

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 230), "yellow": (235, 210, 40),
           "purple": (150, 60, 200), "orange": (240, 140, 30), "white": (240, 240, 240), "cyan": (40, 200, 210)}


def make_shapes(out: Path, n: int, size: int = 64, seed: int = 0, flat: bool = False, captions: bool = True) -> Path:
    """Write n coloured shapes under ``out``; returns ``out``."""
    out = Path(out)
    shapes = synthetic_shapes(n, size, seed)  # white masks (N, 1, H, W) and their shape labels
    g = torch.Generator().manual_seed(seed + 1)
    names = list(COLOURS)
    colour = torch.randint(len(names), (n,), generator=g)
    palette = torch.tensor(list(COLOURS.values()), dtype=torch.float32)  # (K, 3)
    background = torch.rand(n, 3, generator=g) * 60  # dark, of some hue
    mask = shapes.images.float() / 255  # (N, 1, H, W)
    pixels = mask * palette[colour][:, :, None, None] + (1 - mask) * background[:, :, None, None]  # (N, 3, H, W)
    pixels = pixels.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (N, H, W, 3)
    lines = []
    for i in range(n):
        shape = shapes.classes[int(shapes.labels[i])]
        name = f"{i:05d}.png" if flat else f"{shape}/{i:05d}.png"
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i], "RGB").save(out / name)
        word = names[int(colour[i])]
        lines.append(json.dumps({"file_name": name, "text": f"{'an' if word[0] in 'aeiou' else 'a'} {word} {shape}"}))
    if captions:
        (out / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flat", action="store_true", help="all images in OUT, no class sub-folders")
    parser.add_argument("--no-captions", dest="captions", action="store_false", help="no metadata.jsonl")
    args = parser.parse_args()
    make_shapes(args.out, args.n, args.size, args.seed, args.flat, args.captions)
    print(f"{args.n} images of {args.size}x{args.size} in {args.out}")


if __name__ == "__main__":
    main()
