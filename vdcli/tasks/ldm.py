"""Latent diffusion: train a denoiser on VAE latents, then sample, conditioned on class labels.

``train`` runs both stages when it must: with no VAE checkpoint in the recipe it first trains
the VAE from the recipe's ``vae:`` section, in ``<run>/vae/``. It then encodes the dataset
once (the posterior means and log-variances are cached in ``<run>/latents.safetensors``) and
trains the denoiser on standardised latent samples z = (μ + σ ε − mean) / std, with the mean and
std of every latent element over the training set (``LatentNorm``: why per element, not one
global scale factor, is written there).

The LDM checkpoint carries its VAE (under ``vae.``) and everything ``sample`` needs, so it
works alone. Sampling itself is ``diffusion.sample``: this file only chooses the model_fn,
the starting noise and what to do after each step.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vdcli import images
from vdcli.checkpoint import Checkpoint, atomic_write, load_checkpoint
from vdcli.data import data_spec, load_split, parse_classes, to_float, to_uint8
from vdcli.errors import VdError
from vdcli.diffusion import DiffusionConfig, NoiseSchedule, add_noise, ddim_invert, diffusion_loss, guided, sample, slerp, timesteps
from vdcli.models.dit import DiT, DiTConfig
from vdcli.models.unet import UNet, UNetConfig
from vdcli.models.vae import AutoencoderKL, LatentNorm
from vdcli.progress import Reporter, console
from vdcli.recipe import LDMRecipe, SampleConfig
from vdcli.runs import Run, find_checkpoint
from vdcli.tasks.vae import Interpolation, encode_all, load_vae, train_stage
from vdcli.trainer import fit, seeded_init

ARCHS = {"unet": (UNet, UNetConfig), "dit": (DiT, DiTConfig)}


def build_denoiser(meta: dict) -> nn.Module:
    cfg = dict(meta["model"])
    net, config = ARCHS[cfg.pop("arch")]
    channels, size, _ = meta["latent_shape"]
    num_classes = len(meta["data"]["classes"]) if meta.get("conditioning", "class") == "class" else 0
    return net(config(**cfg), size, channels, num_classes)


@dataclass
class LDM:
    """A trained latent diffusion model, ready to sample: denoiser, VAE, schedule, class names.

    ``conditioning`` is "class" (the denoiser takes labels, ``null_class`` among them) or "none".
    """

    denoiser: nn.Module
    vae: AutoencoderKL
    norm: LatentNorm
    schedule: NoiseSchedule
    classes: list[str]
    latent_shape: tuple[int, int, int]
    defaults: SampleConfig
    conditioning: str = "class"

    @property
    def null_class(self) -> int:
        return len(self.classes)

    def model_fn(self, labels: torch.Tensor, guidance: float = 1.0):
        """The sampler's model_fn for these labels [B]: guided for a class model; an unconditional
        model ignores labels (they only count the images) and guidance."""
        if self.conditioning == "none":
            return lambda x, t: self.denoiser(x, t)
        return guided(self.denoiser, labels.to(self.device), guidance, self.null_class)

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Float images [B, C, H, W] in [-1, 1] -> the standardised latents the denoiser works on (posterior means)."""
        return self.norm(self.vae.encode(images.to(self.device))[0])

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Standardised latents -> uint8 images."""
        return to_uint8(self.vae.decode(self.norm.inverse(z)).cpu())


def load_ldm(ckpt: Checkpoint, device: torch.device) -> LDM:
    meta = ckpt.meta
    denoiser = build_denoiser(meta)
    denoiser.load_state_dict(ckpt.weights("ema" if ckpt.has("ema") else "model"))
    vae, scale = load_vae(ckpt, device, prefix="vae")
    norm = LatentNorm(tuple(meta["latent_shape"]))
    if ckpt.has("latent_norm"):
        norm.load_state_dict(ckpt.weights("latent_norm"))
    else:  # a checkpoint from before per-element standardisation: one global scale factor
        norm = LatentNorm.global_scale(tuple(meta["latent_shape"]), scale)
    return LDM(denoiser.to(device).eval().requires_grad_(False), vae, norm.to(device),
               NoiseSchedule.from_config(DiffusionConfig(**meta["diffusion"])), meta["data"]["classes"],
               tuple(meta["latent_shape"]), SampleConfig(**meta["sample"]), meta.get("conditioning", "class"))


# --- vd sample --------------------------------------------------------------------------------


@torch.no_grad()
def generate(
    ldm: LDM,
    labels: torch.Tensor,
    *,
    sampler: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    guidance: float = 1.0,
    generator: torch.Generator | None = None,
    trajectory: bool = False,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Images (uint8 [B, C, H, W]) for class ``labels`` (null_class: unconditional).

    With ``trajectory``, also the decoded x̂_0 prediction after every step (uint8, [B, C, H, W] each).
    """
    labels = labels.to(ldm.device)
    noise = torch.randn((len(labels), *ldm.latent_shape), generator=generator).to(ldm.device)  # CPU draw: same on every device
    frames: list[torch.Tensor] = []

    def record(i, t, x, x0_pred):
        frames.append(ldm.decode(x0_pred))

    z = sample(ldm.model_fn(labels, guidance), noise, ldm.schedule, sampler, steps, eta,
               generator=generator, callback=record if trajectory else None)
    return ldm.decode(z), frames


