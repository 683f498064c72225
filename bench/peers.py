"""vd against its peers at equal size, timed interleaved in one process (issues 9 and 26).

    pip install -e ".[bench]"          # diffusers and timm: this script's, never vdcli's
    python bench/peers.py                                   # every case, eager and compiled, both optimisers
    python bench/peers.py --cases unet-sample --modes eager --rounds 1 --no-record   # the cheapest check

Cases, each at the size of a shipped recipe and with the same batch for both sides:

- ``vit-train``: a training step (forward, cross-entropy with label smoothing, backward, gradient
  clipping, AdamW) of ``recipes/mnist_vit.yaml``'s ViT against timm's ``VisionTransformer``;
- ``vae-train``: the same for ``recipes/mnist_vae.yaml``'s autoencoder (squared error summed per
  image + 1e-4 KL) against diffusers' ``AutoencoderKL`` in the config whose parameter count is
  nearest vd's (``PEER_VAE_WIDTHS``; the same-widths config is 2.55x vd's size: ``vae-train-wide``,
  not in the default cases);
- ``unet-train``: the same for ``recipes/mnist_latent.yaml``'s U-Net (v-prediction loss on 4x8x8
  latents) against diffusers' ``UNet2DModel`` with its ``DDPMScheduler``'s noising and velocity;
- ``unet-sample``: DDIM-50, η = 0, classifier-free guidance w = 3 in one batched call of 2B,
  ``diffusion.sample`` against the same loop over diffusers' ``DDIMScheduler``.

Every case runs in each ``--modes``: ``eager`` (both sides eager) and ``compiled`` (both sides
through ``device.prepare(compiled=True)`` and ``device.compiled``: the same torch.compile settings,
channels_last and inductor's C++ wrapper, for vd and the peer). Every training case runs with each
``--optimisers``: ``shipped`` (each side's optimiser as its training code ships it: vd's trainer
fuses AdamW and clips in multi-tensor calls, diffusers' and timm's scripts take torch's defaults,
on the CPU a loop over the parameters) and ``same`` (``trainer.adamw`` and ``trainer.clip_gradients``
on both sides). The target of issue 26 is read from ``compiled`` with ``same``: a lead the peer
could equally take (compile, a fused optimiser) is not a lead.

Every round times vd and the peer back to back, alternating which goes first (training: one step
each; sampling: the two loops advanced a step of each in turn), so that the other jobs on this
shared machine slow both alike. Reported per run: the median times, and the median, quartiles
and extremes of the per-pair ratios peer time / vd time (above 1: vd is faster). The FLOP/s
columns count the matmul, convolution and attention FLOPs of each side's own work
(``torch.utils.flop_counter``) per second, as a fraction of the fp32 matmul peak measured just
before the run, which is recorded beside it with the load average. A run whose matmul peak is
under ``MIN_PEAK_SHARE`` of the best peak recorded on this machine that day ran on a loaded
machine: it is printed but not recorded. Rows go to bench/results.jsonl (``common.record``); the
last lines printed are a verdict table against the target.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from common import RESULTS, ROOT, record
from torch.utils.flop_counter import FlopCounterMode

from vdcli.conditioning import Cond, guided
from vdcli.device import compiled, prepare
from vdcli.diffusion import NoiseSchedule, diffusion_loss, sample
from vdcli.models.unet import UNet, UNetConfig
from vdcli.models.vae import AutoencoderKL, VAEConfig, vae_loss
from vdcli.models.vit import ViT
from vdcli.recipe import load_recipe
from vdcli.trainer import adamw, clip_gradients

BATCH = 128
CPU = torch.device("cpu")
MODES = ("eager", "compiled")
OPTIMISERS = ("shipped", "same")
TARGET = 1.25  # issue 9's target, read on compiled + same (issue 26)
MIN_PEAK_SHARE = 0.8  # of the day's best matmul peak: below it the machine was loaded, and the run is not recorded
# diffusers' AutoencoderKL nearest vd's 253,817 parameters with vd's latent (4 x 8 x 8 from 32 x 32: three
# levels) and blocks per level: 253,841 (+0.01%). The same widths as vd (16, 32, 64) give 647,705 (2.55x).
PEER_VAE_WIDTHS = (16, 16, 40)


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def ready(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """The network as a side runs it: eager as built, or compiled as vd's trainer compiles (for both sides)."""
    if mode == "eager":
        return model
    return compiled(prepare(model, CPU, compiled=True))  # channels_last, then torch.compile with the C++ wrapper


