"""Which sampler should a user pick at which budget? Every sampler at 5, 10 and 20 steps on a trained
MNIST LDM, judged as bench/ldm_quality.py judges (bench/classifier.py's CNN, which no vd model shares).

    VD_DATA_ROOT=../shared/datasets python bench/samplers.py --ldm bench/runs/mnist_latent/latest

A setting is SAMPLER or SAMPLER:SPACING (vdcli.diffusion.SAMPLERS, SPACINGS). The default is
every sampler at its own spacing (DDIM and DDPM leading, DPM-Solver++(2M) linspace, the σ-space
samplers trailing) and the two that users know with Karras σ's, "DPM++ 2M Karras"
(dpmpp-2m:karras) and "DPM++ 2M SDE Karras" (dpmpp-2m-sde:karras). DDIM runs with η = 0, DDPM
(= η 1) and the ancestral samplers with their own noise; all with the recipe's guidance. Each
setting and step count draws ``per_class`` images of every digit from seed 0, in batches of 500,
and appends one JSON line to bench/results.jsonl (``--results``) with
- evaluations: network calls per image (Heun: 2S − 1; classifier-free guidance batches the
  conditional and unconditional halves into one call, so it does not double the count);
- agreement: the fraction the judge classifies as the asked digit (not for unconditional models);
- confident, texture, histogram, frechet_distance: ``ldm_quality.scores`` (FD against the 10,000
  MNIST test digits in the judge's 64-d features; it depends on the count, so compare equal counts);
- ms per image on this machine, sampling only.
``--grids`` also writes bench/samples_samplers_<setting>-<steps>.png (ten of each digit).
"""

import argparse
import json
import os
import time
from pathlib import Path

import torch
from classifier import judge, load_judge
from ldm_quality import scores

from vdcli.checkpoint import load_checkpoint
from vdcli.data import load_split
from vdcli.diffusion import SAMPLERS, SPACINGS, DEFAULT_SPACING, sample
from vdcli.recipe import DataConfig
from vdcli.runs import find_checkpoint
from vdcli.tasks.ldm import load_ldm, save_class_grid

HERE = Path(os.path.relpath(Path(__file__).parent))  # relative, so that the recorded command reads as typed
DEFAULT_SETTINGS = ",".join([*SAMPLERS, "dpmpp-2m:karras", "dpmpp-2m-sde:karras"])


def parse_setting(name: str) -> tuple[str, str]:
    sampler, _, spacing = name.partition(":")
    if sampler not in SAMPLERS or (spacing and spacing not in SPACINGS):
        raise SystemExit(f"setting {name!r}: expected SAMPLER[:SPACING], SAMPLER one of {', '.join(SAMPLERS)}"
                         f" and SPACING one of {', '.join(SPACINGS)}")
    return sampler, spacing or DEFAULT_SPACING.get(sampler, "trailing")


@torch.no_grad()
def generate(ldm, labels, sampler, steps, spacing, guidance, generator) -> tuple[torch.Tensor, int]:
    """uint8 images for ``labels`` and the network calls the run made; the noise is drawn as
    vdcli.tasks.ldm.generate draws it, so DDIM rows equal ``vd sample``'s images."""
    noise = torch.randn((len(labels), *ldm.latent_shape), generator=generator).to(ldm.device)
    model_fn, calls = ldm.model_fn(labels, guidance), [0]

    def counted(x, t):
        calls[0] += 1
        return model_fn(x, t)

    eta = 1.0 if sampler == "ddpm" else 0.0
    z = sample(counted, noise, ldm.schedule, sampler, steps, eta, generator=generator, spacing=spacing)
    return ldm.decode(z), calls[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ldm", required=True)
    parser.add_argument("--settings", default=DEFAULT_SETTINGS)
    parser.add_argument("--steps", default="5,10,20")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--guidance", type=float, default=None, help="default: the recipe's")
    parser.add_argument("--tag", default="", help="a word for the rows, e.g. the model's step count")
    parser.add_argument("--results", default=str(HERE / "results.jsonl"))
    parser.add_argument("--grids", action="store_true")
    args = parser.parse_args()

    model = load_judge()  # trains it first (about a minute) when bench/runs has none: before gradients go off
    torch.set_grad_enabled(False)
    ldm = load_ldm(load_checkpoint(find_checkpoint(args.ldm, "ldm")[0], "ldm"), torch.device("cpu"))
    test = load_split(DataConfig(name="mnist", image_size=28), "test", os.environ.get("VD_DATA_ROOT"))
    _, test_feats = judge(model, test.images)
    classes = list(range(len(ldm.classes)))
    asked = torch.tensor(classes).repeat_interleave(args.per_class)
    uncond = ldm.conditioning == "none"
    labels = torch.full_like(asked, ldm.null_class) if uncond else asked
    guidance = ldm.defaults.guidance if args.guidance is None else args.guidance
    settings = [parse_setting(name) for name in args.settings.split(",")]

    for sampler, spacing in settings:
        for steps in (int(s) for s in args.steps.split(",")):
            g = torch.Generator().manual_seed(0)
            t0, samples, evaluations = time.perf_counter(), [], 0
            for i in range(0, len(labels), 500):
                images, evaluations = generate(ldm, labels[i : i + 500], sampler, steps, spacing, guidance, g)
                samples.append(images)
            samples = torch.cat(samples)
            ms = (time.perf_counter() - t0) / len(samples) * 1000
            figures, pred = scores(model, samples, test_feats)
            row = {
                "bench": "samplers",
                "tag": args.tag,
                "sampler": sampler, "spacing": spacing, "steps": steps, "evaluations": evaluations,
                "guidance": guidance,
                "images": len(samples),
                "agreement": None if uncond else round((pred == asked).float().mean().item(), 4),
                **figures,
                "ms_per_image": round(ms, 1),
                "ldm": str(args.ldm),
                "date": time.strftime("%Y-%m-%d %H:%M"),
            }
            if args.grids:
                shown = torch.cat([samples[c * args.per_class : c * args.per_class + 10] for c in classes])
                save_class_grid(shown, ldm.classes, min(10, args.per_class), HERE / f"samples_samplers_{sampler}-{spacing}-{steps}.png")
            print(json.dumps(row), flush=True)
            with open(args.results, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