def condition(ldm: LDM, spec: str | None, guidance: float | None, single: bool = False) -> tuple[list[int], list[str], float]:
    """(labels, their names, guidance w) for a --class option: '7', 'seven', '3,7', 'all' or 'none'.

    'none' is the null class, sampled without guidance; otherwise w defaults to the recipe's. No
    option means 'all' for a class model; an unconditional model (conditioning: none) takes none.
    """
    if ldm.conditioning == "none":
        if spec is not None and spec.strip().lower() != "none":
            raise VdError(f"--class {spec}: this model was trained without classes (conditioning: none); leave --class out")
        return [ldm.null_class], ["unconditional"], 1.0
    spec = "all" if spec is None else spec
    if spec.strip().lower() == "none":
        return [ldm.null_class], ["unconditional"], 1.0
    labels = parse_classes(spec, ldm.classes)
    if single and len(labels) > 1:
        raise VdError(f"--class {spec}: give one class here")
    return labels, [ldm.classes[c] for c in labels], ldm.defaults.guidance if guidance is None else guidance


def generate_batched(ldm: LDM, labels: torch.Tensor, batch_size: int, *, generator: torch.Generator,
                     trajectory: bool = False, quiet: bool = False, **options) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``generate`` in batches of ``batch_size``, with progress; the trajectory is the first batch's."""
    samples, frames = [], []
    with Reporter(len(labels), title="sample", every=batch_size, quiet=quiet) as report:
        for i in range(0, len(labels), batch_size):
            batch, batch_frames = generate(ldm, labels[i : i + batch_size], generator=generator,
                                           trajectory=trajectory and i == 0, **options)
            samples.append(batch)
            frames = frames or batch_frames
            report.update(min(i + batch_size, len(labels)), items=len(batch))
    return torch.cat(samples), frames


def class_grid(ldm: LDM, classes: list[int], per_class: int, seed: int, **options) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """per_class samples of each class, row by row, from a fixed seed."""
    labels = torch.tensor(classes).repeat_interleave(per_class)
    return generate(ldm, labels, generator=torch.Generator().manual_seed(seed), **options)


