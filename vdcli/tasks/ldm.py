"""Latent diffusion, trained: load an LDM checkpoint and sample from it, conditioned on class
labels, prompts or nothing; image-to-image, inpainting, interpolation, prompt attention.

Training is ``tasks/ldm_train.py``. The LDM checkpoint carries its VAE (under ``vae.``) and
everything ``sample`` needs, so it works alone. Sampling itself is ``diffusion.sample``: this
file only chooses the model_fn, the starting noise and what to do after each step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vdcli import images
from vdcli.checkpoint import Checkpoint
from vdcli.data import parse_classes, to_float, to_uint8
from vdcli.device import frozen
from vdcli.errors import VdError
from vdcli.diffusion import (DiffusionConfig, NoiseSchedule, add_noise, autoguided, ddim_invert, guided, sample, slerp,
                             strength_start)
from vdcli.models.dit import DiT, DiTConfig
from vdcli.models.unet import UNet, UNetConfig
from vdcli.models.vae import AutoencoderKL, LatentNorm
from vdcli.progress import Reporter
from vdcli.recipe import LDMRecipe, SampleConfig
from vdcli.runs import Run
from vdcli.tasks.vae import Interpolation, load_vae

ARCHS = {"unet": (UNet, UNetConfig), "dit": (DiT, DiTConfig)}


def build_denoiser(meta: dict) -> nn.Module:
    cfg = dict(meta["model"])
    net, config = ARCHS[cfg.pop("arch")]
    channels, size, _ = meta["latent_shape"]
    conditioning = meta.get("conditioning", "class")
    num_classes = len(meta["data"]["classes"]) if conditioning == "class" else 0
    if conditioning == "text":  # no labels: the prompt's token states, through cross-attention
        return net(config(**cfg), size, channels, 0, context_dim=meta["text"]["dim"])
    return net(config(**cfg), size, channels, num_classes)


Condition = torch.Tensor | list[str]  # one per image: class labels [B] for a class model, prompts for a text model


@dataclass
class LDM:
    """A trained latent diffusion model, ready to sample: denoiser, VAE, schedule, class names.

    ``conditioning`` is "class" (the denoiser takes labels, ``null_class`` among them), "none", or
    "text" (the denoiser reads prompts through ``text``, the frozen CLIP text encoder; the empty
    prompt is the unconditional model). ``guide``, when the recipe kept one (``train.guide_at``),
    is the denoiser's own averaged weights early in training: unconditional samples are guided
    away from it (autoguidance), as conditional ones are guided away from the unconditional model.
    """

    denoiser: nn.Module
    vae: AutoencoderKL
    norm: LatentNorm
    schedule: NoiseSchedule
    classes: list[str]
    latent_shape: tuple[int, int, int]
    defaults: SampleConfig
    conditioning: str = "class"
    text: object | None = None  # a text model's tasks.clip.TextEncoder
    guide: nn.Module | None = None  # autoguidance's bad model: the same network, earlier weights

    @property
    def null_class(self) -> int:
        return len(self.classes)

    def null_condition(self, n: int) -> Condition:
        """n times "no condition": the null label, or the empty prompt."""
        return [""] * n if self.conditioning == "text" else torch.full((n,), self.null_class)

    def model_fn(self, condition: Condition, guidance: float = 1.0, negative: list[str] | None = None):
        """The sampler's model_fn for one condition per image: labels [B] (guided for a class model;
        an unconditional model ignores them, they only count the images) or, for a text model,
        prompts (guided against ``negative`` prompts, the empty prompt by default). A batch with no
        condition at all is autoguided against ``guide`` when there is one."""
        if self.guide is not None and guidance != 1.0 and self.unconditional(condition, negative):
            return autoguided(self.plain(self.denoiser, condition), self.plain(self.guide, condition), guidance)
        if self.conditioning == "none":
            return self.plain(self.denoiser, condition)
        if self.conditioning == "text":
            return self.prompt_guided(list(condition), guidance, negative)
        return guided(self.denoiser, condition.to(self.device), guidance, self.null_class)

    def unconditional(self, condition: Condition, negative: list[str] | None = None) -> bool:
        """Whether every image of a batch is asked for without a condition."""
        if self.conditioning == "none":
            return True
        if self.conditioning == "text":
            return negative is None and all(p == "" for p in condition)
        return bool((torch.as_tensor(condition) == self.null_class).all())

    def plain(self, net: nn.Module, condition: Condition):
        """``net`` (the denoiser or the guide) as a model_fn for one condition per image, unguided."""
        if self.conditioning == "none":
            return lambda x, t: net(x, t)
        if self.conditioning == "text":
            states, pooled, mask = (v.to(self.device) for v in self.text.encode(list(condition)))
            return lambda x, t: net(x, t, context=states, context_mask=mask, pooled=pooled)
        y = condition.to(self.device)
        return lambda x, t: net(x, t, y)

    def autoguidance(self, guidance: float | None) -> float:
        """w for an unconditional sample: --guidance, else the recipe's; 1 (off) without a guide."""
        if self.guide is None:
            return 1.0
        return self.defaults.autoguidance if guidance is None else guidance

    def prompt_guided(self, prompts: list[str], w: float, negative: list[str] | None = None):
        """Classifier-free guidance on prompts (Ho & Salimans 2022, eq. 6), in one batched call:

            out = out(negative) + w (out(prompt) − out(negative)),

        where the negative prompt is "" (the unconditional model, as trained by dropping 10% of
        the captions) unless given: a negative prompt is what guidance steers away from.
        """
        negative = [""] * len(prompts) if negative is None else list(negative)
        if len(negative) != len(prompts):
            raise ValueError(f"{len(negative)} negative prompts for {len(prompts)} prompts")
        both = prompts if w == 1.0 else prompts + negative  # encoded together: one padded length
        states, pooled, mask = (v.to(self.device) for v in self.text.encode(both))  # (B or 2B, L, D), (., D), (., L)

        def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if w == 1.0:
                return self.denoiser(x, t, context=states, context_mask=mask, pooled=pooled)
            out = self.denoiser(torch.cat([x, x]), torch.cat([t, t]), context=states, context_mask=mask, pooled=pooled)
            cond, uncond = out.chunk(2)  # (B, ...) each
            return uncond + w * (cond - uncond)

        return model_fn

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

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
    denoiser.load_state_dict(ckpt.weights("ema" if ckpt.has("ema") else "model"))
    vae, scale = load_vae(ckpt, device, prefix="vae")
    norm = LatentNorm(tuple(meta["latent_shape"]))
    if ckpt.has("latent_norm"):
        norm.load_state_dict(ckpt.weights("latent_norm"))
    else:  # a checkpoint from before per-element standardisation: one global scale factor
        norm = LatentNorm.global_scale(tuple(meta["latent_shape"]), scale)
    text = None
    if meta.get("conditioning") == "text":
        from vdcli.tasks.clip import load_text_encoder

        text = load_text_encoder(ckpt, device, prefix="clip")
    guide = None
    if ckpt.has("guide"):  # saved from train.guide_at's step on
        guide = build_denoiser(meta)
        guide.load_state_dict(ckpt.weights("guide"))
        guide = frozen(guide, device, compile)
    return LDM(frozen(denoiser, device, compile), vae, norm.to(device),
               NoiseSchedule.from_config(DiffusionConfig(**meta["diffusion"])), meta["data"]["classes"],
               tuple(meta["latent_shape"]), SampleConfig(**meta["sample"]), meta.get("conditioning", "class"), text, guide)


