"""Latent diffusion, trained: load an LDM checkpoint and sample from it; image-to-image,
inpainting, interpolation, prompt attention; and the files ``vd sample`` writes.

Training is ``tasks/ldm_train.py``. The LDM checkpoint carries its VAE (under ``vae.``), a text
model's CLIP (under ``clip.``) and everything ``sample`` needs, so it works alone. Sampling itself
is ``diffusion.sample``; what the model is conditioned on, and how guidance steers it, is
``conditioning.py``: this file only chooses the model_fn, the starting noise and what to do after
each step. A request is one class index or prompt per image (``conditioning.py``'s conventions).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vdcli import images
from vdcli.checkpoint import Checkpoint
from vdcli.conditioning import STRATEGIES, Conditioning, Request, guided, strategy
from vdcli.data import to_float, to_uint8
from vdcli.device import frozen
from vdcli.diffusion import DiffusionConfig, NoiseSchedule, add_noise, ddim_invert, sample, slerp, strength_start
from vdcli.models.attention import recording
from vdcli.models.dit import DiT, DiTConfig
from vdcli.models.unet import UNet, UNetConfig
from vdcli.models.vae import AutoencoderKL, LatentNorm
from vdcli.progress import Reporter
from vdcli.recipe import SampleConfig
from vdcli.tasks.clip import load_text_encoder
from vdcli.tasks.vae import Interpolation, load_vae

ARCHS = {"unet": (UNet, UNetConfig), "dit": (DiT, DiTConfig)}
GRID_COLUMNS = 16  # a grid row holds at most this many images: a class asked for 1000 times wraps


def build_denoiser(meta: dict) -> nn.Module:
    """The denoiser an LDM checkpoint's (or a recipe's) meta describes: its architecture from
    ``model``, its condition inputs from the ``conditioning`` strategy."""
    cfg = dict(meta["model"])
    net, config = ARCHS[cfg.pop("arch")]
    channels, size, _ = meta["latent_shape"]
    return net(config(**cfg), size, channels, **STRATEGIES[meta.get("conditioning", "class")].denoiser_inputs(meta))


@dataclass
class LDM:
    """A trained latent diffusion model, ready to sample: denoiser, VAE, schedule, condition.

    ``guide``, when the recipe kept one (``train.guide_at``), is the denoiser's own averaged
    weights early in training: unconditional samples are guided away from it (autoguidance), as
    conditional ones are guided away from the unconditional model.
    """

    denoiser: nn.Module
    vae: AutoencoderKL
    norm: LatentNorm
    schedule: NoiseSchedule
    conditioning: Conditioning
    latent_shape: tuple[int, int, int]
    defaults: SampleConfig
    guide: nn.Module | None = None  # autoguidance's bad model: the same network, earlier weights

    @property
    def classes(self) -> list[str]:
        return self.conditioning.classes

    @property
    def null_class(self) -> int:
        return self.conditioning.null_class

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    def model_fn(self, requests: Request, guidance: float = 1.0, negative: list[str] | None = None):
        """The sampler's model_fn for one request per image, guided at w = ``guidance``: against
        the null condition or the ``negative`` prompts (classifier-free guidance), or, for a batch
        that asks for nothing, against ``guide`` when there is one (autoguidance)."""
        c, device = self.conditioning, self.device
        if self.guide is not None and guidance != 1.0 and c.is_null(requests, negative):
            return guided(self.denoiser, c.encode(requests, device), guidance, guide=self.guide)
        if guidance == 1.0:
            return guided(self.denoiser, c.encode(requests, device), 1.0)
        cond, reference = c.reference(requests, negative, device)
        if reference is None:  # a model without a condition has no classifier-free guidance
            return guided(self.denoiser, cond, 1.0)
        return guided(self.denoiser, cond, guidance, reference=reference)

    def request(self, spec: str | None, guidance: float | None, prompts: list[str] | None = None,
                negative: str | None = None, single: bool = False) -> tuple[Request, list[str], float]:
        """(requests, their names, w) for --class / --prompt / --negative-prompt. Asking for nothing
        is autoguided when the model kept a guide (w: ``autoguidance``); otherwise w defaults to the recipe's."""
        parsed = self.conditioning.parse(spec, prompts, negative, single)
        w = self.autoguidance(guidance) if parsed.unconditional else (self.defaults.guidance if guidance is None else guidance)
        return parsed.requests, parsed.names, w

    def autoguidance(self, guidance: float | None) -> float:
        """w for an unconditional sample: --guidance, else the recipe's; 1 (off) without a guide."""
        if self.guide is None:
            return 1.0
        return self.defaults.autoguidance if guidance is None else guidance

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Float images [B, C, H, W] in [-1, 1] -> the standardised latents the denoiser works on (posterior means)."""
        return self.norm(self.vae.encode(images.to(self.device))[0])

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Standardised latents -> uint8 images."""
        return to_uint8(self.vae.decode(self.norm.inverse(z)).cpu())


