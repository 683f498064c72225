"""Could a 3x3 convolution written as a matmul beat oneDNN's at the U-Net's shapes? (issue 9)

    python bench/experiments/conv_im2col.py

Forward + backward of one padded 3x3 convolution, batch 128, three ways: ``F.conv2d`` (oneDNN),
im2col with ``F.unfold`` and one matmul, and im2col from nine shifted NHWC slices and one matmul.
Prints the median milliseconds of each at the recipe's map sizes and widths.
"""

import statistics
import time

import torch
import torch.nn.functional as F


def unfold_conv(x, w, b):
    B, C, H, W = x.shape
    cols = F.unfold(x, 3, padding=1)  # (B, 9C, HW)
    return (w.view(w.shape[0], -1) @ cols + b[:, None]).view(B, -1, H, W)


def nhwc_conv(x, w, b):
    B, C, H, W = x.shape
    xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))  # (B, H+2, W+2, C)
    cols = torch.cat([xp[:, i:i + H, j:j + W] for i in range(3) for j in range(3)], -1)  # (B, H, W, 9C)
    out = cols.view(-1, 9 * C) @ w.permute(0, 2, 3, 1).reshape(w.shape[0], -1).t() + b
    return out.view(B, H, W, -1).permute(0, 3, 1, 2)


def main() -> None:
    torch.manual_seed(0)
    for C, O, H in [(32, 32, 8), (64, 64, 4), (64, 64, 8), (128, 64, 8)]:
        x = torch.randn(128, C, H, H, requires_grad=True)
        w, b = torch.randn(O, C, 3, 3, requires_grad=True), torch.randn(O, requires_grad=True)
        ways = {"oneDNN": lambda: F.conv2d(x, w, b, padding=1), "unfold": lambda: unfold_conv(x, w, b),
                "nhwc-slices": lambda: nhwc_conv(x, w, b)}
        ref = ways["oneDNN"]()
        assert all(torch.allclose(f(), ref, atol=1e-3) for f in ways.values())
        g, times = torch.randn_like(ref), {k: [] for k in ways}
        for _ in range(10):
            for k, f in ways.items():
                t = time.perf_counter()
                for _ in range(5):
                    f().backward(g)
                times[k].append((time.perf_counter() - t) / 5)
        print(f"{C}->{O} channels, {H}x{H}:", {k: round(statistics.median(v) * 1e3, 2) for k, v in times.items()})


if __name__ == "__main__":
    main()