# --- vd sample --------------------------------------------------------------------------------


@torch.no_grad()
def generate(
    ldm: LDM,
    labels: Condition,
    *,
    sampler: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    guidance: float = 1.0,
    negative: list[str] | None = None,
    generator: torch.Generator | None = None,
    trajectory: bool = False,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Images (uint8 [B, C, H, W]) for class ``labels`` (null_class: unconditional), or for a text
    model one prompt per image ("" is unconditional), with optional ``negative`` prompts.

    With ``trajectory``, also the decoded x̂_0 prediction after every step (uint8, [B, C, H, W] each).
    """
    noise = torch.randn((len(labels), *ldm.latent_shape), generator=generator).to(ldm.device)  # CPU draw: same on every device
    frames: list[torch.Tensor] = []

    def record(i, t, x, x0_pred):
        frames.append(ldm.decode(x0_pred))

    z = sample(ldm.model_fn(labels, guidance, negative), noise, ldm.schedule, sampler, steps, eta,
               generator=generator, callback=record if trajectory else None)
    return ldm.decode(z), frames


@torch.no_grad()
def image_to_image(
    ldm: LDM,
    image: torch.Tensor,
    label: int | str,
    strengths: list[float],
    *,
    n: int = 4,
    sampler: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    guidance: float = 1.0,
    negative: str | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """SDEdit (Meng et al. 2022): ``image`` (uint8 [C, H, W]) made anew n ways per strength, with
    the class or prompt ``label``. Returns uint8 [n, len(strengths), C, H, W].

    The image's latent is noised to the timestep each strength stands for
    (``diffusion.strength_start``) and denoised from there by the one sampling loop. Every
    strength starts from the same seed, so a row shares its noise: strength 1 is exactly
    ``vd sample`` with that seed, strength 0 the decoded input.
    """

    z_init = ldm.encode(to_float(image)[None]).expand(n, *ldm.latent_shape)  # (n, c, h, w)
    labels = [label] * n if isinstance(label, str) else torch.full((n,), label)
    model_fn = ldm.model_fn(labels, guidance, None if negative is None else [negative] * n)
    columns = []
    for strength in strengths:
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn((n, *ldm.latent_shape), generator=generator).to(ldm.device)  # as generate() draws it
        start = strength_start(sampler, steps, ldm.schedule.T, strength)
        if start == -1:
            z = z_init
        elif start is None:
            z = sample(model_fn, noise, ldm.schedule, sampler, steps, eta, generator=generator)
        else:
            x = add_noise(ldm.schedule, z_init, noise, torch.full((n,), start))
            z = sample(model_fn, x, ldm.schedule, sampler, steps, eta, generator=generator, start_t=start)
        columns.append(ldm.decode(z))
    return torch.stack(columns, dim=1)


def condition(ldm: LDM, spec: str | None, guidance: float | None, single: bool = False, prompts: list[str] | None = None,
              negative: str | None = None) -> tuple[list, list[str], float]:
    """(labels, their names, guidance w) for a --class option: '7', 'seven', '3,7', 'all' or 'none'.

    'none' is the null class, autoguided when the model kept a guide (w: ``LDM.autoguidance``);
    otherwise w defaults to the recipe's. No option means 'all' for a class model; an
    unconditional model (conditioning: none) takes none.
    """
    if ldm.conditioning == "text" or prompts or negative is not None:  # --class 7 on a text model is the prompt "7"
        prompts, names, w = condition_prompts(ldm, prompts, spec, guidance, negative)
        if single and len(prompts) > 1:
            raise VdError(f"--{'prompt' if spec is None else 'class ' + spec}: give one here")
        return prompts, names, w
    if ldm.conditioning == "none":
        if spec is not None and spec.strip().lower() != "none":
            raise VdError(f"--class {spec}: this model was trained without classes (conditioning: none); leave --class out")
        return [ldm.null_class], ["unconditional"], ldm.autoguidance(guidance)
    spec = "all" if spec is None else spec
    if spec.strip().lower() == "none":
        return [ldm.null_class], ["unconditional"], ldm.autoguidance(guidance)
    labels = parse_classes(spec, ldm.classes)
    if single and len(labels) > 1:
        raise VdError(f"--class {spec}: give one class here")
    return labels, [ldm.classes[c] for c in labels], ldm.defaults.guidance if guidance is None else guidance


def condition_prompts(ldm: LDM, prompts: list[str] | None, spec: str | None, guidance: float | None,
                      negative: str | None = None) -> tuple[list[str], list[str], float]:
    """(prompts, their row names, guidance w) for --prompt / --class on a text model.

    --class items become prompts as typed ('7', 'seven'; 'all': every class name; 'none': the empty
    prompt, autoguided when there is a guide); a class model asked for prompts is a one-line error.
    """
    if ldm.conditioning != "text":
        if prompts or negative is not None:
            option = "--prompt" if prompts else "--negative-prompt"
            raise VdError(f"{option}: this model was trained with conditioning: {ldm.conditioning}, not text; "
                          f"use --class, or a model trained from a text recipe (recipes/mnist_text.yaml)")
        raise ValueError("condition_prompts is for text models")
    if prompts and spec is not None:
        raise VdError(f"--prompt and --class {spec}: give one of them (on a text model --class {spec} means --prompt {spec})")
    w = ldm.defaults.guidance if guidance is None else guidance
    if prompts:
        return list(prompts), [p or "unconditional" for p in prompts], w
    spec = "all" if spec is None else spec
    if spec.strip().lower() == "none":
        return [""], ["unconditional"], ldm.autoguidance(guidance)
    if spec.strip().lower() == "all":
        return list(ldm.classes), list(ldm.classes), w
    parse_classes(spec, ldm.classes)  # a typo is still an error that names the nearest class
    typed = [p.strip() for p in spec.split(",") if p.strip()]
    return typed, typed, w


def generate_batched(ldm: LDM, labels: Condition, batch_size: int, *, generator: torch.Generator,
                     trajectory: bool = False, quiet: bool = False, **options) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``generate`` in batches of ``batch_size``, with progress; the trajectory is the first batch's."""
    samples, frames = [], []
    negative = options.pop("negative", None)  # one per image, like the labels
    with Reporter(len(labels), title="sample", every=batch_size, quiet=quiet) as report:
        for i in range(0, len(labels), batch_size):
            batch, batch_frames = generate(ldm, labels[i : i + batch_size], generator=generator,
                                           negative=None if negative is None else negative[i : i + batch_size],
                                           trajectory=trajectory and i == 0, **options)
            samples.append(batch)
            frames = frames or batch_frames
            report.update(min(i + batch_size, len(labels)), items=len(batch))
    return torch.cat(samples), frames


def repeat(conditions: list, n: int) -> Condition:
    """Each condition n times in a row: labels as a tensor, prompts as a list."""
    if conditions and isinstance(conditions[0], str):
        return [c for c in conditions for _ in range(n)]
    return torch.tensor(conditions).repeat_interleave(n)


def class_grid(ldm: LDM, classes: list, per_class: int, seed: int, **options) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """per_class samples of each class (or prompt), row by row, from a fixed seed."""
    return generate(ldm, repeat(classes, per_class), generator=torch.Generator().manual_seed(seed), **options)


def save_class_grid(samples: torch.Tensor, row_names: list[str], per_class: int, out: Path) -> Path:
    picture = images.grid(samples, nrow=per_class)
    return images.save(images.with_row_labels(picture, row_names, picture.height // len(row_names)), out)


def save_image_to_image(image: torch.Tensor, made: torch.Tensor, strengths: list[float], out: Path) -> list[Path]:
    """grid.png: per row the input, then one column per strength; and every image under images/."""
    n, k = made.shape[:2]
    out.mkdir(parents=True, exist_ok=True)
    rows = torch.cat([image.expand(n, 1, *image.shape), made], dim=1).flatten(0, 1)  # (n · (k + 1), C, H, W)
    picture = images.grid(rows, nrow=k + 1)
    labels = ["input"] + [f"strength {x:g}" for x in strengths]
    written = [images.save(images.with_column_labels(picture, labels, picture.width // (k + 1)), out / "grid.png")]
    (out / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        for j, x in enumerate(strengths):
            images.save(images.to_pil(made[i, j]), out / "images" / f"strength{x:g}_{i}.png")
    return written + [out / "images"]


@torch.no_grad()
def inpaint(
    ldm: LDM, image: torch.Tensor, mask: torch.Tensor, label: int | str, *, n: int = 4, steps: int = 50,
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
    labels = [label] * n if isinstance(label, str) else torch.full((n,), label, device=ldm.device)  # a prompt, or a class

    def keep_known(i: int, t_next: int, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        if t_next < 0:
            known = z_known.expand_as(x)
        else:
            eps = torch.randn(x.shape, generator=generator).to(x)
            known = add_noise(ldm.schedule, z_known.expand_as(x), eps, torch.full((n,), t_next))
        return free * x + (1 - free) * known

    noise = torch.randn((n, *ldm.latent_shape), generator=generator).to(ldm.device)
    z = sample(ldm.model_fn(labels, guidance, None if negative is None else [negative] * n), noise, ldm.schedule,
               "ddim", steps, generator=generator, callback=keep_known)
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
        return ldm.model_fn(ldm.null_condition(n))

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
    from vdcli.models.attention import recording

    if ldm.conditioning != "text":
        raise VdError(f"--prompt: this model was trained with conditioning: {ldm.conditioning}, not text; "
                      f"attention to words needs a model trained from a text recipe (recipes/mnist_text.yaml)")
    w = ldm.defaults.guidance if guidance is None else guidance
    _, _, mask = ldm.text.encode([prompt])  # (1, L): which positions hold real tokens
    positions = mask[0].nonzero().flatten().tolist()
    words = ldm.text.tokens(prompt)
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


# --- vd train-ldm -----------------------------------------------------------------------------


def train(recipe: LDMRecipe, run: Run, **options):
    """``vd train-ldm``: ``tasks/ldm_train.py`` (the CLI finds every command's ``train`` in ``tasks/<kind>.py``)."""
    from vdcli.tasks.ldm_train import train as train_ldm

    return train_ldm(recipe, run, **options)