def save_class_grid(samples: torch.Tensor, row_names: list[str], per_class: int, out: Path) -> Path:
    picture = images.grid(samples, nrow=per_class)
    return images.save(images.with_row_labels(picture, row_names, picture.height // len(row_names)), out)


@torch.no_grad()
def inpaint(
    ldm: LDM, image: torch.Tensor, mask: torch.Tensor, label: int, *, n: int = 4, steps: int = 50,
    guidance: float = 1.0, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fill the masked part of ``image`` (uint8 [C, H, W]; mask bool [H, W], True = fill), n ways.

    Latent RePaint (Lugmayr et al. 2022) with DDIM: after every step, the latent cells that the
    mask leaves alone are replaced by the encoded image noised to the current level, so the
    model only ever invents the masked cells, in a way that fits what surrounds them. At the end
    the known pixels are pasted back exactly.
    """
    f = image.shape[-1] // ldm.latent_shape[-1]
    z_known = ldm.encode(to_float(image)[None])  # (1, c, h, w)
    # A latent cell is regenerated if any of its f x f pixels is masked.
    free = torch.nn.functional.max_pool2d(mask[None, None].float(), f).to(ldm.device)  # (1, 1, h, w)
    labels = torch.full((n,), label, device=ldm.device)

    def keep_known(i: int, t_next: int, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        if t_next < 0:
            known = z_known.expand_as(x)
        else:
            eps = torch.randn(x.shape, generator=generator).to(x)
            known = add_noise(ldm.schedule, z_known.expand_as(x), eps, torch.full((n,), t_next))
        return free * x + (1 - free) * known

    noise = torch.randn((n, *ldm.latent_shape), generator=generator).to(ldm.device)
    z = sample(ldm.model_fn(labels, guidance), noise, ldm.schedule, "ddim", steps,
               generator=generator, callback=keep_known)
    filled = ldm.decode(z)  # (n, C, H, W)
    return torch.where(mask.cpu()[None, None], filled, image[None])


@torch.no_grad()
def interpolate(ldm: LDM, a: torch.Tensor, b: torch.Tensor, frames: int, steps: int = 50) -> Interpolation:
    """Walk from image a to b through the diffusion model's noise space.

    Both images are encoded, inverted to noise with deterministic DDIM (η = 0, unconditional),
    the two noises are slerped (they are Gaussian-like, so slerp keeps their norm), and every
    point is denoised with the same DDIM run. The ends reproduce a and b up to the VAE's and
    the inversion's errors; the frames between are images the model finds likely.
    """
    xa, xb = to_float(a).to(ldm.device), to_float(b).to(ldm.device)
    alphas = torch.linspace(0, 1, frames)
    blend = torch.stack([(1 - t) * xa + t * xb for t in alphas])  # (F, C, H, W)
    z = ldm.encode(torch.stack([xa, xb]))  # (2, c, h, w)

    def unconditional(n: int):
        return ldm.model_fn(torch.full((n,), ldm.null_class))

    noise_a, noise_b = ddim_invert(unconditional(2), z, ldm.schedule, steps)
    path = torch.stack([slerp(noise_a, noise_b, float(t)) for t in alphas])  # (F, c, h, w)
    z0 = sample(unconditional(frames), path, ldm.schedule, "ddim", steps, eta=0.0)
    return Interpolation(to_uint8(blend.cpu()), ldm.decode(z0))


# --- vd train-ldm -----------------------------------------------------------------------------


@dataclass
class LDMSummary:
    run: Run
    loss: float
    steps: int
    seconds: float
    vae_note: str
    files: list[Path]


def first_stage(recipe: LDMRecipe, run: Run, train_set, test_set, device, resume: bool, quiet: bool) -> tuple[Checkpoint, str]:
    """The VAE checkpoint the recipe names, or one trained now from its vae: section."""
    def say(line: str) -> None:
        if not quiet:
            console.print(line, soft_wrap=True)

    named = recipe.vae.checkpoint
    if named and Path(named).exists():
        path, _ = find_checkpoint(named, "vae")
        return load_checkpoint(path, "vae"), f"VAE from {path}"
    stage = Run(run.dir / "vae")
    done = stage.checkpoint.is_file() and "scale_factor" in load_checkpoint(stage.checkpoint, "vae").meta
    if not done:
        why = f"{named} does not exist yet" if named else "the recipe names no VAE checkpoint"
        say(f"stage 1/2: training the VAE first ({why}) in {stage.dir}")
        stage.dir.mkdir(parents=True, exist_ok=True)
        vae_recipe = {"kind": "vae", "data": recipe.data.model_dump(mode="json"), "model": recipe.vae.model.model_dump(),
                      "train": recipe.vae.train.model_dump()}
        meta = {"model": recipe.vae.model.model_dump(), "data": data_spec(recipe.data, train_set), "recipe": vae_recipe}
        summary = train_stage(recipe.vae.model, recipe.vae.train, meta, train_set, test_set, stage, device=device,
                              resume=resume and stage.checkpoint.is_file(), quiet=quiet)
        say(f"VAE: test PSNR {summary.psnr:.2f} dB, scale factor {summary.scale_factor:.4f}")
        say("stage 2/2: training the denoiser on its latents")
    if named:
        Path(named).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(stage.checkpoint, named)  # so that the next run of this recipe reuses it
    return load_checkpoint(stage.checkpoint, "vae"), f"VAE trained in {stage.dir}"


def cached_latents(vae: AutoencoderKL, train_set, run: Run, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior (mean, logvar) of every training image, computed once per run."""
    path = run.dir / "latents.safetensors"
    if path.is_file():
        cache = load_file(str(path))
        return cache["mean"], cache["logvar"]
    mean, logvar = encode_all(vae, train_set, device)
    atomic_write(path, lambda tmp: save_file({"mean": mean.contiguous(), "logvar": logvar.contiguous()}, str(tmp)))
    return mean, logvar


def train(recipe: LDMRecipe, run: Run, *, device: torch.device, data_root=None, resume=False, quiet=False) -> LDMSummary:
    train_set = load_split(recipe.data, "train", data_root)
    test_set = load_split(recipe.data, "test", data_root)
    vae_ckpt, vae_note = first_stage(recipe, run, train_set, test_set, device, resume, quiet)
    vae, scale = load_vae(vae_ckpt, device)
    mean, logvar = cached_latents(vae, train_set, run, device)
    norm = LatentNorm.fit(mean, logvar).to(device)

    spec = data_spec(recipe.data, train_set)
    meta = {
        "conditioning": recipe.conditioning,
        "model": recipe.model.model_dump(),
        "data": spec,
        "latent_shape": list(vae.latent_shape),
        "diffusion": recipe.diffusion.model_dump(),
        "sample": recipe.sample.model_dump(),
        "vae": {**vae_ckpt.meta, "scale_factor": scale},
        "recipe": recipe.model_dump(mode="json"),
    }
    with seeded_init(recipe.train.seed, "denoiser"):
        model = build_denoiser(meta)
    schedule = NoiseSchedule.from_config(recipe.diffusion)
    null = len(spec["classes"])
    cfg = recipe.train

    def loss_fn(model: nn.Module, batch):
        mean, logvar, y = batch
        z = norm(mean + (0.5 * logvar).exp() * torch.randn_like(mean))  # a fresh posterior sample each time
        if recipe.conditioning == "none":
            return diffusion_loss(lambda x, t: model(x, t), z, schedule, recipe.diffusion.min_snr_gamma), {}
        drop = torch.rand(y.shape, device=y.device) < cfg.cond_drop_prob
        y = torch.where(drop, torch.full_like(y, null), y)  # the null class teaches the unconditional model
        return diffusion_loss(lambda x, t: model(x, t, y), z, schedule, recipe.diffusion.min_snr_gamma), {}

    # One row per class (at most ten) and a last row from the null label, the unconditional model
    # that guidance extrapolates from; an unconditional model fills all eight rows.
    if recipe.conditioning == "none":
        shown, names = [null] * 8, ["unconditional"] + [""] * 7
    else:
        shown = list(range(min(null, 10))) + [null]
        names = [spec["classes"][c] for c in shown[:-1]] + ["unconditional"]

    def evaluate(model: nn.Module, step: int) -> dict:
        t0 = time.perf_counter()
        ldm = LDM(model, vae, norm, schedule, spec["classes"], vae.latent_shape, recipe.sample, recipe.conditioning)
        samples, _ = class_grid(ldm, shown, 8, seed=0, sampler=recipe.sample.sampler, steps=recipe.sample.steps,
                                eta=recipe.sample.eta, guidance=recipe.sample.guidance)
        save_class_grid(samples, names, 8, run.dir / f"samples_{step:06d}.png")
        return {"sample_seconds": time.perf_counter() - t0}

    result = fit(model, loss_fn, (mean, logvar, train_set.labels), cfg, run, kind="ldm", meta=meta, device=device,
                 seed=cfg.seed, evaluate=evaluate, extra={"vae": vae, "latent_norm": norm}, resume=resume, quiet=quiet)
    grids = sorted(run.dir.glob("samples_*.png"))
    files = [run.checkpoint, run.dir / "loss.png", *grids[-1:]]
    return LDMSummary(run, result.loss, result.step, result.seconds, vae_note, files)
