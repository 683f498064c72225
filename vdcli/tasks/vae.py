"""The latent space: train the first-stage autoencoder, walk between images through it.

``train`` ends by measuring the latent scale factor (1 / std of the latents over the training
set, Rombach et al. 2022 sec. 4.3.2) and storing it in the checkpoint, so that diffusion can
work on unit-variance latents: z = scale_factor * sample(q(z|x)). Then it draws the VAE's
pictures: test images above their reconstructions (``show_reconstructions``), latents of the
prior decoded (``show_samples``), and the test-set latents (posterior means) in 2-D by PCA,
coloured by class (``latent_map``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from vdcli import distributed, images
from vdcli.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from vdcli.data import ImageSet, data_spec, load_split, to_float, to_uint8
from vdcli.device import frozen
from vdcli.diffusion import slerp
from vdcli.models.vae import AutoencoderKL, VAEConfig, vae_loss
from vdcli.recipe import VAERecipe
from vdcli.runs import Run
from vdcli.streaming import batches_of, spread
from vdcli.trainer import fit, seeded_init


def build_vae(meta: dict) -> AutoencoderKL:
    data = meta["data"]
    return AutoencoderKL(VAEConfig(**meta["model"]), data["image_size"], data["channels"])


def load_vae(ckpt: Checkpoint, device: torch.device, prefix: str = "model") -> tuple[AutoencoderKL, float]:
    """The VAE stored under ``prefix`` (an LDM keeps its VAE under "vae") and its scale factor."""
    meta = ckpt.meta if prefix == "model" else ckpt.meta["vae"]
    model = build_vae(meta)
    model.load_state_dict(ckpt.trained() if prefix == "model" else ckpt.weights(prefix))
    return frozen(model, device), meta.get("scale_factor", 1.0)


@torch.no_grad()
def encode_all(vae: AutoencoderKL, data: ImageSet, device: torch.device, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, logvar) of q(z|x) for every image, on the CPU."""
    means, logvars = [], []
    for x in batches_of(data.images, batch):
        mean, logvar = vae.encode(to_float(x.to(device)))
        means.append(mean.float().cpu())
        logvars.append(logvar.float().cpu())
    return torch.cat(means), torch.cat(logvars)


@torch.no_grad()
def reconstruction_error(vae: AutoencoderKL, data: ImageSet, device: torch.device, batch: int = 500) -> tuple[float, float]:
    """(MSE in [-1, 1] units, PSNR in dB of images in [0, 1]) of decode(mean) over ``data``."""
    total, count = 0.0, 0
    for x in batches_of(data.images, batch):
        x = to_float(x.to(device))
        recon = vae.decode(vae.encode(x)[0]).clamp(-1, 1)
        total += (recon - x).pow(2).sum().item()
        count += x.numel()
    mse = total / count
    return mse, 10 * math.log10(4.0 / mse)  # [-1, 1] -> [0, 1] divides the MSE by 4


@dataclass
class VAESummary:
    run: Run
    mse: float
    psnr: float
    scale_factor: float
    steps: int
    seconds: float
    files: list[Path]


def train(recipe: VAERecipe, run: Run, *, device: torch.device, data_root=None, resume=False, quiet=False) -> VAESummary:
    train_set = load_split(recipe.data, "train", data_root)
    test_set = load_split(recipe.data, "test", data_root)
    meta = {"model": recipe.model.model_dump(), "data": data_spec(recipe.data, train_set), "recipe": recipe.model_dump(mode="json")}
    return train_stage(recipe.model, recipe.train, meta, train_set, test_set, run, device=device, resume=resume, quiet=quiet)


def train_stage(model_cfg, train_cfg, meta, train_set, test_set, run, *, device, resume=False, quiet=False) -> VAESummary:
    """Train a VAE and finish its checkpoint; ``train-ldm`` calls this for its first stage."""
    with seeded_init(train_cfg.seed, "vae"):
        model = build_vae(meta)
    probe = test_set.images[: min(len(test_set), 1000)]

    def loss_fn(model: AutoencoderKL, batch):
        x = to_float(batch[0])
        recon, mean, logvar = model(x)
        loss, parts = vae_loss(recon, x, mean, logvar, train_cfg.kl_weight)
        return loss, parts  # tensors: the trainer reads them only on the steps it logs

    def evaluate(model: AutoencoderKL, step: int) -> dict:
        mse, psnr = reconstruction_error(model, ImageSet(probe, test_set.labels[: len(probe)], test_set.classes), device)
        return {"test_mse": mse, "test_psnr": psnr}

    result = fit(model, loss_fn, (train_set.images,), train_cfg, run, kind="vae", meta=meta, device=device,
                 evaluate=evaluate, resume=resume, quiet=quiet)

    ckpt = load_checkpoint(run.checkpoint, "vae")
    vae, _ = load_vae(ckpt, device)
    # Statistics from at most 60 000 training and 10 000 test images (all of MNIST's and CIFAR-10's):
    # a million-image folder needs no pass over every image, nor all their latents in memory.
    mean, logvar = encode_all(vae, train_set.take(spread(len(train_set), 60_000)), device)
    g = torch.Generator().manual_seed(train_cfg.seed)
    z = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=g)
    scale = 1.0 / z.std().item()
    mse, psnr = reconstruction_error(vae, test_set.take(torch.arange(min(len(test_set), 10_000))), device)
    ckpt.meta.update(scale_factor=scale, metrics={**ckpt.meta.get("metrics", {}), "test_mse": mse, "test_psnr": psnr})
    save_checkpoint(run.checkpoint, "vae", {k: ckpt.weights(k) for k in ("model", "ema") if ckpt.has(k)}, ckpt.meta)

    files = [run.checkpoint, show_reconstructions(vae, test_set, device, run.dir / "reconstructions.png"),
             show_samples(vae, scale, device, run.dir / "samples.png", train_cfg.seed), latent_map(vae, test_set, run.dir / "latent_map.png"),
             run.dir / "loss.png"]
    distributed.barrier()  # under torchrun: rank 0's finished checkpoint is on disk before the next stage reads it
    return VAESummary(run, mse, psnr, scale, result.step, result.seconds, files)


