"""What each U-Net change of issue 9 bought, measured interleaved in one process.

    python bench/experiments/unet_changes.py --rounds 7

The recipe's U-Net (recipes/mnist_latent.yaml) at the batch of DDIM sampling with guidance
(2 x 128 latents of 4x8x8), forward only, and a training step (forward and backward at 128).
Each variant swaps one ``forward`` back to what it was before issue 9 (kept below, verbatim) on
the same weights; every round times all variants back to back; medians; ratio = before / after.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))  # bench/: peers
import peers  # noqa: E402
from vdcli.device import channels_last  # noqa: E402
from vdcli.models import unet  # noqa: E402

NEW = {"attention": unet.SelfAttention.forward, "adagn": unet.ResBlock.forward}


def old_attention(self, x):  # before: 1x1 convs, q/k/v strided -> the unfused SDPA math on the CPU
    B, C, H, W = x.shape
    qkv = self.qkv(self.norm(x)).view(B, 3, self.heads, C // self.heads, H * W)
    q, k, v = qkv.transpose(-1, -2).unbind(1)
    y = F.scaled_dot_product_attention(q, k, v)
    return x + self.proj(y.transpose(-1, -2).reshape(B, C, H, W))


def old_adagn(self, x, emb):  # before: norm2 with its affine, then * (1 + scale) + shift: four passes
    h = self.conv1(F.silu(self.norm1(x)))
    scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
    h = self.norm2(h) * (1 + scale) + shift
    h = self.conv2(self.dropout(F.silu(h)))
    return self.skip(x) + h


VARIANTS = {
    "before (both old)": {"attention": old_attention, "adagn": old_adagn},
    "old attention only": {"attention": old_attention, "adagn": NEW["adagn"]},
    "old AdaGN only": {"attention": NEW["attention"], "adagn": old_adagn},
    "after (both new)": NEW,
}


def use(variant: dict) -> None:
    unet.SelfAttention.forward, unet.ResBlock.forward = variant["attention"], variant["adagn"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    model, _, _ = peers.unet_pair()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # nudge the zero-initialised layers, so that every path computes
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    x, t, y = torch.randn(256, 4, 8, 8, generator=g), torch.randint(0, 1000, (256,), generator=g), torch.arange(256) % 11

    def forward():
        with torch.no_grad():
            return model(x, t, y)

    def train():
        model(x[:128], t[:128], y[:128]).square().mean().backward()

    # Not shipped (device.prepare does it on CUDA only, where CPU results must not change): the
    # same "after" network with weights and input channels_last, to see what oneDNN makes of it.
    nhwc = channels_last(copy.deepcopy(model))
    x_nhwc = x.contiguous(memory_format=torch.channels_last)

    def forward_nhwc():
        with torch.no_grad():
            return nhwc(x_nhwc, t, y)

    def train_nhwc():
        nhwc(x_nhwc[:128], t[:128], y[:128]).square().mean().backward()

    for name, fn, fn_nhwc in (("forward, batch 256", forward, forward_nhwc), ("forward+backward, batch 128", train, train_nhwc)):
        runs = {v: (lambda variant=variant: (use(variant), fn())) for v, variant in VARIANTS.items()}
        runs["after, channels_last (CPU, not shipped)"] = lambda: (use(NEW), fn_nhwc())
        times = {v: [] for v in runs}
        for run in runs.values():
            run()
        for _ in range(args.rounds):
            for v, run in runs.items():
                t0 = time.perf_counter()
                run()
                times[v].append(time.perf_counter() - t0)
        base = statistics.median(times["after (both new)"])
        print(name)
        for v in runs:
            m = statistics.median(times[v])
            print(f"  {v:<40} {m * 1e3:8.1f} ms   {m / base:5.2f}x the time of 'after'", flush=True)
    use(NEW)


if __name__ == "__main__":
    main()