def load_ldm(ckpt: Checkpoint, device: torch.device, compile: bool = False) -> LDM:
    """``compile``: the denoiser (and the guide) through ``torch.compile`` (``device.frozen``)."""
    meta = ckpt.meta
    denoiser = build_denoiser(meta)
    denoiser.load_state_dict(ckpt.trained())
    vae, scale = load_vae(ckpt, device, prefix="vae")
    norm = LatentNorm(tuple(meta["latent_shape"]))
    if ckpt.has("latent_norm"):
        norm.load_state_dict(ckpt.weights("latent_norm"))
    else:  # a checkpoint from before per-element standardisation: one global scale factor
        norm = LatentNorm.global_scale(tuple(meta["latent_shape"]), scale)
    text = load_text_encoder(ckpt, device, prefix="clip") if ckpt.has("clip") else None
    guide = None
    if ckpt.has("guide"):  # saved from train.guide_at's step on
        guide = build_denoiser(meta)
        guide.load_state_dict(ckpt.weights("guide"))
        guide = frozen(guide, device, compile)
    return LDM(frozen(denoiser, device, compile), vae, norm.to(device),
               NoiseSchedule.from_config(DiffusionConfig(**meta["diffusion"])),
               strategy(meta.get("conditioning", "class"), meta["data"]["classes"], text),
               tuple(meta["latent_shape"]), SampleConfig(**meta["sample"]), guide)


# --- vd sample --------------------------------------------------------------------------------


