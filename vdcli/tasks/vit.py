"""The ViT path: cut images into patches, train a classifier, see what it attends to.

Each function here is what one command does, callable from Python with the same arguments;
``cli.py`` only parses options and prints the summary these return.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from vdcli import images
from vdcli.checkpoint import Checkpoint, atomic_write
from vdcli.data import ImageSet, data_spec, load_split, to_float, to_uint8
from vdcli.errors import VdError
from vdcli.models.patches import patchify
from vdcli.models.vit import ViT, ViTConfig, attention_rollout
from vdcli.recipe import ViTRecipe
from vdcli.runs import Run
from vdcli.trainer import fit, seeded_init


def build_vit(meta: dict) -> ViT:
    data = meta["data"]
    return ViT(ViTConfig(**meta["model"]), data["image_size"], data["channels"], len(data["classes"]))


def load_vit(ckpt: Checkpoint, device: torch.device) -> ViT:
    model = build_vit(ckpt.meta)
    model.load_state_dict(ckpt.trained())
    return model.to(device).eval()


# --- vd patchify ------------------------------------------------------------------------------


@dataclass
class Patches:
    grid_png: Path
    sequence_png: Path
    tensor_path: Path
    shape: tuple[int, ...]
    rows: int
    cols: int


def export_patches(image: torch.Tensor, patch: int, out: Path) -> Patches:
    """Write grid.png, sequence.png and patches.safetensors for a uint8 [C, H, W] image.

    The tensor is [N, C*P*P] in [-1, 1]: exactly what ViT's patch embedding receives, made by
    the same ``patchify``.
    """
    c, h, w = image.shape
    if h % patch or w % patch:
        raise VdError(f"a {w}x{h} image does not split into {patch}x{patch} patches; pass --size a multiple of {patch} or another --patch")
    rows, cols = h // patch, w // patch
    seq = patchify(to_float(image)[None], patch)[0]  # (N, C*P*P)
    out.mkdir(parents=True, exist_ok=True)
    tensor_path = out / "patches.safetensors"
    meta = {"patch_size": str(patch), "grid": f"{rows}x{cols}", "channels": str(c), "order": "row-major from the top left", "range": "[-1, 1]"}
    atomic_write(tensor_path, lambda tmp: save_file({"patches": seq.contiguous()}, str(tmp), metadata=meta))
    grid_png = images.save(images.patch_grid_image(image, patch), out / "grid.png")
    tiles = to_uint8(seq.view(-1, c, patch, patch))  # (N, C, P, P): the sequence, one tile per token
    per_row = min(len(tiles), max(cols, 16))
    strip = images.grid(tiles, nrow=per_row, pad=1, scale=max(1, 48 // patch), fill=255)
    labels = [f"{i}-{min(i + per_row, len(tiles)) - 1}" if i + 1 < len(tiles) else str(i) for i in range(0, len(tiles), per_row)]
    sequence_png = images.save(images.with_row_labels(strip, labels, strip.height // len(labels)), out / "sequence.png")
    return Patches(grid_png, sequence_png, tensor_path, tuple(seq.shape), rows, cols)


# --- vd train-vit -----------------------------------------------------------------------------


@dataclass
class ViTSummary:
    run: Run
    accuracy: float
    steps: int
    seconds: float
    files: list[Path]


def random_shift(x: torch.Tensor, pixels: int) -> torch.Tensor:
    """Translate each image by up to ``pixels`` in x and y, filling with black: cheap and label-preserving."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pixels,) * 4, value=-1.0)  # (B, C, H + 2p, W + 2p)
    dy, dx = torch.randint(0, 2 * pixels + 1, (2, b, 1), device=x.device)
    rows = (torch.arange(h, device=x.device) + dy)[:, None, :, None]  # (B, 1, H, 1)
    cols = (torch.arange(w, device=x.device) + dx)[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]  # (B, C, H, W)


@torch.no_grad()
def predict(model: ViT, data: ImageSet, device: torch.device, batch: int = 500) -> torch.Tensor:
    """Predicted class of every image, [N]."""
    model.eval()
    out = [model(to_float(data.images[i : i + batch].to(device))).argmax(-1).cpu() for i in range(0, len(data), batch)]
    return torch.cat(out)


def train(recipe: ViTRecipe, run: Run, *, device: torch.device, data_root=None, resume=False, quiet=False) -> ViTSummary:
    train_set = load_split(recipe.data, "train", data_root)
    test_set = load_split(recipe.data, "test", data_root)
    spec = data_spec(recipe.data, train_set)
    meta = {"model": recipe.model.model_dump(), "data": spec, "recipe": recipe.model_dump(mode="json")}
    cfg = recipe.train
    with seeded_init(cfg.seed, "vit"):
        model = build_vit(meta)

    def loss_fn(model: ViT, batch):
        x, y = batch
        x = to_float(x)
        if recipe.data.shift:
            x = random_shift(x, recipe.data.shift)
        return F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing), {}

    def evaluate(model: ViT, step: int) -> dict:
        return {"test_accuracy": (predict(model, test_set, device) == test_set.labels).float().mean().item()}

    result = fit(model, loss_fn, (train_set.images, train_set.labels), cfg, run, kind="vit", meta=meta,
                 device=device, evaluate=evaluate, resume=resume, quiet=quiet)

    pred = predict(result.model, test_set, device)
    n = len(spec["classes"])
    confusion = torch.bincount(test_set.labels * n + pred, minlength=n * n).view(n, n)
    files = [run.checkpoint, images.confusion_matrix_image(confusion, spec["classes"], run.dir / "confusion.png")]
    wrong = (pred != test_set.labels).nonzero().flatten()[:64]
    if len(wrong):
        files.append(images.save(images.grid(test_set.images[wrong], nrow=16), run.dir / "misclassified.png"))
    files.append(run.dir / "loss.png")
    accuracy = (pred == test_set.labels).float().mean().item()
    return ViTSummary(run, accuracy, result.step, result.seconds, files)


# --- vd attn-map ------------------------------------------------------------------------------


@dataclass
class AttentionMaps:
    probs: torch.Tensor  # (classes,) softmax of the prediction
    heads: torch.Tensor  # (heads, rows, cols): class-token attention to each patch at `layer`
    rollout: torch.Tensor  # (rows, cols): attention rollout from the class token


@torch.no_grad()
def attention_maps(model: ViT, image: torch.Tensor, layer: int = -1, fusion: str = "mean", discard: float = 0.0) -> AttentionMaps:
    """Class-token attention of every head at ``layer``, and the rollout over all layers."""
    x = to_float(image)[None].to(next(model.parameters()).device)
    logits, attentions = model(x, return_attention=True)  # list of (1, heads, T, T), T = 1 + patches
    if not -len(attentions) <= layer < len(attentions):
        raise VdError(f"--layer {layer}: this ViT has {len(attentions)} layers (0..{len(attentions) - 1}, or -1 for the last)")
    rows, cols = model.grid_size if isinstance(model.grid_size, tuple) else (model.grid_size, model.grid_size)
    heads = attentions[layer][0, :, 0, 1:].reshape(-1, rows, cols)  # row 0 = the class token's query
    rollout = attention_rollout(attentions, head_fusion=fusion, discard_ratio=discard)[0, 0, 1:].reshape(rows, cols)
    return AttentionMaps(logits.softmax(-1)[0].cpu(), heads.cpu(), rollout.cpu())
