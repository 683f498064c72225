"""ControlNet: train one on a frozen LDM, and sample with a control map.

``train`` reads the base LDM run the recipe names (its denoiser frozen, its VAE, data and
condition drop rate), computes the recipe's control map of every training image once
(``controls.control_maps``, cached in ``<run>/controls.safetensors``), and trains
the ControlNet that fits the base (``models.controlnet``: a copy of a U-Net's encoder, or of a
DiT's first blocks) through ``trainer.fit`` on the base's own loss: the base's
prediction with the ControlNet's residuals added, against the same target. The condition is
dropped at the base's rate (labels to the null class; a text base's captions, drawn as it drew
them, to the empty prompt) and control maps to an empty map at ``control_drop_prob``.

The checkpoint (kind "controlnet") carries the whole base checkpoint under ``base.`` (its meta
under meta["base"]), so ``vd sample --controlnet RUN`` needs nothing else.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vdcli import images
from vdcli.checkpoint import KINDS, Checkpoint, atomic_write, load_checkpoint, read_header
from vdcli.controls import control_maps
from vdcli.data import load_split
from vdcli.device import frozen
from vdcli.diffusion import diffusion_loss
from vdcli.errors import VdError
from vdcli.conditioning import strategy
from vdcli.models.controlnet import Controlled, controlnet_for
from vdcli.recipe import ControlNetRecipe, DataConfig
from vdcli.runs import Run, find_checkpoint
from vdcli.tasks.clip import caption_source
from vdcli.tasks.ldm import LDM, generate, load_ldm
from vdcli.tasks.stages import cached_latents
from vdcli.trainer import fit, seeded_init


def base_checkpoint(named: str) -> Path:
    """The base LDM checkpoint a ControlNet recipe names, checked from its header before any work."""
    if not Path(named).exists():
        raise VdError(f"base {named} not found; give the LDM run folder or checkpoint to control (vd train-ldm)")
    path, _ = find_checkpoint(named, "ldm")
    header = read_header(path)
    if header.get("kind") != "ldm":
        raise VdError(f"base {path} is {KINDS.get(header.get('kind'), 'not a vd checkpoint')}, but a ControlNet needs {KINDS['ldm']}")
    return path


def embedded_base(ckpt: Checkpoint) -> Checkpoint:
    """The base LDM checkpoint a ControlNet checkpoint carries."""
    start = "base."
    return Checkpoint(ckpt.path, "ldm", ckpt.meta["base"], {k[len(start):]: v for k, v in ckpt.tensors.items() if k.startswith(start)})


def build_controlnet(base: nn.Module, meta: dict) -> nn.Module:
    """The ControlNet for a base denoiser (U-Net or DiT) of an LDM whose meta is ``meta``."""
    return controlnet_for(base, meta["data"]["image_size"] // meta["latent_shape"][-1])


@dataclass
class ControlledLDM:
    ldm: LDM  # the base
    controlnet: nn.Module  # models.controlnet.ControlNet or DiTControlNet
    control: str  # edges, scribble or depth
    image_size: int  # the base's images, and so the control maps, are image_size x image_size

    def steered(self, hint: torch.Tensor, scale: float = 1.0) -> LDM:
        """The base LDM with its denoiser steered at ``scale`` by one control map (uint8 [1, H, W]) for
        every image, or by one map per image (uint8 [B, 1, H, W], in the order of the images)."""
        hint = hint.float() / 255.0
        hint = (hint[None] if hint.dim() == 3 else hint).to(self.ldm.device)  # (1 or B, 1, H, W)
        return replace(self.ldm, denoiser=Controlled(self.ldm.denoiser, self.controlnet, hint, scale), guide=None)  # the guide sees no map


def load_controlled(ckpt: Checkpoint, device: torch.device, compile: bool = False) -> ControlledLDM:
    """``compile``: the base denoiser and the ControlNet each through ``torch.compile``; every map's
    ``Controlled`` then calls the same two compiled networks."""
    base = load_ldm(embedded_base(ckpt), device)
    net = build_controlnet(base.denoiser, ckpt.meta["base"])  # copies the plain base's encoder
    net.load_state_dict(ckpt.trained())
    if compile:
        base = replace(base, denoiser=frozen(base.denoiser, device, compile=True))
    return ControlledLDM(base, frozen(net, device, compile), ckpt.meta["control"], ckpt.meta["data"]["image_size"])


@dataclass
class ControlNetSummary:
    run: Run
    loss: float
    steps: int
    seconds: float
    files: list[Path]
    next_hint: str = "--control mnist:test:7 --class all --n 1"  # what vd sample should be told next


def cached_controls(run: Run, train_images: torch.Tensor, kind: str) -> torch.Tensor:
    """The ``kind`` control map of every training image (uint8 [N, 1, H, W]), computed once per run."""
    path = run.dir / "controls.safetensors"
    if path.is_file():
        return load_file(str(path))["controls"]
    maps = control_maps(train_images, kind)
    atomic_write(path, lambda tmp: save_file({"controls": maps.contiguous()}, str(tmp)))
    return maps


def control_grid(model: ControlledLDM, maps: list[torch.Tensor], requests: list, n: int, seed: int = 0, scale: float = 1.0,
                 negative: str | None = None, **options) -> torch.Tensor:
    """Per control map (uint8 [1, H, W] each) a row: n samples of each request (a class or a prompt),
    from one seed per row. uint8 [len(maps), len(requests) · n, C, H, W]."""
    wanted = model.ldm.conditioning.repeat(requests, n)
    rows = []
    for hint in maps:
        steered = model.steered(hint, scale)
        neg = None if negative is None else [negative] * len(wanted)
        samples, _ = generate(steered, wanted, generator=torch.Generator().manual_seed(seed), negative=neg, **options)
        rows.append(samples)
    return torch.stack(rows)


def save_control_grid(samples: torch.Tensor, maps: list[torch.Tensor], names: list[str], columns: list[str], out: Path,
                      meta: dict | None = None) -> list[Path]:
    """grid.png: per row (named by ``names``) the control map, then its samples (named by ``columns``);
    and every image under images/, each PNG carrying ``meta`` (``images.save``)."""
    def about(file: str, **more):
        return None if meta is None else {**meta, "file": file, **more}

    out.mkdir(parents=True, exist_ok=True)
    channels, per_row = samples.shape[2], samples.shape[1]
    rows = torch.cat([torch.cat([m.expand(channels, -1, -1)[None], s]) for m, s in zip(maps, samples)])
    picture = images.grid(rows, nrow=per_row + 1)
    labelled = images.with_row_labels(picture, [Path(x).name for x in names], picture.height // len(maps))
    labelled = images.with_column_labels(labelled, ["the map", *columns], picture.width // (per_row + 1),
                                         left=labelled.width - picture.width)
    written = [images.save(labelled, out / "grid.png", about("grid.png"))]
    (out / "images").mkdir(exist_ok=True)
    for r, row in enumerate(samples):
        for i, image in enumerate(row):
            images.save(images.to_pil(image), out / "images" / f"control{r}_{i}.png",
                        about(f"images/control{r}_{i}.png", image=columns[i], control_map=names[r]))
    return written + [out / "images"]


def train(recipe: ControlNetRecipe, run: Run, *, device: torch.device, data_root=None, resume=False, quiet=False) -> ControlNetSummary:
    path = base_checkpoint(recipe.base)
    base_ckpt = load_checkpoint(path, "ldm")
    base_meta = base_ckpt.meta
    base = load_ldm(base_ckpt, device)
    # Control maps are computed for every training image in memory, so a base trained on a streamed
    # folder is read into memory here: streaming a ControlNet's data is not written yet.
    data_cfg = DataConfig(**{**base_meta["recipe"]["data"], "stream": False})
    train_set = load_split(data_cfg, "train", data_root)
    test_set = load_split(data_cfg, "test", data_root)
    mean, logvar = cached_latents(base.vae, train_set, run, device)
    hints = cached_controls(run, train_set.images, recipe.control)

    with seeded_init(recipe.train.seed, "controlnet"):
        net = build_controlnet(base.denoiser, base_meta)  # a copy of the base's encoder; the new layers start at zero
    base.denoiser.requires_grad_(False)
    schedule, cfg = base.schedule, recipe.train
    drop_rate = base_meta["recipe"]["train"]["cond_drop_prob"]
    gamma = base_meta["diffusion"].get("min_snr_gamma")
    captioner = None
    if base.conditioning.reads_text:  # the base's own captions of the training images, drawn anew each step
        captioner = caption_source(base_ckpt, data_cfg, train_set, data_root, prefix="clip")
    conditioning = strategy(base.conditioning.name, base.classes, base.conditioning.text, captioner)

    def loss_fn(model: nn.Module, batch):
        mean, logvar, rows, hint = batch
        z = base.norm(mean + (0.5 * logvar).exp() * torch.randn_like(mean))
        hint = hint.float() / 255.0  # (B, 1, H, W)
        keep = (torch.rand(len(hint), device=hint.device) >= cfg.control_drop_prob).float()
        hint = hint * keep[:, None, None, None]  # an empty map: what --control-scale scales away from
        cond = conditioning.training(rows, drop_rate, z.device)  # dropped at the base's rate, as the base was trained

        def model_fn(x, t):
            return base.denoiser(x, t, cond, control=model(x, t, hint, cond))

        return diffusion_loss(model_fn, z, schedule, gamma), {}

    shown = torch.arange(4)  # the first test images' maps, one row each, asked for the map's own class
    shown_maps = list(control_maps(test_set.images[shown], recipe.control))
    shown_requests = [conditioning.of_class(int(test_set.labels[i])) for i in shown]
    defaults = base.defaults

    def evaluate(model: nn.Module, step: int) -> dict:
        t0 = time.perf_counter()
        controlled = ControlledLDM(base, model, recipe.control, base_meta["data"]["image_size"])
        rows = [control_grid(controlled, [m], [request], 8, sampler=defaults.sampler, steps=defaults.steps, eta=defaults.eta,
                             guidance=defaults.guidance)[0] for m, request in zip(shown_maps, shown_requests)]
        channels = rows[0].shape[1]
        picture = images.grid(torch.cat([torch.cat([m.expand(channels, -1, -1)[None], r]) for m, r in zip(shown_maps, rows)]), nrow=9)
        names = [f"{recipe.control} of {base.classes[int(test_set.labels[i])]}" for i in shown]
        made = dict(made_by="train-controlnet", run=str(run.dir), step=step, control=recipe.control, rows=names, n=8, seed=0,
                    sampler=defaults.sampler, steps=defaults.steps, eta=defaults.eta, guidance=defaults.guidance)
        images.save(images.with_row_labels(picture, names, picture.height // len(names)), run.dir / f"samples_{step:06d}.png", made)
        return {"sample_seconds": time.perf_counter() - t0}

    meta = {"base": base_meta, "control": recipe.control, "data": base_meta["data"], "recipe": recipe.model_dump(mode="json"),
            "base_path": str(path)}
    result = fit(net, loss_fn, (mean, logvar, conditioning.column(train_set), hints), cfg, run, kind="controlnet", meta=meta,
                 device=device, evaluate=evaluate, extra={"base": base_ckpt.tensors}, resume=resume, quiet=quiet)
    grids = sorted(run.dir.glob("samples_*.png"))
    name = base_meta["data"]["name"]
    example = f"{name}:test:7" if name not in ("folder", "synthetic") else "MAP.png"
    hint = f"--control {example} {conditioning.next_hint(base.defaults.prompts)} --n 1"
    return ControlNetSummary(run, result.loss, result.step, result.seconds, [run.checkpoint, run.dir / "loss.png", *grids[-1:]], hint)