def train_step(model, loss_of, lr: float, mode: str, fused: bool):
    """One optimiser step: zero_grad, loss, backward, clip to 1, AdamW.

    ``fused``: as vd's trainer runs it (``trainer.adamw``: fused; ``trainer.clip_gradients``:
    multi-tensor); else as diffusers' and timm's example training scripts do, with torch's
    defaults (on the CPU, a Python loop over the parameters for both).
    """
    if fused:
        opt = adamw(model, lr, 0.05)
        clip = lambda: clip_gradients(model, 1.0)  # noqa: E731
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=lr)
        clip = lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # noqa: E731
    net = ready(model, mode)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_of(net)
        loss.backward()
        clip()
        opt.step()
        return loss

    return step


def training_case(vd, vd_loss, peer, peer_loss, lr: float, mode: str, optimiser: str, reps: int):
    """(vd, its step, peer, its step, reps): with ``shipped`` each side's own optimiser, with ``same`` vd's on both."""
    return (vd, train_step(vd, vd_loss, lr, mode, fused=True),
            peer, train_step(peer, peer_loss, lr, mode, fused=optimiser == "same"), reps)


# --- the cases: (vd model, vd step, peer model, peer step, repetitions of the step per timing) ---


def vit_case(mode: str, optimiser: str):
    from timm.models.vision_transformer import VisionTransformer

    recipe = load_recipe(ROOT / "recipes" / "mnist_vit.yaml", "vit")
    m = recipe.model
    vd = ViT(m, 28, 1, 10)
    peer = VisionTransformer(img_size=28, patch_size=m.patch_size, in_chans=1, num_classes=10, embed_dim=m.dim,
                             depth=m.depth, num_heads=m.heads, mlp_ratio=m.mlp_ratio, class_token=True, global_pool="token")
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(BATCH, 1, 28, 28, generator=g) * 2 - 1, torch.randint(0, 10, (BATCH,), generator=g)
    loss = lambda net: F.cross_entropy(net(x), y, label_smoothing=0.1)  # noqa: E731
    return training_case(vd, loss, peer, loss, 2e-3, mode, optimiser, 4)


def vae_case(mode: str, optimiser: str, widths: tuple[int, ...] | None = PEER_VAE_WIDTHS):
    from diffusers import AutoencoderKL as PeerVAE

    recipe = load_recipe(ROOT / "recipes" / "mnist_vae.yaml", "vae")
    cfg: VAEConfig = recipe.model
    vd = AutoencoderKL(cfg, 32, 1)
    widths = tuple(cfg.widths()) if widths is None else widths
    # diffusers' encoder and decoder also have a middle of two residual blocks (attention between
    # them switched off here) and its decoder one block more per level: at vd's widths it is the
    # larger network, so the default case narrows it to vd's parameter count (PEER_VAE_WIDTHS).
    peer = PeerVAE(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * len(widths),
                   up_block_types=("UpDecoderBlock2D",) * len(widths), block_out_channels=widths,
                   layers_per_block=cfg.blocks_per_level, latent_channels=cfg.latent_channels, norm_num_groups=8,
                   sample_size=32, use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=False)
    x = torch.rand(BATCH, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def vd_loss(net):
        recon, mean, logvar = net(x)
        return vae_loss(recon, x, mean, logvar, 1e-4)[0]

    def peer_loss(net):
        posterior = net.encode(x).latent_dist
        recon = net.decode(posterior.sample()).sample
        kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).flatten(1).sum(1).mean()
        return (recon - x).pow(2).flatten(1).sum(1).mean() + 1e-4 * kl

    return training_case(vd, vd_loss, peer, peer_loss, 2e-3, mode, optimiser, 2)


