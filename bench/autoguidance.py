"""Which "bad version" should guide the unconditional model? The measurements behind train.guide_at.

    # 1. train a recipe, keeping the EMA denoiser's weights at every evaluation (every 500 steps)
    VD_DATA_ROOT=../shared/datasets python bench/autoguidance.py train recipes/mnist_latent.yaml --out bench/runs/snapshots
    #    (--set vae.checkpoint=RUN/vae reuses a run's VAE: at the shipped run's thread count, its denoiser is
    #     retrained bit for bit; at another, rounded differently)
    # 2. unconditional samples of the final model guided by each candidate, at each w
    VD_DATA_ROOT=../shared/datasets python bench/autoguidance.py judge RUN --guides 500,1000,2000 --weights 1,2,3 --n 500

A guide is a step (the run's ``snap_<step>.safetensors``) or another LDM run folder (e.g. a smaller
denoiser trained on the same VAE). Each (guide, w) draws n unconditional samples with the
recipe's sampler from one fixed seed, judged by bench/classifier.py as bench/ldm_quality.py does
(confident: top probability >= 0.9; texture: < 0.5; the class histogram; FD against the MNIST
test set), prints a JSON line and appends it to bench/results.jsonl.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from classifier import judge, load_judge
from ldm_quality import scores
from safetensors.torch import load_file, save_file

from vdcli.checkpoint import load_checkpoint
from vdcli.data import load_split
from vdcli.conditioning import guided
from vdcli.diffusion import sample
from vdcli.recipe import DataConfig, load_recipe
from vdcli.runs import find_checkpoint, new_run
from vdcli.tasks import ldm as tasks_ldm
from vdcli.tasks import ldm_train

HERE = Path(os.path.relpath(Path(__file__).parent))


def train(recipe_path: str, out: str, overrides: list[str]) -> None:
    recipe = load_recipe(recipe_path, "ldm", ["train.eval_every=500", *overrides])
    run = new_run(Path(out), Path(recipe_path).stem)

    def keep(ema_model, step: int) -> None:  # an evaluation hook: the EMA denoiser's weights at each evaluation
        weights = {k: v.contiguous() for k, v in ema_model.state_dict().items()}
        save_file(weights, str(run.dir / f"snap_{step:06d}.safetensors"))

    summary = ldm_train.train(recipe, run, device=torch.device("cpu"), data_root=os.environ.get("VD_DATA_ROOT"), hooks=(keep,))
    print(f"{run.dir}: {summary.steps} steps in {summary.seconds:.0f} s", flush=True)


def judge_guides(run: str, guides: list[str], weights: list[float], n: int) -> None:
    cpu = torch.device("cpu")
    ckpt = load_checkpoint(find_checkpoint(run, "ldm")[0], "ldm")
    ldm = tasks_ldm.load_ldm(ckpt, cpu)
    model = load_judge()
    torch.set_grad_enabled(False)
    test = load_split(DataConfig(name="mnist", image_size=28), "test", os.environ.get("VD_DATA_ROOT"))
    _, test_feats = judge(model, test.images)
    null = ldm.conditioning.encode([ldm.null_class] * min(n, 500), cpu)
    d = ldm.defaults
    for name in guides:
        if Path(name).is_dir():
            bad = tasks_ldm.load_ldm(load_checkpoint(find_checkpoint(name, "ldm")[0], "ldm"), cpu).denoiser
        else:
            bad = tasks_ldm.build_denoiser(ckpt.meta).eval()
            bad.load_state_dict(load_file(str(Path(run) / f"snap_{int(name):06d}.safetensors")))
        for w in weights:
            fn = guided(ldm.denoiser, null, w, guide=bad)
            g = torch.Generator().manual_seed(0)
            t0 = time.perf_counter()
            samples = []
            for i in range(0, n, 500):
                noise = torch.randn((min(500, n - i), *ldm.latent_shape), generator=g)
                samples.append(ldm.decode(sample(fn, noise, ldm.schedule, d.sampler, d.steps, d.eta, generator=g)))
            samples = torch.cat(samples)
            ms = (time.perf_counter() - t0) / n * 1000
            figures, _ = scores(model, samples, test_feats)
            row = {"bench": "autoguidance", "ldm": run, "guide": name, "w": w, "sampler": f"{d.sampler}-{d.steps}", "images": n,
                   **figures, "ms_per_image": round(ms, 1),
                   "date": time.strftime("%Y-%m-%d %H:%M")}
            print(json.dumps(row), flush=True)
            with open(HERE / "results.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("train")
    t.add_argument("recipe")
    t.add_argument("--out", default=str(HERE / "runs" / "snapshots"))
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a recipe override, as vd's --set")
    j = sub.add_parser("judge")
    j.add_argument("run")
    j.add_argument("--guides", default="500,1000,2000")
    j.add_argument("--weights", default="1,2,3")
    j.add_argument("--n", type=int, default=500)
    args = parser.parse_args()
    if args.what == "train":
        train(args.recipe, args.out, args.set)
    else:
        judge_guides(args.run, args.guides.split(","), [float(w) for w in args.weights.split(",")], args.n)


if __name__ == "__main__":
    sys.exit(main())
