"""Where do deterministic-sampler failures come from? Measurements on one trained LDM run.

    VD_DATA_ROOT=../shared/datasets python bench/experiments/ldm_diagnose.py --run bench/runs/mnist_latent/latest

Prints (and appends to bench/results.jsonl):
1. latents: the cached training posteriors under one global scale factor (what the LDM used
   before LatentNorm) and per element: per-channel mean/std, the range of per-position std,
   the posterior σ, in the units the denoiser sees;
2. decoder: training latents (posterior means) plus Gaussian errors of std δ in the denoiser's
   units, decoded and judged: how many stay confident digits, under each normalisation;
3. trajectory: DDIM-50 at η = 0 with the recipe's guidance from 1000 noises (100 per digit);
   for the samples the judge calls texture (max probability < 0.5) and for the rest, x̂_0's
   excursion in the quiet cells (the quarter of latent elements with the smallest training std)
   in units of their training std, at several steps;
4. guidance: for the same runs, the norms of ε̂_cond − ε̂_uncond and of x̂_0 at a few steps.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/: common, classifier, ldm_quality, peers
import torch  # noqa: E402
from common import judge, load_judge, record  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from vdcli.checkpoint import load_checkpoint  # noqa: E402
from vdcli.diffusion import predict_eps, sample  # noqa: E402
from vdcli.models.vae import LatentNorm  # noqa: E402
from vdcli.runs import find_checkpoint  # noqa: E402
from vdcli.tasks.ldm import load_ldm  # noqa: E402


def stats(z: torch.Tensor) -> dict:
    """Statistics of latents [N, c, h, w] as the denoiser would see them."""
    per_channel = z.transpose(0, 1).flatten(1)
    per_position = z.std(0)  # (c, h, w)
    return {
        "overall_std": round(z.std().item(), 3),
        "channel_mean": [round(v, 2) for v in per_channel.mean(1).tolist()],
        "channel_std": [round(v, 2) for v in per_channel.std(1).tolist()],
        "position_std_min": round(per_position.min().item(), 3),
        "position_std_median": round(per_position.median().item(), 3),
        "position_std_max": round(per_position.max().item(), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", required=True, help="an LDM run folder (with latents.safetensors)")
    parser.add_argument("--per-class", type=int, default=100)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    run = Path(args.run)
    ckpt = load_checkpoint(find_checkpoint(str(run), "ldm")[0], "ldm")
    ldm = load_ldm(ckpt, torch.device("cpu"))
    model = load_judge()
    cache = load_file(str(run / "latents.safetensors"))
    mean, logvar = cache["mean"], cache["logvar"]
    g = torch.Generator().manual_seed(0)
    x = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=g)  # posterior samples, VAE units
    scale = 1.0 / x.std().item()
    norms = {"global": LatentNorm.global_scale(tuple(mean.shape[1:]), scale), "per_element": LatentNorm.fit(mean, logvar)}
    report = {"bench": "ldm_diagnose", "run": str(run)}

    # 1. latent statistics
    for name, norm in norms.items():
        report[f"latents_{name}"] = stats(norm(x))
        report[f"latents_{name}"]["posterior_sigma_median"] = round(((0.5 * logvar).exp() / norm.std).median().item(), 4)

    # 2. the decoder's tolerance of a denoiser-sized error
    probe = mean[:1000]
    for name, norm in norms.items():
        z = norm(probe)
        for delta in (0.0, 0.1, 0.2, 0.4):
            noisy = z + delta * torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
            images = torch.cat([ldm.vae.decode(norm.inverse(noisy[i : i + 500])) for i in range(0, len(noisy), 500)])
            probs, _ = judge(model, ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))
            top = probs.max(1).values
            report[f"decoder_{name}_delta{delta}"] = {"confident": round((top >= 0.9).float().mean().item(), 3),
                                                      "texture": round((top < 0.5).float().mean().item(), 3)}

    # 3 and 4. the trajectory of DDIM-50 at eta 0 with the checkpoint's own normalisation
    labels = torch.arange(10).repeat_interleave(args.per_class)
    w = ldm.defaults.guidance
    quiet = ldm.norm.std <= ldm.norm.std.flatten().quantile(0.25)  # (c, h, w) bool
    steps_seen, excursion, guide_gap, x0_norm = [], [], [], []
    null = torch.full_like(labels, ldm.null_class)

    def model_fn(xt, t):
        both = ldm.denoiser(torch.cat([xt, xt]), torch.cat([t, t]), torch.cat([labels, null]))
        cond, uncond = both.chunk(2)
        eps_c, eps_u = predict_eps(ldm.schedule, xt, t, cond), predict_eps(ldm.schedule, xt, t, uncond)
        guide_gap.append((eps_c - eps_u).flatten(1).norm(dim=1))
        return uncond + w * (cond - uncond)

    def record(i, t, *rest):
        x0 = rest[-1]
        steps_seen.append(t)
        # x̂_0's distance from the training mean in the quiet cells, in units of their training std
        e = (norms["per_element"](ldm.norm.inverse(x0)) * quiet).flatten(1).pow(2).sum(1) / quiet.sum()
        excursion.append(e.sqrt())
        x0_norm.append(x0.flatten(1).norm(dim=1))

    noise = torch.randn((len(labels), *ldm.latent_shape), generator=torch.Generator().manual_seed(0))
    z = sample(model_fn, noise, ldm.schedule, "ddim", 50, eta=0.0, callback=record)
    images = ldm.decode(z)
    probs, _ = judge(model, images)
    top, pred = probs.max(1)
    texture = top < 0.5
    report["ddim50_eta0"] = {"agreement": round((pred == labels).float().mean().item(), 4),
                             "texture": round(texture.float().mean().item(), 4), "guidance": w}
    rows = {}
    for k in (0, 10, 25, 40, 49):
        ex, gg, xn = excursion[k], guide_gap[k], x0_norm[k]
        rows[f"step{k}_t{steps_seen[k]}"] = {
            "quiet_excursion_texture": round(ex[texture].median().item(), 2) if texture.any() else None,
            "quiet_excursion_digits": round(ex[~texture].median().item(), 2),
            "guidance_gap_texture": round(gg[texture].median().item(), 2) if texture.any() else None,
            "guidance_gap_digits": round(gg[~texture].median().item(), 2),
            "x0_norm_texture": round(xn[texture].median().item(), 2) if texture.any() else None,
            "x0_norm_digits": round(xn[~texture].median().item(), 2),
        }
    report["trajectory"] = rows
    print(json.dumps(record(report), indent=1))


if __name__ == "__main__":
    main()