def unet_pair():
    from diffusers import UNet2DModel

    recipe = load_recipe(ROOT / "recipes" / "mnist_latent.yaml", "ldm")
    cfg: UNetConfig = UNetConfig(**recipe.model.model_dump(exclude={"arch"}))
    vd = UNet(cfg, 8, 4, 10)
    widths = [cfg.channels * k for k in cfg.channel_mult]
    attended = cfg.attended_levels()
    # Same widths, blocks per level, attention levels, heads (head width = width / heads), AdaGN
    # ("scale_shift") time conditioning, 32 groups, and a class embedding with the null class.
    peer = UNet2DModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=tuple(widths),
                       layers_per_block=cfg.blocks_per_level,
                       down_block_types=tuple("AttnDownBlock2D" if i in attended else "DownBlock2D" for i in range(len(widths))),
                       up_block_types=tuple("AttnUpBlock2D" if i in attended else "UpBlock2D" for i in reversed(range(len(widths)))),
                       attention_head_dim=widths[-1] // cfg.heads, norm_num_groups=32,
                       resnet_time_scale_shift="scale_shift", num_class_embeds=11)
    return vd, peer, recipe


def unet_train_case(mode: str, optimiser: str):
    from diffusers import DDPMScheduler

    vd, peer, recipe = unet_pair()
    schedule = NoiseSchedule.from_config(recipe.diffusion)
    ddpm = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="v_prediction")
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(BATCH, 4, 8, 8, generator=g), torch.randint(0, 11, (BATCH,), generator=g)

    def vd_loss(net):
        return diffusion_loss(lambda x, t: net(x, t, Cond(labels=y)), z, schedule)

    def peer_loss(net):
        t = torch.randint(0, 1000, (BATCH,))
        noise = torch.randn_like(z)
        out = net(ddpm.add_noise(z, noise, t), t, class_labels=y).sample
        return F.mse_loss(out, ddpm.get_velocity(z, noise, t))

    return training_case(vd, vd_loss, peer, peer_loss, 1e-3, mode, optimiser, 4)


def unet_sample_case(mode: str, optimiser: str):
    from diffusers import DDIMScheduler

    vd, peer, recipe = unet_pair()
    vd.eval().requires_grad_(False)
    peer.eval().requires_grad_(False)
    vd_net, peer_net = ready(vd, mode), ready(peer, mode)
    schedule = NoiseSchedule.from_config(recipe.diffusion)
    ddim = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="v_prediction",
                         clip_sample=False, set_alpha_to_one=True, timestep_spacing="leading")
    g = torch.Generator().manual_seed(0)
    noise, y = torch.randn(BATCH, 4, 8, 8, generator=g), torch.arange(BATCH) % 10
    w, n_steps = 3.0, 50
    cond, null = Cond(labels=y), Cond(labels=torch.full_like(y, 10))

    def vd_sample():
        return sample(guided(vd_net, cond, w, reference=null), noise, schedule, "ddim", n_steps)

    @torch.no_grad()
    def peer_steps():  # the loop of diffusers' pipelines, with guidance batched as vd's; yields after each step
        ddim.set_timesteps(n_steps)
        x, labels = noise, torch.cat([y, torch.full_like(y, 10)])
        for t in ddim.timesteps:
            cond, uncond = peer_net(torch.cat([x, x]), t, class_labels=labels).sample.chunk(2)
            x = ddim.step(uncond + w * (cond - uncond), t, x).prev_sample
            yield x

    def peer_sample():
        for x in peer_steps():
            pass
        return x

    def paired() -> tuple[float, float]:
        """Both samplers at once, a step of one, then a step of the other: (vd seconds, peer seconds).

        The machine's other jobs come and go over seconds; interleaving at the step (about 0.5 s)
        rather than at the whole run (about 30 s) lets both see the same load.
        """
        peer_run, spent, mark = peer_steps(), {"vd": 0.0, "peer": 0.0}, [time.perf_counter()]
        model_fn = guided(vd_net, cond, w, reference=null)

        def interleaved(x, t):  # vd's model_fn: first one step of the peer, then vd's own network call
            now = time.perf_counter()
            spent["vd"] += now - mark[0]  # vd's previous update and everything since
            next(peer_run)
            mark[0] = time.perf_counter()
            spent["peer"] += mark[0] - now
            return model_fn(x, t)

        sample(interleaved, noise, schedule, "ddim", n_steps)
        spent["vd"] += time.perf_counter() - mark[0]
        return spent["vd"], spent["peer"]

    vd_sample.paired = paired
    return vd, vd_sample, peer, peer_sample, 1