@torch.no_grad()
def show_reconstructions(vae: AutoencoderKL, data: ImageSet, device, out: Path, n: int = 16) -> Path:
    """Two pairs of rows: test originals above their reconstructions."""
    x = data.images[: 2 * n]
    recon = to_uint8(vae.decode(vae.encode(to_float(x.to(device)))[0]).cpu())
    rows = torch.cat([x[:n], recon[:n], x[n:], recon[n:]])
    picture = images.grid(rows, nrow=n)
    made = {"made_by": "train-vae", "file": Path(out).name, "images": "the first test images, then their reconstructions", "n": 2 * n}
    return images.save(images.with_row_labels(picture, ["original", "decoded"] * 2, picture.height // 4), out, made)


@torch.no_grad()
def show_samples(vae: AutoencoderKL, scale: float, device, out: Path, seed: int = 0, n: int = 64) -> Path:
    """Decode latents drawn from the prior N(0, I) (in the scaled space)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((n, *vae.latent_shape), generator=g).to(device) / scale
    made = {"made_by": "train-vae", "file": Path(out).name, "images": "decoded draws of N(0, I) / scale", "seed": seed,
            "scale_factor": scale, "n": n}
    return images.save(images.grid(to_uint8(vae.decode(z).cpu()), nrow=16), out, made)


@torch.no_grad()
def latent_map(vae: torch.nn.Module, data: ImageSet, out: Path, limit: int = 5000) -> Path:
    """latent_map.png: the posterior means of (up to ``limit``) test images, projected to their
    first two principal components and coloured by class."""
    device = next(vae.parameters()).device
    subset = ImageSet(data.images[:limit], data.labels[:limit], data.classes)
    mean, _ = encode_all(vae, subset, device)
    flat = mean.flatten(1).double()
    flat = flat - flat.mean(0)
    _, s, v = torch.linalg.svd(flat, full_matrices=False)
    xy = (flat @ v[:2].T).numpy()  # (N, 2)
    explained = (s[:2] ** 2).sum() / (s**2).sum()
    plt = images._pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 5.2), dpi=120)
    colours = plt.get_cmap("tab10" if len(data.classes) <= 10 else "tab20")
    labels = subset.labels.numpy()
    for c, name in enumerate(data.classes):
        pick = labels == c
        if pick.any():
            ax.scatter(xy[pick, 0], xy[pick, 1], s=3, alpha=0.6, color=colours(c % colours.N), label=name)
    ax.set(xlabel="principal component 1", ylabel="principal component 2",
           title=f"VAE latents of {len(subset)} test images (PCA: {explained:.0%} of the variance)")
    ax.legend(markerscale=4, fontsize=8, loc="best", ncol=2 if len(data.classes) > 5 else 1)
    fig.tight_layout()
    return images._save_fig(fig, out)


# --- vd interpolate ---------------------------------------------------------------------------


@dataclass
class Interpolation:
    pixels: torch.Tensor  # uint8 (frames, C, H, W): the straight blend of the two images
    latents: torch.Tensor  # uint8 (frames, C, H, W): the decoded latent path


@torch.no_grad()
def interpolate(vae: AutoencoderKL, a: torch.Tensor, b: torch.Tensor, frames: int, mode: str = "slerp") -> Interpolation:
    """Walk from image a to image b (uint8 [C, H, W]) in pixel space and in latent space.

    The latent path runs between the posterior means of a and b; ``slerp`` keeps the norm of
    Gaussian-like latents, where ``lerp`` passes through low-norm latents the decoder rarely saw.
    """
    device = next(vae.parameters()).device
    alphas = torch.linspace(0, 1, frames)
    xa, xb = to_float(a).to(device), to_float(b).to(device)
    blend = torch.stack([(1 - t) * xa + t * xb for t in alphas])  # (F, C, H, W)
    za, zb = vae.encode(torch.stack([xa, xb]))[0]
    path = torch.stack([slerp(za, zb, float(t)) if mode == "slerp" else torch.lerp(za, zb, float(t)) for t in alphas])
    return Interpolation(to_uint8(blend.cpu()), to_uint8(vae.decode(path).cpu()))


def write_interpolation(result: Interpolation, out: Path, fps: float, meta: dict | None = None) -> list[Path]:
    """interpolation.png (row 1 pixels, row 2 latents; carrying ``meta``, ``images.save``) and
    interpolation.gif (both, side by side)."""
    frames = len(result.pixels)
    picture = images.grid(torch.cat([result.pixels, result.latents]), nrow=frames)
    png = images.save(images.with_row_labels(picture, ["pixel blend", "latent path"], picture.height // 2), out / "interpolation.png",
                      None if meta is None else {**meta, "file": "interpolation.png"})
    gif_frames = [images.grid(torch.stack([p, q]), nrow=2, pad=4) for p, q in zip(result.pixels, result.latents)]
    gif = images.save_gif(gif_frames, out / "interpolation.gif", fps=fps)
    return [png, gif]
