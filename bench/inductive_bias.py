"""Inductive bias, measured: the MNIST ViT recipe against a CNN of its size, on 1% to 100% of the data.

    VD_DATA_ROOT=../shared/datasets OMP_NUM_THREADS=1 python bench/inductive_bias.py     # ~25 min on a busy 2-core machine
    python bench/inductive_bias.py --plot-only        # redraw docs/inductive_bias.png from bench/results.jsonl

The claim (Dosovitskiy et al. 2021, sec. 3.1 and 4.2): a transformer "lacks some of the inductive
biases inherent to CNNs, such as translation equivariance and locality, and therefore does not
generalize well when trained on insufficient amounts of data". Both networks here are trained by
``vd train-vit``'s own ``tasks.vit.train``: the recipe of recipes/mnist_vit.yaml (ViT, ~206k
parameters) and the same recipe with ``model: {arch: cnn}`` (models/cnn.py, ~205k), the same
optimiser, schedule, label smoothing and ±1-pixel shifts, on the first n training images
(``data.limit``; the subsets are nested), scored on the whole test split.

The budget per image, the same for both networks at every size: ``--epochs`` passes over the
subset at batch ``--batch``, but never fewer than ``--min-steps`` optimiser steps, so that the
600-image subset is trained at all. The defaults (a quarter epoch, 100 steps, batch 64) are what a
2-core machine shared with other jobs allows in about 25 minutes: 100 steps (6,400 images seen:
10.7 passes over 1%, 2.1 over 5%, 0.53 over 20%) and 235 steps (15,000 images, a quarter pass)
over 100%. Batch 64 instead of the recipe's 128: at this budget the updates are scarcer than the
images. The warm-up is a tenth of the steps. Both networks see exactly the same batches in the
same order (one seed). This is about 2% of the recipe's training (4800 steps of 128), so the
numbers measure "what each architecture learns from a small budget", optimisation speed
included; the rows keep the accuracy on (up to 500 of) the training images too, to tell
under-fitting from poor generalisation. Test accuracy is on the first ``--test-images`` (2000)
test images.

Each run appends one row to bench/results.jsonl (with the command and commit) as soon as it
finishes, so an interrupted bench keeps its rows; the plot (test accuracy against training-set
size, log x, one panel per dataset) goes to docs/inductive_bias.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from vdcli.checkpoint import load_checkpoint
from vdcli.data import ImageSet, load_split
from vdcli.recipe import DataConfig, validate_recipe
from vdcli.runs import new_run
from vdcli.tasks.vit import load_classifier, predict, train

HERE = Path(__file__).parent
ROOT = HERE.parent
NAMES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}
LABELS = {"vit": "ViT (recipe, ~206k params)", "cnn": "CNN (model.arch: cnn, ~205k)"}


def recipe_for(dataset: str, arch: str, n: int, steps: int, batch: int, seed: int):
    raw = yaml.safe_load((ROOT / "recipes" / "mnist_vit.yaml").read_text())
    raw["data"] = {**raw["data"], "name": dataset, "limit": n}
    if arch == "cnn":
        raw["model"] = {"arch": "cnn"}  # models/cnn.py's defaults: about the ViT recipe's parameter count
    raw["train"] = {**raw["train"], "steps": steps, "batch_size": batch, "warmup_steps": steps // 10, "eval_every": steps,
                    "checkpoint_every": steps, "log_every": max(1, steps // 5), "seed": seed}
    return validate_recipe(raw, "vit", source="recipes/mnist_vit.yaml (bench/inductive_bias.py)")


def budget(n: int, epochs: float, min_steps: int, batch: int) -> int:
    return max(math.ceil(epochs * n / batch), min_steps)


def commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def plot(rows: list[dict], out: Path) -> Path:
    from vdcli.images import _pyplot, _save_fig

    plt = _pyplot()
    datasets = [d for d in NAMES if any(r["dataset"] == d for r in rows)]
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.2 * len(datasets), 4.0), dpi=120, squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for arch, style in (("vit", "o-"), ("cnn", "s--")):
            points = sorted((r["train_images"], r["test_accuracy"]) for r in rows if r["dataset"] == dataset and r["arch"] == arch)
            if points:
                ax.plot([p[0] for p in points], [100 * p[1] for p in points], style, label=LABELS[arch])
                for x, y in points:
                    ax.annotate(f"{100 * y:.1f}", (x, 100 * y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
        ax.set_xscale("log")
        ax.margins(y=0.12)  # room for the labels above the points
        ax.set_xlabel("training images (log scale)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(NAMES[dataset])
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="center left")
    if rows:
        e, s, b, t = rows[0]["epochs"], rows[0]["min_steps"], rows[0]["batch"], rows[0]["test_images"]
        fig.suptitle(f"Both networks: the same batches at each size, max({e:g} epochs, {s} steps) of {b} images; "
                     f"test accuracy on {t} test images", fontsize=9)
    fig.tight_layout()
    return _save_fig(fig, out)


def latest_rows() -> list[dict]:
    """The newest row of each (dataset, arch, size) in results.jsonl: what --plot-only draws."""
    rows = {}
    for line in (HERE / "results.jsonl").read_text().splitlines():
        if '"inductive_bias"' in line:
            r = json.loads(line)
            rows[(r["dataset"], r["arch"], r["train_images"])] = r
    return list(rows.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(NAMES), choices=list(NAMES))
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.05, 0.2, 1.0])
    parser.add_argument("--epochs", type=float, default=0.25, help="passes over the subset (before the --min-steps floor)")
    parser.add_argument("--min-steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--test-images", type=int, default=2000, help="score on the first N test images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "inductive_bias.png")
    parser.add_argument("--no-record", action="store_true", help="print only; append nothing to results.jsonl")
    parser.add_argument("--plot-only", action="store_true", help="redraw the plot from results.jsonl; train nothing")
    args = parser.parse_args()
    if args.plot_only:
        rows = latest_rows()
        print(f"wrote {plot(rows, args.out)} from {len(rows)} rows" if rows else "no inductive_bias rows in bench/results.jsonl: nothing drawn")
        return

    data_root = os.environ.get("VD_DATA_ROOT")
    device = torch.device("cpu")
    command = "python bench/" + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    code = commit()  # the code this process imported: read once, before any row
    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    rows, t_all = [], time.perf_counter()
    for dataset in args.datasets:
        full = len(load_split(DataConfig(name=dataset), "train", data_root))
        for fraction in args.fractions:
            n = round(fraction * full)
            steps = budget(n, args.epochs, args.min_steps, args.batch)
            for arch in ("vit", "cnn"):
                recipe = recipe_for(dataset, arch, n, steps, args.batch, args.seed)
                run = new_run(HERE / "runs" / "inductive_bias", f"{dataset}-{arch}-{n}")
                t0 = time.perf_counter()
                summary = train(recipe, run, device=device, data_root=data_root, quiet=True, test_images=args.test_images)
                seconds = time.perf_counter() - t0
                model = load_classifier(load_checkpoint(run.checkpoint, "vit"), device)
                subset = load_split(recipe.data, "train", data_root)
                seen = ImageSet(subset.images[:500], subset.labels[:500], subset.classes)
                train_accuracy = (predict(model, seen, device) == seen.labels).float().mean().item()
                row = {"bench": "inductive_bias", "dataset": dataset, "arch": arch, "fraction": fraction, "train_images": n,
                       "params": sum(p.numel() for p in model.parameters()), "steps": steps, "batch": args.batch,
                       "epochs": args.epochs, "min_steps": args.min_steps, "passes": round(steps * args.batch / n, 2), "test_images": args.test_images,
                       "test_accuracy": round(summary.accuracy, 4), "train_accuracy": round(train_accuracy, 4),
                       "seconds": round(seconds, 1), "seed": args.seed, "run": str(run.dir), "command": command,
                       "commit": code, "machine": machine, "date": time.strftime("%Y-%m-%d %H:%M")}
                rows.append(row)
                print(json.dumps(row), flush=True)
                if not args.no_record:
                    with open(HERE / "results.jsonl", "a") as f:
                        f.write(json.dumps(row) + "\n")
    print(f"wrote {plot(rows, args.out)} after {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