CASES = {"vit-train": vit_case, "vae-train": vae_case, "unet-train": unet_train_case, "unet-sample": unet_sample_case,
         "vae-train-wide": lambda mode, optimiser: vae_case(mode, optimiser, widths=None)}
DEFAULT_CASES = ("vit-train", "vae-train", "unet-train", "unet-sample")
TRAINING = {"vit-train", "vae-train", "unet-train", "vae-train-wide"}  # sampling has no optimiser: run once per mode


def matmul_peak(n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of this machine's fp32 matmul now: the best of a few n x n products."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_time(lambda: a @ b) for _ in range(reps))
    return 2 * n**3 / best


def best_peak_today(path=RESULTS) -> float:
    """The highest matmul peak (GFLOP/s) a recorded peers row of today measured on this machine; 0 if none."""
    today, best = time.strftime("%Y-%m-%d"), 0.0
    if path.is_file():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row.get("bench") == "peers" and str(row.get("date", "")).startswith(today):
                best = max(best, float(row.get("matmul_peak_gflops", 0.0)))
    return best


def _time(fn, reps: int = 1) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def spread(ratios: list[float]) -> dict:
    """Median, quartiles and extremes of the per-pair ratios."""
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
    return {"ratio": round(median, 3), "ratio_q1": round(q1, 3), "ratio_q3": round(q3, 3),
            "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3)}


def run(name: str, mode: str, optimiser: str, rounds: int) -> dict:
    """One case in one mode with one optimiser choice, interleaved: the row to record."""
    torch.manual_seed(0)
    torch._dynamo.reset()  # each run compiles afresh: a network seen at a second batch would recompile for any shape, slower
    peak = matmul_peak()
    vd, vd_fn, peer, peer_fn, reps = CASES[name](mode, optimiser)
    first = _time(vd_fn)  # the warm-up, and compiled the compile: what a user running once pays too
    peer_fn()
    vd_flops, peer_flops = flops(vd_fn), flops(peer_fn)  # one step (training) or one whole sampling run
    times = {"vd": [], "peer": []}
    if hasattr(vd_fn, "paired"):  # sampling: interleaved step by step within each round
        for _ in range(rounds):
            for who, seconds in zip(("vd", "peer"), vd_fn.paired()):
                times[who].append(seconds)
    else:  # training: one step of each, alternating which goes first, reps times per round
        for r in range(rounds * reps):
            order = [("vd", vd_fn), ("peer", peer_fn)]
            for who, fn in order if r % 2 == 0 else order[::-1]:
                times[who].append(_time(fn))
    vd_s, peer_s = statistics.median(times["vd"]), statistics.median(times["peer"])
    ratios = [p / v for v, p in zip(times["vd"], times["peer"])]  # of the back-to-back pairs
    return {"bench": "peers", "case": name, "mode": mode, "optimiser": optimiser if name in TRAINING else None,
            "compile": mode == "compiled", "params_vd": params(vd), "params_peer": params(peer),
            "vd_ms": round(vd_s * 1e3, 1), "peer_ms": round(peer_s * 1e3, 1), **spread(ratios),
            "vd_flops_fraction": round(vd_flops / vd_s / peak, 4), "peer_flops_fraction": round(peer_flops / peer_s / peak, 4),
            "vd_first_call_s": round(first, 1), "matmul_peak_gflops": round(peak / 1e9, 1), "rounds": rounds,
            "vd_ms_all": [round(t * 1e3, 1) for t in times["vd"]], "peer_ms_all": [round(t * 1e3, 1) for t in times["peer"]]}


def verdict(rows: list[dict]) -> None:
    """The plain table: every run, and whether the target (compiled, same optimiser) is met."""
    print(f"\nverdict: target >= {TARGET}x the peer, both compiled, the same optimiser")
    print(f"{'case':<14} {'mode':<9} {'optimiser':<9} {'peer/vd':>8} {'quartiles':>13} {'params vd/peer':>19}  verdict")
    for r in rows:
        counts = r["mode"] == "compiled" and r["optimiser"] in (None, "same")  # sampling has no optimiser
        state = ("met" if r["ratio"] >= TARGET else "missed") if counts else "(not the target's setting)"
        print(f"{r['case']:<14} {r['mode']:<9} {r['optimiser'] or '-':<9} {r['ratio']:>7.2f}x "
              f"{r['ratio_q1']:>6.2f}-{r['ratio_q3']:<6.2f} {r['params_vd']:>9,}/{r['params_peer']:<9,}  {state}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES), help="comma-separated: " + ", ".join(CASES))
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: eager (both sides), compiled (both sides)")
    parser.add_argument("--optimisers", default=",".join(OPTIMISERS),
                        help="comma-separated: shipped (each side's own), same (vd's fused AdamW on both); training cases only")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tag", default="", help="a label for the rows in results.jsonl (before/after ...)")
    parser.add_argument("--no-record", action="store_true", help="print only; append nothing to results.jsonl")
    args = parser.parse_args()
    command = "python bench/peers.py " + " ".join(sys.argv[1:])
    best = best_peak_today()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; best matmul peak recorded today: "
          f"{best:.1f} GFLOP/s" if best else "no peers run recorded today")
    print(f"{'case':<14} {'mode':<9} {'optimiser':<9} {'vd ms':>9} {'peer ms':>9} {'peer/vd':>8} {'[q1-q3]':>13} "
          f"{'vd FLOP/s':>10} {'peer FLOP/s':>11} {'peak GFLOP/s':>12}")
    rows = []
    for name in args.cases.split(","):
        for mode in args.modes.split(","):
            for optimiser in args.optimisers.split(",") if name in TRAINING else ["-"]:
                row = {**run(name, mode, optimiser, args.rounds), "tag": args.tag, "command": command}
                rows.append(row)
                print(f"{name:<14} {mode:<9} {optimiser:<9} {row['vd_ms']:>9.1f} {row['peer_ms']:>9.1f} {row['ratio']:>7.2f}x "
                      f"{row['ratio_q1']:>6.2f}-{row['ratio_q3']:<6.2f} {row['vd_flops_fraction']:>10.1%} "
                      f"{row['peer_flops_fraction']:>11.1%} {row['matmul_peak_gflops']:>12.1f}", flush=True)
                best = max(best, best_peak_today(), row["matmul_peak_gflops"])  # the best seen today, this run's included
                if args.no_record:
                    continue
                if best and row["matmul_peak_gflops"] < MIN_PEAK_SHARE * best:
                    print(f"  not recorded: matmul peak {row['matmul_peak_gflops']:.1f} GFLOP/s is under "
                          f"{MIN_PEAK_SHARE:.0%} of today's best {best:.1f}: the machine is loaded")
                    continue
                record(row)
    verdict(rows)


if __name__ == "__main__":
    main()
