"""Pictures of what diffusion does to an image, for ``vd diffuse`` and for the runs that train one.

- ``forward_process``: one image noised by q(x_t | x_0) (``diffusion.add_noise``) at nine levels
  t = 0, (T−1)/8, …, T−1 with one and the same ε, so that only the level changes from column to
  column; in pixel space and, given an autoencoder, in its latent space decoded back. The latent
  row is what a latent diffusion model really sees: a 4×8×8 latent loses the digit's shape at a
  different t than its 32×32 pixels do.
- ``schedule_picture``: ᾱ_t and log SNR(t) of the linear, scaled-linear and cosine schedules, and
  the same image at equal t under each: how long a schedule lets an image's features survive.

"Codec" below is anything with ``encode(float images in [-1, 1]) -> latents`` and
``decode(latents) -> uint8 images``: an ``LDM`` (its standardised latents) or a ``VAECodec``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from vdcli import images
from vdcli.data import to_float, to_uint8
from vdcli.diffusion import SCHEDULES, NoiseSchedule, add_noise


@dataclass
class VAECodec:
    """A VAE's latent space as diffusion uses it: z = scale · posterior mean, or the LDM's
    per-element standardisation ``norm`` of it when given."""

    vae: torch.nn.Module
    scale: float = 1.0
    norm: torch.nn.Module | None = None

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.vae.encode(x.to(next(self.vae.parameters()).device))[0]
        return self.norm(mean) if self.norm is not None else mean * self.scale

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return to_uint8(self.vae.decode(self.norm.inverse(z) if self.norm is not None else z / self.scale).cpu())


def levels(T: int, columns: int = 9) -> list[int]:
    """t = 0, (T−1)/8, …, T−1: the columns of the pictures."""
    return [round(k * (T - 1) / (columns - 1)) for k in range(columns)]


def _noised(schedule: NoiseSchedule, x0: torch.Tensor, eps: torch.Tensor, ts: list[int]) -> torch.Tensor:
    """x0 [1, ...] at each level in ``ts`` with the same ε: [len(ts), ...]."""
    n = len(ts)
    return add_noise(schedule, x0.expand(n, *x0.shape[1:]), eps.expand(n, *eps.shape[1:]), torch.tensor(ts))


@torch.no_grad()
def forward_process(image: torch.Tensor, schedule: NoiseSchedule, codec=None, seed: int = 0,
                    ts: list[int] | None = None) -> dict[str, torch.Tensor]:
    """{row name: uint8 [len(ts), C, H, W]}: ``image`` (uint8 [C, H, W]) at each level of ``ts``."""
    ts = levels(schedule.T) if ts is None else ts
    g = torch.Generator().manual_seed(seed)
    x0 = to_float(image)[None]  # (1, C, H, W)
    rows = {"pixels": to_uint8(_noised(schedule, x0, torch.randn(x0.shape, generator=g), ts))}
    if codec is not None:
        z0 = codec.encode(x0)  # (1, c, h, w), on the codec's device
        zt = _noised(schedule, z0, torch.randn(z0.shape, generator=g).to(z0), ts)
        rows["latents, decoded"] = codec.decode(zt)
    return rows


def _level_labels(schedule: NoiseSchedule, ts: list[int]) -> list[str]:
    def shown(a: float) -> str:
        return f"{a:.3f}" if a >= 0.01 else f"{a:.0e}"

    return [f"t = {t}\nᾱ = {shown(schedule.alpha_bar(t).item())}" for t in ts]


def forward_picture(rows: dict[str, torch.Tensor], schedule: NoiseSchedule, ts: list[int] | None = None) -> Image.Image:
    """The rows of ``forward_process`` as one labelled grid: a row each, a column per level."""
    ts = levels(schedule.T) if ts is None else ts
    picture = images.grid(torch.cat(list(rows.values())), nrow=len(ts))
    labelled = images.with_row_labels(picture, list(rows), picture.height // len(rows))
    left = labelled.width - picture.width
    return images.with_column_labels(labelled, _level_labels(schedule, ts), picture.width // len(ts), left=left)


def forward_gif(image: torch.Tensor, schedule: NoiseSchedule, codec, out: Path, seed: int = 0, frames: int = 40) -> Path:
    """The forward process animated: one frame per level, the rows side by side."""
    ts = levels(schedule.T, frames)
    rows = forward_process(image, schedule, codec, seed, ts)
    pictures = []
    for k, t in enumerate(ts):
        panel = images.grid(torch.stack([r[k] for r in rows.values()]), nrow=len(rows), pad=4)
        pictures.append(images.hstack([panel], [f"t = {t}   ᾱ = {schedule.alpha_bar(t).item():.2g}"]))
    return images.save_gif(pictures, out, fps=10, hold_ends=1.0)


def schedule_picture(image: torch.Tensor, T: int = 1000, chosen: str | None = None, seed: int = 0,
                     why: str = "this model") -> Image.Image:
    """ᾱ_t and log SNR(t) over t for every schedule (``chosen`` drawn bold, labelled ``why``),
    above a strip of ``image`` at equal t under each schedule."""
    plt = images._pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2), dpi=110)
    ts = torch.arange(T)
    for name in SCHEDULES:
        schedule = NoiseSchedule(name, T)
        bold = name == chosen
        style = {"linewidth": 2.6 if bold else 1.2, "label": name + (f" ({why})" if bold else "")}
        left.plot(ts, schedule.alpha_bar(ts).numpy(), **style)
        right.plot(ts, schedule.snr(ts).log().numpy(), **style)
    left.set(xlabel="t", ylabel="ᾱ_t  (signal kept: √ᾱ_t x₀)", title="ᾱ_t")
    right.set(xlabel="t", ylabel="log SNR(t) = log ᾱ_t / (1 − ᾱ_t)", title="log signal-to-noise ratio")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    left.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    plot = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")

    columns = levels(T)
    strip = torch.cat([forward_process(image, NoiseSchedule(name, T), seed=seed, ts=columns)["pixels"] for name in SCHEDULES])
    grid = images.grid(strip, nrow=len(columns))
    labelled = images.with_row_labels(grid, list(SCHEDULES), grid.height // len(SCHEDULES))
    labelled = images.with_column_labels(labelled, [f"t = {t}" for t in columns], grid.width // len(columns),
                                         left=labelled.width - grid.width)
    return images.vstack([plot, labelled])


def write_diffusion_pictures(image: torch.Tensor, schedule: NoiseSchedule, schedule_name: str, codec, out: Path,
                             seed: int = 0, gif: bool = False, why: str = "this model") -> list[Path]:
    """forward_process.png and schedule.png (and forward_process.gif) in ``out``; schedule.png
    draws ``schedule_name`` bold, labelled ``why``."""
    written = [images.save(forward_picture(forward_process(image, schedule, codec, seed), schedule), out / "forward_process.png"),
               images.save(schedule_picture(image, schedule.T, schedule_name, seed, why), out / "schedule.png")]
    if gif:
        written.append(forward_gif(image, schedule, codec, out / "forward_process.gif", seed))
    return written
