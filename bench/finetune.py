"""Does fine-tuning pay? The MNIST LDM fine-tuned on Fashion-MNIST against Fashion-MNIST from nothing.

    # 1. a source LDM (vd train-ldm recipes/mnist_latent.yaml) and a Fashion-MNIST judge trained at the LDM's image size
    VD_DATA_ROOT=../shared/datasets vd train-vit recipes/mnist_vit.yaml --set data.name=fashion-mnist --set data.image_size=32
    # 2. both runs, judged at every train.eval_every steps (hours of CPU at the shipped recipe's 8000 steps)
    VD_DATA_ROOT=../shared/datasets python bench/finetune.py --source runs/mnist_latent/latest --judge runs/mnist_vit/latest
    # a smoke run of the whole pipeline on synthetic shapes, in a minute (nothing is recorded)
    python bench/finetune.py --tiny

Both runs train the same recipe (recipes/mnist_latent.yaml with data.name: fashion-mnist) on the
source's frozen VAE (``vae.checkpoint: SOURCE/vae``: the fine-tuned denoiser only makes sense on
the latents it learned, and the run from nothing gets the same VAE, so only the denoiser's start
differs); one adds ``init_from: SOURCE``. The label table is the same size (ten classes each), so
nothing is re-initialised: the digit-0 row starts as "T-shirt". At each evaluation the EMA
denoiser's weights are kept; afterwards each is judged: ``--per-class`` samples of every class
with the recipe's sampler from one seed, classified by the judge ViT. Quality = class agreement
(the judge's class is the asked one) and the confident share (its top probability >= 0.9), at
equal steps for both runs: one JSON line per (run, step), and both curves in ``finetune.png``.
Without ``--tiny`` the lines are appended to bench/results.jsonl.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vdcli.checkpoint import load_checkpoint
from vdcli.data import to_float
from vdcli.images import _pyplot
from vdcli.recipe import ViTRecipe, load_recipe
from vdcli.runs import find_checkpoint, new_run
from vdcli.tasks import ldm as tasks_ldm
from vdcli.tasks import ldm_train, vit

HERE = Path(os.path.relpath(Path(__file__).parent))
CPU = torch.device("cpu")
TINY_LDM = ["data.name=synthetic", "data.limit=128", "data.image_size=16", "vae.model.channels=8", "vae.train.steps=10",
            "vae.train.batch_size=32", "vae.train.warmup_steps=2", "model.channels=16", "model.blocks_per_level=1",
            "train.steps=10", "train.batch_size=32", "train.warmup_steps=2", "train.log_every=5", "train.eval_every=5",
            "sample.steps=4"]


def train(out: Path, name: str, overrides: list[str], data_root) -> Path:
    """One LDM run; its EMA denoiser's weights at every evaluation in snap_<step>.safetensors."""
    recipe = load_recipe(HERE.parent / "recipes/mnist_latent.yaml", "ldm", overrides)
    run = new_run(out, name)

    def keep(ema_model, step: int) -> None:
        save_file({k: v.contiguous() for k, v in ema_model.state_dict().items()}, str(run.dir / f"snap_{step:06d}.safetensors"))

    summary = ldm_train.train(recipe, run, device=CPU, data_root=data_root, hooks=(keep,), quiet=True)
    print(f"{name}: {run.dir}, {summary.steps} steps in {summary.seconds:.0f} s", file=sys.stderr, flush=True)
    return run.dir


