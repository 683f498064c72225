"""Tiny checkpoints of every kind of LDM, and the images ``vd`` sampled from them, as a frozen reference.

    PYTHONPATH=<checkout of 280dded> python tests/data/make_legacy.py tests/data/legacy

Run once with the code of commit 280dded (before the conditioning redesign: one ``cond`` value,
guidance written once, ``conditioning.py``); its output is committed. ``tests/test_legacy.py``
checks that the current code still loads those checkpoints and samples the same images, pixel
for pixel, through the same commands. It drives ``vd`` only through its command line (``python -m
vdcli``), which both versions share, so it imports nothing of vdcli itself.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.numpy import save_file

TINY = ["--set", "data.name=synthetic", "--set", "data.limit=128", "--set", "data.image_size=16",
        "--set", "vae.model.channels=8", "--set", "vae.train.steps=10", "--set", "vae.train.batch_size=32",
        "--set", "vae.train.warmup_steps=2", "--set", "vae.train.log_every=5",
        "--set", "model.channels=16", "--set", "model.blocks_per_level=1",
        "--set", "train.steps=10", "--set", "train.batch_size=32", "--set", "train.warmup_steps=2",
        "--set", "train.log_every=5", "--set", "train.eval_every=10", "--set", "sample.steps=4"]
TEXT = ["--set", "conditioning=text", "--set", "clip.model.embed_dim=16", "--set", "clip.model.image.patch_size=4",
        "--set", "clip.model.image.dim=32", "--set", "clip.model.image.depth=1", "--set", "clip.model.image.heads=2",
        "--set", "clip.model.text.dim=32", "--set", "clip.model.text.depth=1", "--set", "clip.model.text.heads=2",
        "--set", "clip.train.steps=10", "--set", "clip.train.batch_size=32", "--set", "clip.train.eval_every=10",
        "--set", "clip.train.warmup_steps=2", "--set", "clip.train.eval_images=64"]
MODELS = {  # name: the train-ldm options of a tiny model of each kind
    "class": [*TINY, "--set", "train.guide_at=0.5", "--set", "sample.autoguidance=2.0"],
    "none": [*TINY, "--set", "conditioning=none"],
    "text": [*TINY, *TEXT],
}
# name: (the checkpoint option, the vd sample options): every way a request reaches the denoiser
SAMPLES = {
    "class-guided": ("class", ["--class", "all", "--n", "2"]),
    "class-ddim": ("class", ["--class", "disk,ring", "--n", "2", "--sampler", "ddim", "--steps", "4", "--eta", "0.5", "--guidance", "2"]),
    "class-autoguided": ("class", ["--class", "none", "--n", "3"]),
    "class-init": ("class", ["--init", "synthetic:test:1", "--class", "disk", "--strength", "0.5,1", "--n", "2"]),
    "none": ("none", ["--n", "3"]),
    "text-guided": ("text", ["--prompt", "disk", "--prompt", "a ring", "--n", "2"]),
    "text-negative": ("text", ["--prompt", "a disk", "--negative-prompt", "ring", "--n", "2"]),
    "text-unconditional": ("text", ["--class", "none", "--n", "2"]),
    "controlnet": ("controlnet", ["--control", "synthetic:test:0", "--class", "all", "--n", "1"]),
}


def vd(*args, cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "vdcli", *map(str, args)], check=True, cwd=cwd, capture_output=True,
                   env={**os.environ, "VD_DATA_ROOT": str(cwd / "data"), "OMP_NUM_THREADS": "1"})


def read_images(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def sample_all(checkpoints: dict[str, Path], work: Path) -> dict[str, np.ndarray]:
    """Every case of SAMPLES, run through ``vd sample``: {case/file: uint8 pixels}."""
    out = {}
    for case, (model, options) in SAMPLES.items():
        where = ["--controlnet", checkpoints[model]] if model == "controlnet" else ["--checkpoint", checkpoints[model]]
        vd("sample", *where, *options, "--device", "cpu", "--out", work / "out" / case, cwd=work)
        for name, pixels in read_images(work / "out" / case / "images").items():
            out[f"{case}/{name}"] = pixels
    return out


def main(dest: str) -> None:
    import tempfile

    dest_dir = Path(dest).resolve()
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checkpoints = {}
        for name, options in MODELS.items():
            (work / f"{name}.yaml").write_text("kind: ldm\n")
            vd("train-ldm", work / f"{name}.yaml", *options, "--device", "cpu", "--quiet", cwd=work)
            checkpoints[name] = dest_dir / f"{name}.safetensors"
            checkpoints[name].write_bytes((work / "runs" / name / "latest" / "checkpoint.safetensors").read_bytes())
        (work / "cn.yaml").write_text(f"kind: controlnet\nbase: {checkpoints['class']}\ncontrol: edges\n")
        vd("train-controlnet", work / "cn.yaml", "--set", "train.steps=6", "--set", "train.batch_size=16",
           "--set", "train.eval_every=6", "--set", "train.log_every=3", "--device", "cpu", "--quiet", cwd=work)
        checkpoints["controlnet"] = dest_dir / "controlnet.safetensors"
        checkpoints["controlnet"].write_bytes((work / "runs" / "cn" / "latest" / "checkpoint.safetensors").read_bytes())
        save_file(sample_all(checkpoints, work), str(dest_dir / "samples.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1])
