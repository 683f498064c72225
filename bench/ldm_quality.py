"""How good are an LDM's samples? Judged by bench/classifier.py's CNN, which no vd model shares.

    VD_DATA_ROOT=../shared/datasets python bench/ldm_quality.py --ldm bench/runs/mnist_latent/latest \
        --settings ddim-50-0,ddim-50-0.5,dpmpp-2m-20,uncond --per-class 100

A setting is SAMPLER-STEPS[-ETA][-wGUIDANCE], e.g. ddim-50-0 (DDIM, 50 steps, η = 0, the recipe's
guidance), ddim-50-0.5-w1, dpmpp-2m-20, ddpm-1000; or ``uncond`` (the null label with the
recipe's sampler and its autoguidance, when the model kept a guide), ``uncond-w2`` (the same at
w = 2), ``uncond-w1`` (the unconditional model alone), ``uncond-dpmpp-2m-20`` (another sampler,
the model alone) or ``uncond-dpmpp-2m-20-w3`` (another sampler, autoguided at 3). Each draws ``per_class`` images of every digit (for
uncond: 10 × per_class images) from a fixed seed, in batches of 500, and reports
- agreement: the fraction the judge classifies as the asked digit (not for uncond);
- confident: the fraction classified with probability ≥ 0.9, whatever the class;
- texture: the fraction the judge gives no class probability ≥ 0.5 — not a digit at all;
- histogram: the judge's classes, in % (for uncond: every digit should be near 10%);
- FD: the Fréchet distance between the judge's 64-d features of the samples and of the 10,000
  MNIST test digits (an FID with the judge as feature network; it depends on the count, so
  compare rows of equal count);
- ms per image on this machine, sampling only (the judge's time excluded).
Each setting appends one JSON line to bench/results.jsonl and writes bench/runs/samples_<setting>.png
(the first ten images of each digit, one row per digit; for uncond, ten images from each batch of
per_class, rows named by the samples' numbers: an unconditional row is not a digit).
"""

import argparse
import json
import re
import time

import torch
from common import CONFIDENT, RUNS, data_root, judge, load_judge, record

from vdcli.checkpoint import load_checkpoint
from vdcli.data import load_split
from vdcli.recipe import DataConfig
from vdcli.runs import find_checkpoint
from vdcli.tasks.ldm import generate, load_ldm, save_class_grid


def sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix (negative eigenvalues: rounding, set to 0)."""
    values, vectors = torch.linalg.eigh(m)
    return vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2 (Σ_a^½ Σ_b Σ_a^½)^½) of the Gaussians fitted to features [N, D] and [M, D].

    The Fréchet (2-Wasserstein) distance between two Gaussians (Dowson & Landau 1982), as FID uses
    it (Heusel et al. 2017); the symmetric form of the cross term, equal to tr((Σ_a Σ_b)^½).
    """
    a, b = a.double(), b.double()
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = torch.cov(a.T), torch.cov(b.T)
    root = sqrtm_psd(s1)
    cross = sqrtm_psd(root @ s2 @ root)
    return ((mu1 - mu2).pow(2).sum() + torch.trace(s1 + s2 - 2 * cross)).item()


def scores(model, samples: torch.Tensor, test_feats: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """The judge's figures of uint8 samples (confident, texture, histogram, FD; see above) and its classes."""
    return figures(*judge(model, samples), test_feats)


def figures(probs: torch.Tensor, feats: torch.Tensor, test_feats: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """``scores`` from the judge's class probabilities [N, 10] and features [N, D] of the samples."""
    top, pred = probs.max(1)
    return {
        "confident": round((top >= CONFIDENT).float().mean().item(), 4),
        "texture": round((top < 0.5).float().mean().item(), 4),
        "histogram": [round(100 * v, 1) for v in (torch.bincount(pred, minlength=10).float() / len(pred)).tolist()],
        "frechet_distance": round(frechet_distance(feats, test_feats), 3),
    }, pred


def parse_setting(name: str, ldm) -> dict:
    m = re.fullmatch(r"uncond(?:-w([\d.]+))?", name)
    if m:  # the recipe's autoguidance (when the model kept a guide), or uncond-wW: autoguidance at W (1: none)
        d = ldm.defaults
        w = ldm.autoguidance(None if m.group(1) is None else float(m.group(1)))
        return {"sampler": d.sampler, "steps": d.steps, "eta": d.eta, "guidance": w, "uncond": True}
    # [uncond-]SAMPLER-STEPS[-ETA][-wW]: with uncond-, the null label autoguided at W (default 1: none)
    m = re.fullmatch(r"(uncond-)?(ddim|ddpm|dpmpp-2m)-(\d+)(?:-([\d.]+))?(?:-w([\d.]+))?", name)
    if not m:
        raise SystemExit(f"setting {name!r}: expected [uncond-]SAMPLER-STEPS[-ETA][-wGUIDANCE] or uncond[-wGUIDANCE]")
    uncond, sampler, steps, eta, w = m.groups()
    if uncond:
        guidance = ldm.autoguidance(float(w)) if w else 1.0
    else:
        guidance = float(w) if w else ldm.defaults.guidance
    return {"sampler": sampler, "steps": int(steps), "eta": float(eta) if eta else (1.0 if sampler == "ddpm" else 0.0),
            "guidance": guidance, "uncond": bool(uncond)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ldm", required=True)
    parser.add_argument("--settings", default="ddim-50-0,uncond")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--tag", default="", help="a word for the rows and file names, e.g. before/after")
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    cpu = torch.device("cpu")
    ldm = load_ldm(load_checkpoint(find_checkpoint(args.ldm, "ldm")[0], "ldm"), cpu)
    model = load_judge()
    test = load_split(DataConfig(name="mnist", image_size=28), "test", data_root())
    _, test_feats = judge(model, test.images)
    classes = list(range(len(ldm.classes)))

    for name in args.settings.split(","):
        s = parse_setting(name, ldm)
        labels = torch.tensor(classes).repeat_interleave(args.per_class)
        asked = labels.clone()
        if s["uncond"] or ldm.conditioning.is_null([0]):  # a model without classes: every sample is unconditional
            labels = torch.full_like(labels, ldm.null_class)
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        samples = torch.cat([generate(ldm, labels[i : i + 500], sampler=s["sampler"], steps=s["steps"], eta=s["eta"],
                                      guidance=s["guidance"], generator=g)[0] for i in range(0, len(labels), 500)])
        ms = (time.perf_counter() - t0) / len(samples) * 1000
        figures, pred = scores(model, samples, test_feats)
        uncond = s["uncond"] or ldm.conditioning.is_null([0])
        row = {
            "bench": "ldm_quality",
            "tag": args.tag,
            "setting": name,
            "sampler": s["sampler"], "steps": s["steps"], "eta": s["eta"], "guidance": s["guidance"],
            "images": len(samples),
            "agreement": None if uncond else round((pred == asked).float().mean().item(), 4),
            **figures,
            "ms_per_image": round(ms, 1),
            "ldm": str(args.ldm),
        }
        shown = torch.cat([samples[c * args.per_class : c * args.per_class + 10] for c in classes])
        rows = [f"{c * args.per_class + 1}-{c * args.per_class + 10}" for c in classes] if uncond else ldm.classes
        suffix = f"_{args.tag}" if args.tag else ""
        save_class_grid(shown, rows, 10, RUNS / f"samples_{name}{suffix}.png")
        print(json.dumps(record(row)), flush=True)


if __name__ == "__main__":
    main()
