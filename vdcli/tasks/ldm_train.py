"""``vd train-ldm``: train a denoiser on VAE latents, from nothing when the recipe names no stages.

With no VAE checkpoint in the recipe it first trains the VAE from the recipe's ``vae:`` section,
in ``<run>/vae/`` (and for a text model the CLIP, in ``<run>/clip/``: ``stages.py``). It then
encodes the dataset once (the posterior means and log-variances are cached in
``<run>/latents.safetensors``, or for a streamed folder in shards under ``<run>/latents/``) and
trains the denoiser on standardised latent samples z = (μ + σ ε − mean) / std, with the mean and
std of every latent element over the training set (``LatentNorm``: why per element, not one
global scale factor, is written there), through the one trainer (``trainer.fit``). The
checkpoint carries the VAE, the latent statistics, a text model's CLIP, and with
``train.guide_at`` autoguidance's guide: ``tasks/ldm.py`` samples from it alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vdcli.conditioning import STRATEGIES, strategy
from vdcli.data import data_spec, load_split
from vdcli.diffusion import NoiseSchedule, diffusion_loss
from vdcli.models.vae import LatentNorm
from vdcli.recipe import LDMRecipe
from vdcli.runs import Run
from vdcli.streaming import at_most
from vdcli.tasks.clip import caption_source, load_text_encoder
from vdcli.tasks.diffuse import VAECodec, write_diffusion_pictures
from vdcli.tasks.ldm import LDM, build_denoiser, class_grid, save_class_grid
from vdcli.tasks.stages import cached_latents, first_stage, named_clip, named_vae, text_stage
from vdcli.tasks.vae import load_vae
from vdcli.trainer import EvalFn, Snapshot, fit, seeded_init


@dataclass
class LDMSummary:
    run: Run
    loss: float
    steps: int
    seconds: float
    vae_note: str
    files: list[Path]
    next_hint: str = "--class all"  # what vd sample should be told next


def train(recipe: LDMRecipe, run: Run, *, device: torch.device, data_root=None, resume=False, quiet=False,
          hooks: tuple[EvalFn, ...] = ()) -> LDMSummary:
    """``hooks``: more evaluations, each ``hook(ema_model, step)`` at every ``train.eval_every``
    (bench/autoguidance.py keeps the weights of each)."""
    named_vae(recipe)  # a typo in vae.checkpoint fails now, not after the data is loaded
    text_model = STRATEGIES[recipe.conditioning].reads_text  # then a CLIP stage too
    if text_model:
        named_clip(recipe)
    train_set = load_split(recipe.data, "train", data_root)
    test_set = load_split(recipe.data, "test", data_root)
    vae_ckpt, vae_note = first_stage(recipe, run, train_set, test_set, device, resume, quiet)
    if text_model:
        clip_ckpt, clip_note = text_stage(recipe, run, train_set, test_set, device, resume, quiet)
        vae_note += f"; {clip_note}"
    vae, scale = load_vae(vae_ckpt, device)
    mean, logvar = cached_latents(vae, train_set, run, device, quiet)
    norm = LatentNorm.fit(at_most(mean, 60_000), at_most(logvar, 60_000)).to(device)  # all of MNIST; a sample of a large folder

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
    extra = {"vae": vae, "latent_norm": norm}
    text, captioner = None, None
    if text_model:
        text = load_text_encoder(clip_ckpt, device)
        captioner = caption_source(clip_ckpt, recipe.data, train_set, data_root)  # captions of the training images, by index
        meta["clip"] = clip_ckpt.meta
        meta["text"] = {"dim": text.dim, "max_length": text.max_length}
        extra["clip"] = clip_ckpt.trained()  # CLIP (and its tokenizer, in meta) travels along
    conditioning = strategy(recipe.conditioning, spec["classes"], text, captioner)
    with seeded_init(recipe.train.seed, "denoiser"):
        model = build_denoiser(meta)
    schedule = NoiseSchedule.from_config(recipe.diffusion)
    cfg = recipe.train
    guide, snapshots = None, []
    if cfg.guide_at:  # autoguidance's bad model: the EMA weights at this step, copied by the trainer
        meta["guide_step"] = max(1, round(cfg.guide_at * cfg.steps))
        with seeded_init(cfg.seed, "guide"):  # its initial weights are overwritten; this keeps the global RNG as it was
            guide = build_denoiser(meta).requires_grad_(False)
        snapshots.append(Snapshot("guide", meta["guide_step"], guide))

    def loss_fn(model: nn.Module, batch):
        mean, logvar, rows = batch
        z = norm(mean + (0.5 * logvar).exp() * torch.randn_like(mean))  # a fresh posterior sample each time
        cond = conditioning.training(rows, cfg.cond_drop_prob, z.device)
        return diffusion_loss(lambda x, t: model(x, t, cond), z, schedule, recipe.diffusion.min_snr_gamma), {}

    # One row per class or prompt (at most ten) and a last row asking for nothing, the
    # unconditional model that guidance extrapolates from (autoguided once there is a guide); an
    # unconditional model fills all eight rows.
    shown, unconditional, names = conditioning.grid_rows(recipe.sample.prompts)

    def evaluate(model: nn.Module, step: int) -> dict:
        t0 = time.perf_counter()
        ldm = LDM(model, vae, norm, schedule, conditioning, vae.latent_shape, recipe.sample,
                  guide if guide is not None and step >= meta["guide_step"] else None)
        options = dict(sampler=recipe.sample.sampler, steps=recipe.sample.steps, eta=recipe.sample.eta)
        rows = [class_grid(ldm, shown, 8, seed=0, guidance=recipe.sample.guidance, **options)[0]] if shown else []
        rows.append(class_grid(ldm, unconditional, 8, seed=0, guidance=ldm.autoguidance(None), **options)[0])
        made = dict(made_by="train-ldm", run=str(run.dir), step=step, rows=names, n=8, seed=0, sampler=recipe.sample.sampler,
                    steps=recipe.sample.steps, eta=recipe.sample.eta, guidance=recipe.sample.guidance,
                    autoguidance=ldm.autoguidance(None))  # the EMA weights of this step (no file to hash yet)
        save_class_grid(torch.cat(rows), names, 8, run.dir / f"samples_{step:06d}.png", meta=made)
        return {"sample_seconds": time.perf_counter() - t0}

    pictures = [run.dir / "forward_process.png", run.dir / "schedule.png"]
    if not all(p.exists() for p in pictures):  # once per run: what the forward process does to this data
        write_diffusion_pictures(test_set.images[0], schedule, recipe.diffusion.schedule, VAECodec(vae, norm=norm), run.dir)

    result = fit(model, loss_fn, (mean, logvar, conditioning.column(train_set)), cfg, run, kind="ldm", meta=meta,
                 device=device, evaluate=[evaluate, *hooks], extra=extra, snapshots=snapshots, resume=resume, quiet=quiet)
    grids = sorted(run.dir.glob("samples_*.png"))
    files = [run.checkpoint, run.dir / "loss.png", *grids[-1:], *pictures]
    return LDMSummary(run, result.loss, result.step, result.seconds, vae_note, files, conditioning.next_hint(recipe.sample.prompts))
