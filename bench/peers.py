"""vd against its peers at equal size, timed interleaved in one process (issue 9).

    pip install -e ".[bench]"          # diffusers and timm: this script's, never vdcli's
    python bench/peers.py                                   # every case
    python bench/peers.py --cases unet-sample --rounds 7 --tag after

Cases, each at the size of a shipped recipe and with the same batch for both sides:

- ``vit-train``: a training step (forward, cross-entropy with label smoothing, backward, gradient
  clipping, AdamW) of ``recipes/mnist_vit.yaml``'s ViT against timm's ``VisionTransformer``;
- ``vae-train``: the same for ``recipes/mnist_vae.yaml``'s autoencoder (squared error summed per
  image + 1e-4 KL) against diffusers' ``AutoencoderKL``;
- ``unet-train``: the same for ``recipes/mnist_latent.yaml``'s U-Net (v-prediction loss on 4x8x8
  latents) against diffusers' ``UNet2DModel`` with its ``DDPMScheduler``'s noising and velocity;
- ``unet-sample``: DDIM-50, η = 0, classifier-free guidance w = 3 in one batched call of 2B,
  ``diffusion.sample`` against the same loop over diffusers' ``DDIMScheduler``.

Both sides get the same data and the same step (zero_grad, loss, backward, clip, AdamW); the
networks differ, and so do the optimiser's kernels: each side's as its own training code runs it
(``train_step``: vd's trainer fuses AdamW; diffusers' and timm's scripts take torch's default,
on the CPU a loop over the parameters). For sampling, the scheduler differs. Every round times
vd and the peer back to back, alternating which goes first (training: one step each; sampling:
the two loops advanced a step of each in turn), so that the other jobs on this shared machine slow both alike. Times are medians over the rounds;
the ratio is the median over the rounds of peer time / vd time (above 1: vd is faster). The FLOP/s
columns count the matmul, convolution and attention FLOPs of each side's own work
(``torch.utils.flop_counter``) per second, as a fraction of the fp32 matmul peak measured at the
start of the same run. Rows are appended to bench/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from vdcli.device import compiled, prepare
from vdcli.diffusion import NoiseSchedule, diffusion_loss, guided, sample
from vdcli.models.unet import UNet, UNetConfig
from vdcli.models.vae import AutoencoderKL, VAEConfig, vae_loss
from vdcli.models.vit import ViT
from vdcli.recipe import load_recipe
from vdcli.trainer import adamw, clip_gradients

HERE = Path(os.path.relpath(Path(__file__).parent))
ROOT = HERE.parent
BATCH = 128


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train_step(model, loss_of, lr: float, compile: bool = False, vd: bool = True):
    """One optimiser step: zero_grad, loss, backward, clip to 1, AdamW.

    vd's side takes it as vd's trainer does (``trainer.adamw``: fused; ``trainer.clip_gradients``:
    multi-tensor); the peer's as diffusers' and timm's example training scripts do, with torch's
    defaults (on the CPU, a Python loop over the parameters for both).
    """
    if vd:
        opt = adamw(model, lr, 0.05)
        clip = lambda: clip_gradients(model, 1.0)  # noqa: E731
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=lr)
        clip = lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # noqa: E731
    net = compiled(model) if compile else model  # as vd's trainer compiles

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_of(net)
        loss.backward()
        clip()
        opt.step()
        return loss

    return step


# --- the cases: (vd model, vd step, peer model, peer step, repetitions of the step per timing) ---


def vit_case(compile: bool):
    from timm.models.vision_transformer import VisionTransformer

    recipe = load_recipe(ROOT / "recipes" / "mnist_vit.yaml", "vit")
    m = recipe.model
    vd = ViT(m, 28, 1, 10)
    peer = VisionTransformer(img_size=28, patch_size=m.patch_size, in_chans=1, num_classes=10, embed_dim=m.dim,
                             depth=m.depth, num_heads=m.heads, mlp_ratio=m.mlp_ratio, class_token=True, global_pool="token")
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(BATCH, 1, 28, 28, generator=g) * 2 - 1, torch.randint(0, 10, (BATCH,), generator=g)
    loss = lambda net: F.cross_entropy(net(x), y, label_smoothing=0.1)  # noqa: E731
    return vd, train_step(vd, loss, 2e-3, compile), peer, train_step(peer, loss, 2e-3, vd=False), 4


def vae_case(compile: bool):
    from diffusers import AutoencoderKL as PeerVAE

    recipe = load_recipe(ROOT / "recipes" / "mnist_vae.yaml", "vae")
    cfg: VAEConfig = recipe.model
    vd = prepare(AutoencoderKL(cfg, 32, 1), torch.device("cpu"), compiled=compile)
    widths = cfg.widths()
    # The nearest diffusers config: the same widths, blocks and latent; its encoder and decoder
    # also have a middle of two residual blocks (attention between them switched off here) and
    # its decoder one block more per level, so it is the larger network: see the parameter counts.
    peer = PeerVAE(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * len(widths),
                   up_block_types=("UpDecoderBlock2D",) * len(widths), block_out_channels=tuple(widths),
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

    return vd, train_step(vd, vd_loss, 2e-3, compile), peer, train_step(peer, peer_loss, 2e-3, vd=False), 2


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


def unet_train_case(compile: bool):
    from diffusers import DDPMScheduler

    vd, peer, recipe = unet_pair()
    prepare(vd, torch.device("cpu"), compiled=compile)  # as vd's trainer does: channels_last when compiled
    schedule = NoiseSchedule.from_config(recipe.diffusion)
    ddpm = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="v_prediction")
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(BATCH, 4, 8, 8, generator=g), torch.randint(0, 11, (BATCH,), generator=g)

    def vd_loss(net):
        return diffusion_loss(lambda x, t: net(x, t, y), z, schedule)

    def peer_loss(net):
        t = torch.randint(0, 1000, (BATCH,))
        noise = torch.randn_like(z)
        out = net(ddpm.add_noise(z, noise, t), t, class_labels=y).sample
        return F.mse_loss(out, ddpm.get_velocity(z, noise, t))

    return vd, train_step(vd, vd_loss, 1e-3, compile), peer, train_step(peer, peer_loss, 1e-3, vd=False), 4


def unet_sample_case(compile: bool):
    from diffusers import DDIMScheduler

    vd, peer, recipe = unet_pair()
    prepare(vd, torch.device("cpu"), compiled=compile)
    vd.eval().requires_grad_(False)
    peer.eval().requires_grad_(False)
    schedule = NoiseSchedule.from_config(recipe.diffusion)
    ddim = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="v_prediction",
                         clip_sample=False, set_alpha_to_one=True, timestep_spacing="leading")
    g = torch.Generator().manual_seed(0)
    noise, y = torch.randn(BATCH, 4, 8, 8, generator=g), torch.arange(BATCH) % 10
    w, steps = 3.0, 50
    vd_net = compiled(vd) if compile else vd

    def vd_sample():
        return sample(guided(vd_net, y, w, 10), noise, schedule, "ddim", steps)

    @torch.no_grad()
    def peer_steps():  # the loop of diffusers' pipelines, with guidance batched as vd's; yields after each step
        ddim.set_timesteps(steps)
        x, labels = noise, torch.cat([y, torch.full_like(y, 10)])
        for t in ddim.timesteps:
            cond, uncond = peer(torch.cat([x, x]), t, class_labels=labels).sample.chunk(2)
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
        model_fn = guided(vd_net, y, w, 10)

        def interleaved(x, t):  # vd's model_fn: first one step of the peer, then vd's own network call
            now = time.perf_counter()
            spent["vd"] += now - mark[0]  # vd's previous update and everything since
            next(peer_run)
            mark[0] = time.perf_counter()
            spent["peer"] += mark[0] - now
            return model_fn(x, t)

        sample(interleaved, noise, schedule, "ddim", steps)
        spent["vd"] += time.perf_counter() - mark[0]
        return spent["vd"], spent["peer"]

    vd_sample.paired = paired
    return vd, vd_sample, peer, peer_sample, 1


CASES = {"vit-train": vit_case, "vae-train": vae_case, "unet-train": unet_train_case, "unet-sample": unet_sample_case}


def matmul_peak(n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of this machine's fp32 matmul: the best of a few n x n products."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_time(lambda: a @ b) for _ in range(reps))
    return 2 * n**3 / best


def _time(fn, reps: int = 1) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="torch.compile vd's network (train.compile); the peer stays eager")
    parser.add_argument("--tag", default="", help="a label for the rows in results.jsonl (before/after ...)")
    parser.add_argument("--no-record", action="store_true", help="print only; append nothing to results.jsonl")
    args = parser.parse_args()
    command = "python bench/peers.py " + " ".join(sys.argv[1:])
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    peak = matmul_peak()
    print(f"{machine}; fp32 matmul peak {peak / 1e9:.1f} GFLOP/s")
    print(f"{'case':<12} {'params vd/peer':>19} {'vd ms':>9} {'peer ms':>9} {'peer/vd':>8} {'vd FLOP/s':>10} {'peer FLOP/s':>11}")
    for name in args.cases.split(","):
        torch.manual_seed(0)
        torch._dynamo.reset()  # each case compiles afresh: a network seen at a second batch would recompile for any shape, slower
        vd, vd_fn, peer, peer_fn, reps = CASES[name](args.compile)
        first = _time(vd_fn)  # the warm-up, and with --compile the compile: what a user running once pays too
        peer_fn()
        vd_flops, peer_flops = flops(vd_fn), flops(peer_fn)  # one step (training) or one whole sampling run
        times = {"vd": [], "peer": []}
        if hasattr(vd_fn, "paired"):  # sampling: interleaved step by step within each round
            for _ in range(args.rounds):
                for who, seconds in zip(("vd", "peer"), vd_fn.paired()):
                    times[who].append(seconds)
        else:  # training: one step of each, alternating which goes first, reps times per round
            for r in range(args.rounds * reps):
                order = [("vd", vd_fn), ("peer", peer_fn)]
                for who, fn in order if r % 2 == 0 else order[::-1]:
                    times[who].append(_time(fn))
        vd_s, peer_s = statistics.median(times["vd"]), statistics.median(times["peer"])
        ratio = statistics.median(p / v for v, p in zip(times["vd"], times["peer"]))  # of the back-to-back pairs
        row = {"bench": "peers", "tag": args.tag, "case": name, "compile": args.compile,
               "params_vd": params(vd), "params_peer": params(peer), "vd_ms": round(vd_s * 1e3, 1),
               "peer_ms": round(peer_s * 1e3, 1), "ratio": round(ratio, 3),
               "vd_flops_fraction": round(vd_flops / vd_s / peak, 4), "peer_flops_fraction": round(peer_flops / peer_s / peak, 4),
               "vd_first_call_s": round(first, 1), "matmul_peak_gflops": round(peak / 1e9, 1), "rounds": args.rounds,
               "vd_ms_all": [round(t * 1e3, 1) for t in times["vd"]], "peer_ms_all": [round(t * 1e3, 1) for t in times["peer"]],
               "command": command, "machine": machine, "date": time.strftime("%Y-%m-%d %H:%M")}
        print(f"{name:<12} {row['params_vd']:>9,}/{row['params_peer']:<9,} {row['vd_ms']:>9.1f} {row['peer_ms']:>9.1f} "
              f"{row['ratio']:>7.2f}x {row['vd_flops_fraction']:>10.1%} {row['peer_flops_fraction']:>11.1%}", flush=True)
        if not args.no_record:
            with open(HERE / "results.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
