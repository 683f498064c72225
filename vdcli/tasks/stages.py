"""What a from-nothing LDM run prepares before its denoiser trains: the VAE (``first_stage``) and,
for a text model, the CLIP (``text_stage``), then the inputs it reads from them, computed once
(``cached_latents``: in memory, or for a streamed folder in shards on disk). Each
stage is the checkpoint the recipe names, checked from its header before any work (``named_vae``,
``named_clip``), or one trained now into ``<run>/vae/`` or ``<run>/clip/`` from the recipe's
section; a stage already finished there is reused on --resume.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vdcli import distributed
from vdcli.checkpoint import (
    KINDS,
    Checkpoint,
    atomic_write,
    load_checkpoint,
    read_header,
)
from vdcli.data import data_spec
from vdcli.errors import VdError
from vdcli.models.vae import AutoencoderKL
from vdcli.progress import Reporter, console
from vdcli.recipe import CLIPRecipe, LDMRecipe, denoiser_conflicts
from vdcli.runs import Run, find_checkpoint
from vdcli.shards import SHARD_ROWS, open_shards, shard_matches, shard_path, shard_ranges, write_shard
from vdcli.streaming import Column, FolderImages
from vdcli.tasks import clip
from vdcli.tasks.vae import encode_all, train_stage


def named_vae(recipe: LDMRecipe) -> Path | None:
    """The VAE checkpoint the recipe names (None: train one), checked from its header before any
    work: it exists, it is a VAE, it was trained at the recipe's image size, and the denoiser fits
    its latent grid. A typo here used to train a new VAE for minutes instead."""
    found = _named_stage(recipe.vae.checkpoint, "vae", "the first stage")
    if found is None:
        return None
    path, header = found
    meta = json.loads(header["meta"])
    size = meta["data"]["image_size"]
    if size != recipe.data.image_size:
        raise VdError(f"vae.checkpoint {path} was trained on {size}x{size} images, but data.image_size is "
                      f"{recipe.data.image_size}; set data.image_size: {size}")
    latent = size // meta["model"]["downsample"]
    for _, problem in denoiser_conflicts(recipe.model, latent, f"of the VAE in {path}"):
        raise VdError(problem)
    return path


def first_stage(recipe: LDMRecipe, run: Run, train_set, test_set, device, resume: bool, quiet: bool) -> tuple[Checkpoint, str]:
    """The VAE checkpoint the recipe names, or one trained now from its vae: section."""
    def say(line: str) -> None:
        if not quiet:
            console.print(line, soft_wrap=True)

    named = named_vae(recipe)
    if named:
        return load_checkpoint(named, "vae"), f"VAE from {named}"
    stage = Run(run.dir / "vae")
    done = stage.checkpoint.is_file() and "scale_factor" in load_checkpoint(stage.checkpoint, "vae").meta
    if not done:
        say(f"stage 1/2: training the VAE first (the recipe names no VAE checkpoint) in {stage.dir}")
        stage.dir.mkdir(parents=True, exist_ok=True)
        vae_recipe = {"kind": "vae", "data": recipe.data.model_dump(mode="json"), "model": recipe.vae.model.model_dump(),
                      "train": recipe.vae.train.model_dump()}
        meta = {"model": recipe.vae.model.model_dump(), "data": data_spec(recipe.data, train_set), "recipe": vae_recipe}
        summary = train_stage(recipe.vae.model, recipe.vae.train, meta, train_set, test_set, stage, device=device,
                              resume=resume and stage.checkpoint.is_file(), quiet=quiet)
        say(f"VAE: test PSNR {summary.psnr:.2f} dB, scale factor {summary.scale_factor:.4f}")
        say("stage 2/2: training the denoiser on its latents")
    return load_checkpoint(stage.checkpoint, "vae"), f"VAE trained in {stage.dir}"


def named_clip(recipe: LDMRecipe) -> Path | None:
    """The CLIP checkpoint the recipe names (None: train one), checked from its header before any work."""
    found = _named_stage(recipe.clip.checkpoint, "clip", "the text stage")
    return found and found[0]


def _named_stage(named: str | None, kind: str, stage: str) -> tuple[Path, dict] | None:
    """The checkpoint (and its header) that ``<kind>.checkpoint`` names, refused unless it is of ``kind``."""
    if not named:
        return None
    if not Path(named).exists():
        raise VdError(f"{kind}.checkpoint {named} not found; give {KINDS[kind]} checkpoint or run folder, "
                      f"or {kind}.checkpoint: null to train one first")
    path, _ = find_checkpoint(named, kind)
    header = read_header(path)
    if header.get("kind") != kind:
        what = KINDS.get(header.get("kind"), "not a vd checkpoint")
        raise VdError(f"{kind}.checkpoint {path} is {what}, but {stage} needs {KINDS[kind]}")
    return path, header


def text_stage(recipe: LDMRecipe, run: Run, train_set, test_set, device, resume: bool, quiet: bool) -> tuple[Checkpoint, str]:
    """The CLIP checkpoint the recipe names, or one trained now from its clip: section (in <run>/clip/),
    the way ``first_stage`` trains the VAE."""
    named = named_clip(recipe)
    if named:
        return load_checkpoint(named, "clip"), f"CLIP from {named}"
    stage = Run(run.dir / "clip")
    if not (stage.checkpoint.is_file() and load_checkpoint(stage.checkpoint, "clip").meta.get("done", True)):
        if not quiet:
            console.print(f"text stage: training CLIP first (the recipe names no CLIP checkpoint) in {stage.dir}", soft_wrap=True)
        stage.dir.mkdir(parents=True, exist_ok=True)
        clip.train_stage(clip_recipe(recipe), train_set, test_set, stage, device=device,
                         resume=resume and stage.checkpoint.is_file(), quiet=quiet)
    return load_checkpoint(stage.checkpoint, "clip"), f"CLIP trained in {stage.dir}"


def clip_recipe(recipe: LDMRecipe):
    """The CLIP recipe of a text LDM's text stage: its clip: section, on the LDM's data."""
    return CLIPRecipe(data=recipe.data, model=recipe.clip.model, train=recipe.clip.train)


def cached_latents(vae: AutoencoderKL, train_set, run: Run, device, quiet: bool = False) -> tuple[Column, Column]:
    """Posterior (mean, logvar) of every training image, computed once per run: tensors, or for a
    streamed folder columns read from shards on disk (``sharded_latents``)."""
    if isinstance(train_set.images, FolderImages):
        return sharded_latents(vae, train_set, run, device, quiet=quiet)
    path = run.dir / "latents.safetensors"
    if path.is_file():
        cache = load_file(str(path))
        return cache["mean"], cache["logvar"]
    mean, logvar = encode_all(vae, train_set, device)
    atomic_write(path, lambda tmp: save_file({"mean": mean.contiguous(), "logvar": logvar.contiguous()}, str(tmp)))
    return mean, logvar


def sharded_latents(vae: AutoencoderKL, train_set, run: Run, device, rows: int = SHARD_ROWS,
                    quiet: bool = False) -> tuple[Column, Column]:
    """(mean, logvar) of a streamed folder, encoded shard by shard into ``<run>/latents/`` (``shards.py``);
    shards already there (a resumed run) are checked against the folder's labels and kept."""
    folder, total = run.dir / "latents", len(train_set)
    ranges = shard_ranges(total, rows)
    paths = [shard_path(folder, k) for k in range(len(ranges))]
    if distributed.is_main():  # under torchrun rank 0 encodes; the others wait and read
        with Reporter(len(ranges), title="latent shards", every=1, quiet=quiet) as report:
            report.print(f"latents of {total} images: {len(ranges)} shards in {folder}")
            for k, (path, (first, end)) in enumerate(zip(paths, ranges)):
                labels = train_set.labels[first:end]
                if not (path.is_file() and shard_matches(path, first, total, labels)):
                    mean, logvar = encode_all(vae, train_set.take(torch.arange(first, end)), device)
                    write_shard(path, first, total, mean, logvar, labels)
                report.update(k + 1, items=end - first)
    distributed.barrier()
    mean, logvar, _ = open_shards(paths, train_set.images.workers)
    return mean, logvar