@torch.no_grad()
def curve(run_dir: Path, judge, per_class: int) -> list[dict]:
    """(step, class agreement, confident share) of every kept snapshot of a run."""
    ldm = tasks_ldm.load_ldm(load_checkpoint(run_dir / "checkpoint.safetensors", "ldm"), CPU)
    classes = list(range(len(ldm.classes)))
    points = []
    for snap in sorted(run_dir.glob("snap_*.safetensors")):
        ldm.denoiser.load_state_dict(load_file(str(snap)))
        images, _ = tasks_ldm.class_grid(ldm, classes, per_class, seed=0, sampler=ldm.defaults.sampler, steps=ldm.defaults.steps,
                                         guidance=ldm.defaults.guidance)
        if images.shape[-1] != judge.image_size:
            raise SystemExit(f"the judge sees {judge.image_size}x{judge.image_size} images, the LDM makes {images.shape[-1]}; "
                             "train the judge with --set data.image_size=" + str(images.shape[-1]))
        probs = judge(to_float(images)).softmax(-1)  # images: uint8 [N, C, H, W], per_class rows of each class in turn
        asked = torch.arange(len(classes)).repeat_interleave(per_class)
        points.append({"step": int(snap.stem.split("_")[1]), "agreement": (probs.argmax(-1) == asked).float().mean().item(),
                       "confident": (probs.max(-1).values >= 0.9).float().mean().item()})
    return points


def plot(curves: dict[str, list[dict]], out: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), dpi=110)
    for name, points in curves.items():
        for ax, key in zip(axes, ("agreement", "confident")):
            ax.plot([p["step"] for p in points], [p[key] for p in points], marker="o", label=name)
            ax.set_xlabel("step")
            ax.set_ylabel(key)
            ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out)


def tiny_setup(out: Path) -> tuple[Path, Path, list[str]]:
    """A source LDM and a judge on synthetic shapes, and the tiny overrides of both runs."""
    source = train(out, "source", TINY_LDM, None)
    judge_recipe = ViTRecipe.model_validate({"data": {"name": "synthetic", "limit": 128, "image_size": 16},
                                             "model": {"dim": 32, "depth": 1, "heads": 2, "patch_size": 4},
                                             "train": {"steps": 10, "batch_size": 32, "warmup_steps": 2, "eval_every": 10}})
    judge_run = new_run(out, "judge")
    vit.train(judge_recipe, judge_run, device=CPU, quiet=True)
    return source, judge_run.dir, TINY_LDM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", help="the MNIST LDM run folder (with its vae/ stage)")
    parser.add_argument("--judge", help="a ViT run trained on Fashion-MNIST at the LDM's image size")
    parser.add_argument("--out", default=str(HERE / "runs/finetune"))
    parser.add_argument("--per-class", type=int, default=50, help="samples of each class at each judged step")
    parser.add_argument("--set", action="append", default=[], dest="sets", help="recipe overrides of both runs")
    parser.add_argument("--tiny", action="store_true", help="synthetic shapes, a few steps: checks the pipeline, records nothing")
    args = parser.parse_args()
    out, data_root = Path(args.out), os.environ.get("VD_DATA_ROOT")
    if args.tiny:
        source, judge_dir, base = tiny_setup(out)
        per_class = 2
    else:
        if not (args.source and args.judge):
            parser.error("--source and --judge (or --tiny)")
        source, judge_dir, base, per_class = Path(args.source).resolve(), Path(args.judge), ["data.name=fashion-mnist"], args.per_class
    vae = source / "vae"
    if not (vae / "checkpoint.safetensors").is_file():
        raise SystemExit(f"{source} has no vae/ stage; give an LDM run that trained its VAE (or set vae.checkpoint in --set)")
    judge = vit.load_classifier(load_checkpoint(find_checkpoint(str(judge_dir), "vit")[0], "vit"), CPU).eval()
    judge.image_size = load_checkpoint(find_checkpoint(str(judge_dir), "vit")[0]).meta["data"]["image_size"]
    shared = [*base, f"vae.checkpoint={vae}", *args.sets]
    runs = {"fine-tuned from MNIST": train(out, "finetuned", [*shared, f"init_from={source}"], data_root),
            "from nothing": train(out, "scratch", shared, data_root)}
    curves = {name: curve(run, judge, per_class) for name, run in runs.items()}
    for name, points in curves.items():
        for p in points:
            line = json.dumps({"bench": "finetune", "run": name, **p, "tiny": args.tiny})
            print(line, flush=True)
            if not args.tiny:
                with open(HERE / "results.jsonl", "a") as f:
                    f.write(line + "\n")
    plot(curves, out / "finetune.png")
    print(f"wrote {out / 'finetune.png'}", file=sys.stderr)


if __name__ == "__main__":
    main()