@torch.no_grad()
def generate(
    ldm: LDM,
    requests: Request,
    *,
    sampler: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    guidance: float = 1.0,
    negative: list[str] | None = None,
    generator: torch.Generator | None = None,
    trajectory: bool = False,
    spacing: str | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Images (uint8 [B, C, H, W]), one per request (the null class or "" asks for nothing),
    with optional ``negative`` prompts.

    With ``trajectory``, also the decoded x̂_0 prediction after every step (uint8, [B, C, H, W] each).
    """
    noise = torch.randn((len(requests), *ldm.latent_shape), generator=generator).to(ldm.device)  # CPU draw: same on every device
    frames: list[torch.Tensor] = []

    def record(i, t, x, x0_pred):
        frames.append(ldm.decode(x0_pred))

    z = sample(ldm.model_fn(requests, guidance, negative), noise, ldm.schedule, sampler, steps, eta,
               generator=generator, callback=record if trajectory else None, spacing=spacing)
    return ldm.decode(z), frames


def generate_batched(ldm: LDM, requests: Request, batch_size: int, *, generator: torch.Generator,
                     trajectory: bool = False, quiet: bool = False, **options) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``generate`` in batches of ``batch_size``, with progress; the trajectory is the first batch's."""
    samples, frames = [], []
    negative = options.pop("negative", None)  # one per image, like the requests
    with Reporter(len(requests), title="sample", every=batch_size, quiet=quiet) as report:
        for i in range(0, len(requests), batch_size):
            batch, batch_frames = generate(ldm, requests[i : i + batch_size], generator=generator,
                                           negative=None if negative is None else negative[i : i + batch_size],
                                           trajectory=trajectory and i == 0, **options)
            samples.append(batch)
            frames = frames or batch_frames
            report.update(min(i + batch_size, len(requests)), items=len(batch))
    return torch.cat(samples), frames


def class_grid(ldm: LDM, requests: Request, per_class: int, seed: int, **options) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """per_class samples of each request (a class or a prompt), row by row, from a fixed seed."""
    return generate(ldm, ldm.conditioning.repeat(requests, per_class), generator=torch.Generator().manual_seed(seed), **options)


@torch.no_grad()
def image_to_image(
    ldm: LDM,
    image: torch.Tensor,
    request: int | str,
    strengths: list[float],
    *,
    n: int = 4,
    sampler: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    guidance: float = 1.0,
    negative: str | None = None,
    seed: int = 0,
    spacing: str | None = None,
) -> torch.Tensor:
    """SDEdit (Meng et al. 2022): ``image`` (uint8 [C, H, W]) made anew n ways per strength, with
    the class or prompt ``request``. Returns uint8 [n, len(strengths), C, H, W].

    The image's latent is noised to the timestep each strength stands for
    (``diffusion.strength_start``) and denoised from there by the one sampling loop. Every
    strength starts from the same seed, so a row shares its noise: strength 1 is exactly
    ``vd sample`` with that seed, strength 0 the decoded input.
    """
    z_init = ldm.encode(to_float(image)[None]).expand(n, *ldm.latent_shape)  # (n, c, h, w)
    model_fn = ldm.model_fn(ldm.conditioning.repeat([request], n), guidance, None if negative is None else [negative] * n)
    columns = []
    for strength in strengths:
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn((n, *ldm.latent_shape), generator=generator).to(ldm.device)  # as generate() draws it
        start = strength_start(sampler, steps, ldm.schedule, strength, spacing)
        if start == -1:
            z = z_init
        elif start is None:
            z = sample(model_fn, noise, ldm.schedule, sampler, steps, eta, generator=generator, spacing=spacing)
        else:
            x = add_noise(ldm.schedule, z_init, noise, torch.full((n,), start))
            z = sample(model_fn, x, ldm.schedule, sampler, steps, eta, generator=generator, start_t=start, spacing=spacing)
        columns.append(ldm.decode(z))
    return torch.stack(columns, dim=1)


@torch.no_grad()
def inpaint(
    ldm: LDM, image: torch.Tensor, mask: torch.Tensor, request: int | str, *, n: int = 4, steps: int = 50,
    guidance: float = 1.0, negative: str | None = None, generator: torch.Generator | None = None,
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

    def keep_known(i: int, t_next: int, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        if t_next < 0:
            known = z_known.expand_as(x)
        else:
            eps = torch.randn(x.shape, generator=generator).to(x)
            known = add_noise(ldm.schedule, z_known.expand_as(x), eps, torch.full((n,), t_next))
        return free * x + (1 - free) * known

    noise = torch.randn((n, *ldm.latent_shape), generator=generator).to(ldm.device)
    model_fn = ldm.model_fn(ldm.conditioning.repeat([request], n), guidance, None if negative is None else [negative] * n)
    z = sample(model_fn, noise, ldm.schedule, "ddim", steps, generator=generator, callback=keep_known)
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
        return ldm.model_fn([ldm.conditioning.null()] * n)

    noise_a, noise_b = ddim_invert(unconditional(2), z, ldm.schedule, steps)
    path = torch.stack([slerp(noise_a, noise_b, float(t)) for t in alphas])  # (F, c, h, w)
    z0 = sample(unconditional(frames), path, ldm.schedule, "ddim", steps, eta=0.0)
    return Interpolation(to_uint8(blend.cpu()), ldm.decode(z0))


# --- vd attn-map --prompt ---------------------------------------------------------------------


@dataclass
class PromptAttention:
    image: torch.Tensor  # uint8 [C, H, W]: the generated image
    words: list[str]  # the prompt's tokens, one per map
    maps: torch.Tensor  # [words, h, w] on the latent grid: cross-attention to each word


@torch.no_grad()
def prompt_attention(ldm: LDM, prompt: str, *, steps: int = 50, guidance: float | None = None, seed: int = 0) -> PromptAttention:
    """Generate one image for ``prompt`` and the cross-attention of its pixels to each word,
    averaged over every cross-attention layer, head and DDIM step (Hertz et al. 2022,
    "Prompt-to-Prompt", sec. 3.1 and fig. 4): the denoiser's counterpart of the ViT's attention maps.

    Only the conditional half of the guided batch is read; maps of coarser layers are upsampled
    (bilinear) to the latent grid before averaging.
    """
    text = ldm.conditioning.text_encoder("--prompt")
    w = ldm.defaults.guidance if guidance is None else guidance
    _, _, mask = text.encode([prompt])  # (1, L): which positions hold real tokens
    positions = mask[0].nonzero().flatten().tolist()
    words = text.tokens(prompt)
    if len(words) != len(positions):  # tokens() and encode() must agree on what a position is
        raise ValueError(f"{len(words)} tokens but {len(positions)} real positions for {prompt!r}")
    size = ldm.latent_shape[-1]
    total = torch.zeros(len(positions), size, size)
    with recording(ldm.denoiser) as maps:
        image, _ = generate(ldm, [prompt], sampler="ddim", steps=steps, guidance=w,
                            generator=torch.Generator().manual_seed(seed))
    for probs in maps:  # (1 or 2, heads, T, L); the first row is the prompt's, the second the unconditional's
        per_word = probs[0].mean(0)[:, positions].float().cpu()  # (T, words), averaged over heads
        side = int(round(per_word.shape[0] ** 0.5))
        grid = per_word.T.reshape(len(positions), 1, side, side)  # (words, 1, side, side)
        total += torch.nn.functional.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    return PromptAttention(image[0], words, total / max(len(maps), 1))


# --- the files vd sample writes -------------------------------------------------------------------


def file_stem(name: str, limit: int = 40) -> str:
    """A file-name-safe, short stem for a row name (a class, or a prompt of any length); the full
    prompt is in the summary, never cut into a file name the file system refuses."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "image"
    return stem[:limit].rstrip("._-")


def _short(name: str, limit: int = 48) -> str:
    """A row label a screen can show: a long prompt is cut (the summary prints it whole)."""
    return name if len(name) <= limit else name[: limit - 3].rstrip() + "..."


def _meta(meta: dict | None, file: str, **more) -> dict | None:
    """The parameters a written file carries: the command's ``meta``, which file of its output this
    is, and what is particular to it (``images.save`` adds the vd version and command line)."""
    return None if meta is None else {**meta, "file": file, **more}


def save_class_grid(samples: torch.Tensor, row_names: list[str], per_class: int, out: Path,
                    columns: int = GRID_COLUMNS, meta: dict | None = None) -> Path:
    """A grid with per_class images of each row name, wrapped at ``columns`` images a row; each
    name labels the first row of its images."""
    wide = min(per_class, columns)
    lines = -(-per_class // wide)  # grid rows per name
    blank = torch.zeros_like(samples[:1])
    padded = []
    for r in range(len(row_names)):
        block = samples[r * per_class : (r + 1) * per_class]
        padded += [block, blank.expand(lines * wide - len(block), *blank.shape[1:])]
    picture = images.grid(torch.cat(padded), nrow=wide)
    labels = [_short(name) if i == 0 else "" for name in row_names for i in range(lines)]
    return images.save(images.with_row_labels(picture, labels, picture.height // len(labels)), out, _meta(meta, Path(out).name))


def save_samples(samples: torch.Tensor, names: list[str], per_row: int, out: Path,
                 frames: list[torch.Tensor] | None = None, meta: dict | None = None) -> list[Path]:
    """grid.png (a row per name), every image under images/ (``<name>_<i>.png``), and with the
    trajectory's ``frames`` trajectory.gif. Each PNG carries ``meta`` (``images.save``)."""
    out.mkdir(parents=True, exist_ok=True)
    written = [save_class_grid(samples, names, per_row, out / "grid.png", meta=meta)]
    (out / "images").mkdir(exist_ok=True)
    for k, image in enumerate(samples):
        name = f"{file_stem(names[k // per_row])}_{k % per_row}.png"
        images.save(images.to_pil(image), out / "images" / name, _meta(meta, f"images/{name}", image=names[k // per_row]))
    written.append(out / "images")
    if frames:
        shown = min(8, per_row)
        gif = [images.grid(f[:shown], nrow=shown) for f in frames]
        written.append(images.save_gif(gif, out / "trajectory.gif", fps=max(4.0, len(gif) / 5), hold_ends=1.0))
    return written


def save_image_to_image(image: torch.Tensor, made: torch.Tensor, strengths: list[float], out: Path,
                        meta: dict | None = None) -> list[Path]:
    """grid.png: per row the input, then one column per strength; and every image under images/."""
    n, k = made.shape[:2]
    out.mkdir(parents=True, exist_ok=True)
    rows = torch.cat([image.expand(n, 1, *image.shape), made], dim=1).flatten(0, 1)  # (n · (k + 1), C, H, W)
    picture = images.grid(rows, nrow=k + 1)
    labels = ["input"] + [f"strength {x:g}" for x in strengths]
    written = [images.save(images.with_column_labels(picture, labels, picture.width // (k + 1)), out / "grid.png",
                           _meta(meta, "grid.png"))]
    (out / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        for j, x in enumerate(strengths):
            images.save(images.to_pil(made[i, j]), out / "images" / f"strength{x:g}_{i}.png",
                        _meta(meta, f"images/strength{x:g}_{i}.png", image_strength=x))
    return written + [out / "images"]


def save_inpainting(image: torch.Tensor, region: torch.Tensor, filled: torch.Tensor, out: Path,
                    meta: dict | None = None) -> list[Path]:
    """inpaint.png (the image, the masked image, then each filling) and each filling as inpaint_<i>.png."""
    out.mkdir(parents=True, exist_ok=True)
    masked = torch.where(region[None], torch.full_like(image, 128), image)
    written = [images.save(images.grid(torch.cat([image[None], masked[None], filled]), nrow=len(filled) + 2), out / "inpaint.png",
                           _meta(meta, "inpaint.png"))]
    return written + [images.save(images.to_pil(x), out / f"inpaint_{i}.png", _meta(meta, f"inpaint_{i}.png"))
                      for i, x in enumerate(filled)]
