"""CLIP on the user's own data: train it, score it, look at its embedding space, and hand its text
tower to a text-conditioned LDM.

``train`` writes captions for the training images (``captions.Captioner``: the label and words
measured on the pixels, a new phrasing at every step), trains a word-level tokenizer on every
phrasing the captioner can write (``tokenizer.Tokenizer``), and trains ``models/clip.CLIP`` with
the symmetric contrastive loss through ``trainer.fit``. The checkpoint (kind "clip") keeps the
weights, and in its meta the tokenizer (JSON), the captioner's thresholds and the model config:
it is usable alone, and nothing is downloaded.

Scores, on the test split:
- zero-shot accuracy: each test image is classified by the nearest of one prompt per class
  (``the digit zero`` ... ``the digit nine``, or the class names), as in Radford et al. 2021 sec. 3.1;
- text -> image recall@k: a caption is drawn for each of (at most) 1000 test images; a retrieved
  image counts as a hit when it shows the caption's class and has every attribute the caption
  names (captions like "7" fit a thousand test images, so "its own image" would measure luck).

The API a text-conditioned LDM uses (``tasks/ldm.py``):
- ``load_text_encoder(ckpt, device, prefix="") -> TextEncoder``: the text tower and tokenizer of a
  CLIP checkpoint (prefix ""), or of an LDM checkpoint that embedded its CLIP under ``prefix``
  (weights under "<prefix>.", the CLIP checkpoint's meta under meta[prefix]);
- ``TextEncoder.encode(prompts) -> (states [B, L, D], pooled [B, D], mask [B, L] bool, True = real
  token)``; L is the batch's longest prompt (≤ ``max_length``), D = ``dim``. The empty prompt is
  the single token [END]: a fixed "no condition" sequence. ``TextEncoder.tokens(prompt)`` are the
  words and "<end>", one per real position (labels of attention maps);
- ``train_stage(recipe, train_set, test_set, run, device=..., resume=..., quiet=...)`` trains a CLIP
  from a ``CLIPRecipe`` into ``run``, as ``vae.train_stage`` does for the VAE;
- ``caption_source(ckpt, data_cfg, train_set, data_root)``: the captioner of a training set with
  the CLIP checkpoint's thresholds (same words, same meaning); ``captioner_from(ckpt, prefix)``:
  its thresholds alone, for ``measure``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from vdcli import distributed, images
from vdcli.captions import Captioner
from vdcli.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from vdcli.conditioning import draw_captions
from vdcli.data import ImageSet, data_spec, load_split, to_float
from vdcli.models.clip import CLIP, CLIPConfig, clip_loss
from vdcli.models.clip import TextTransformer
from vdcli.progress import console
from vdcli.recipe import CLIPRecipe
from vdcli.runs import Run
from vdcli.tasks.vit import random_shift
from vdcli.tokenizer import Tokenizer
from vdcli.trainer import fit, seeded_init

RECALL_QUERIES = 1000
SHOWN_PROMPTS = {"mnist": ["the digit zero", "3", "a bold seven", "a thin 2 leaning left", "a small eight",
                           "a large 4 leaning right", "an upright one", "a bold 9 leaning left"]}


def build_clip(meta: dict) -> CLIP:
    data = meta["data"]
    return CLIP(CLIPConfig(**meta["model"]), data["image_size"], data["channels"], meta["vocab_size"])


def _tokenizer(meta: dict) -> Tokenizer:
    return Tokenizer.from_json(meta["tokenizer"], meta["model"]["text"]["max_length"])


class TextEncoder:
    """A frozen CLIP text tower with its tokenizer: prompts -> token states for cross-attention."""

    def __init__(self, tower: TextTransformer, tokenizer: Tokenizer):
        self.tower = tower.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.dim = tower.cfg.dim
        self.max_length = tokenizer.max_length

    @property
    def device(self) -> torch.device:
        return self.tower.pos_embed.device

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenizer.encode(list(prompts))  # (B, L) each
        ids, mask = ids.to(self.device), mask.to(self.device)
        states, pooled = self.tower(ids, mask)  # (B, L, D), (B, D)
        return states, pooled, mask

    def tokens(self, prompt: str) -> list[str]:
        return self.tokenizer.tokens(prompt)

    def unknown(self, prompt: str) -> list[str]:
        return self.tokenizer.unknown(prompt)


def _clip_part(ckpt: Checkpoint, prefix: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(the CLIP's meta, its state dict) from a CLIP checkpoint (prefix "") or one that embeds it."""
    if prefix:
        return ckpt.meta[prefix], ckpt.weights(prefix)
    return ckpt.meta, ckpt.trained()


def load_clip(ckpt: Checkpoint, device: torch.device, prefix: str = "") -> tuple[CLIP, Tokenizer]:
    meta, weights = _clip_part(ckpt, prefix)
    model = build_clip(meta)
    model.load_state_dict(weights)
    return model.to(device).eval().requires_grad_(False), _tokenizer(meta)


def load_text_encoder(ckpt: Checkpoint, device: torch.device, prefix: str = "") -> TextEncoder:
    meta, weights = _clip_part(ckpt, prefix)
    tower = TextTransformer(CLIPConfig(**meta["model"]).text, meta["vocab_size"])
    tower.load_state_dict({k[len("text."):]: v for k, v in weights.items() if k.startswith("text.")})
    return TextEncoder(tower.to(device), _tokenizer(meta))


def captioner_from(ckpt: Checkpoint, prefix: str = "") -> Captioner:
    """The checkpoint's captioner thresholds, without images: for ``measure`` and the words' meaning."""
    meta, _ = _clip_part(ckpt, prefix)
    return Captioner(meta["captions"])


def caption_source(ckpt: Checkpoint, data_cfg, train_set: ImageSet, data_root=None, prefix: str = "") -> Captioner:
    """Captions of ``train_set`` by index, with the CLIP checkpoint's thresholds."""
    meta, _ = _clip_part(ckpt, prefix)
    return Captioner(meta["captions"], train_set.images, train_set.labels, train_set.texts)


# --- scores -----------------------------------------------------------------------------------


@torch.no_grad()
def embed_images(model: CLIP, data: ImageSet, device, n: int | None = None, batch: int = 500) -> torch.Tensor:
    n = len(data) if n is None else min(n, len(data))
    out = [model.encode_image(to_float(data.images[i : min(i + batch, n)].to(device))).float().cpu() for i in range(0, n, batch)]
    return torch.cat(out)  # (n, E)


@torch.no_grad()
def embed_texts(model: CLIP, tokenizer: Tokenizer, texts: list[str], device, batch: int = 500) -> torch.Tensor:
    out = []
    for i in range(0, len(texts), batch):
        ids, mask = tokenizer.encode(texts[i : i + batch])
        out.append(model.encode_text(ids.to(device), mask.to(device)).float().cpu())
    return torch.cat(out)  # (n, E)


def recall_queries(captioner: Captioner, n: int, seed: int = 0) -> tuple[list[str], list[dict[str, int]]]:
    """A caption for each of the first n images, drawn from a fixed seed, and the attributes each names."""
    g = torch.Generator().manual_seed(seed)
    drawn = [captioner.draw(i, g) for i in range(n)]
    return [t for t, _ in drawn], [m for _, m in drawn]


def relevance(captioner: Captioner, mentioned: list[dict[str, int]], n_query: int) -> torch.Tensor:
    """bool [queries, images]: image j fits query i's class and every attribute it names."""
    labels = captioner.labels
    rel = labels[:n_query, None] == labels[None, :]  # (Q, N)
    for i, words in enumerate(mentioned):
        for name, b in words.items():
            rel[i] &= captioner.bins[name] == b
    return rel


def scores(model: CLIP, tokenizer: Tokenizer, captioner: Captioner, test_set: ImageSet, device, n: int | None = None) -> dict[str, float]:
    """Zero-shot accuracy on (the first n) test images, and text -> image recall@1/5 among them."""
    n = len(test_set) if n is None else min(n, len(test_set))
    image_emb = embed_images(model, test_set, device, n)  # (n, E)
    prompts = embed_texts(model, tokenizer, captioner.prompts(), device)  # (K, E)
    predicted = (image_emb @ prompts.T).argmax(1)
    out = {"zero_shot_acc": (predicted == test_set.labels[:n]).float().mean().item()}
    if captioner.texts is None:  # relevance needs the measured attributes; a folder's own texts have none
        q = min(RECALL_QUERIES, n)
        texts, mentioned = recall_queries(captioner, q)
        ranked = (embed_texts(model, tokenizer, texts, device) @ image_emb.T).topk(5, dim=1).indices  # (Q, 5)
        hits = relevance(captioner, mentioned, q)[:, :n].gather(1, ranked)  # (Q, 5)
        out["recall@1"] = hits[:, 0].float().mean().item()
        out["recall@5"] = hits.any(1).float().mean().item()
    return out


# --- pictures ---------------------------------------------------------------------------------


@torch.no_grad()
def show_retrieval(model: CLIP, tokenizer: Tokenizer, captioner: Captioner, test_set: ImageSet, device, out: Path,
                   k: int = 8) -> Path:
    """retrieval.png: a row per prompt, its k nearest test images, nearest first."""
    prompts = SHOWN_PROMPTS.get(captioner.dataset, captioner.prompts()[:8])
    image_emb = embed_images(model, test_set, device)
    nearest = (embed_texts(model, tokenizer, prompts, device) @ image_emb.T).topk(k, dim=1).indices  # (P, k)
    picture = images.grid(test_set.images[nearest.flatten()], nrow=k)
    return images.save(images.with_row_labels(picture, prompts, picture.height // len(prompts)), out)


@torch.no_grad()
def show_map(model: CLIP, tokenizer: Tokenizer, captioner: Captioner, test_set: ImageSet, device, out: Path,
             n: int = 1000) -> Path:
    """clip_map.png: image and caption embeddings of n test images projected together on their two
    principal components, coloured by class; captions are crosses, the zero-shot prompts stars."""
    n = min(n, len(test_set))
    texts, _ = recall_queries(captioner, n, seed=1)
    prompts = captioner.prompts()
    image_emb = embed_images(model, test_set, device, n)
    text_emb = embed_texts(model, tokenizer, texts + prompts, device)
    points = torch.cat([image_emb, text_emb])
    centred = points - points.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    xy = (centred @ v[:2].T).numpy()  # (n + n + K, 2)
    labels = test_set.labels[:n].numpy()
    plt = images._pyplot()
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(7.5, 6.5), dpi=120)
    colours = [cmap(c % 10) for c in labels]
    ax.scatter(xy[:n, 0], xy[:n, 1], c=colours, s=6, alpha=0.5, linewidths=0, label="test images")
    ax.scatter(xy[n : 2 * n, 0], xy[n : 2 * n, 1], c=colours, s=22, marker="x", linewidths=0.8, label="their captions")
    for c, (x, y) in enumerate(xy[2 * n :]):
        ax.scatter([x], [y], color=cmap(c % 10), s=220, marker="*", edgecolors="black", linewidths=0.8,
                   label="class prompts" if c == 0 else None)
        ax.annotate(prompts[c], (x, y), xytext=(6, 4), textcoords="offset points", fontsize=8)
    ax.set_title("CLIP's embedding space: test images (dots) and captions (crosses), first two principal components",
                 fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return images._save_fig(fig, out)


# --- vd train-clip ----------------------------------------------------------------------------


@dataclass
class CLIPSummary:
    run: Run
    metrics: dict[str, float]
    steps: int
    seconds: float
    files: list[Path]


def train(recipe: CLIPRecipe, run: Run, *, device: torch.device, data_root=None, resume=False, quiet=False) -> CLIPSummary:
    train_set = load_split(recipe.data, "train", data_root)
    test_set = load_split(recipe.data, "test", data_root)
    return train_stage(recipe, train_set, test_set, run, device=device, resume=resume, quiet=quiet)


def train_stage(recipe: CLIPRecipe, train_set: ImageSet, test_set: ImageSet, run: Run, *, device: torch.device,
                resume: bool = False, quiet: bool = False) -> CLIPSummary:
    """Train a CLIP and finish its checkpoint (meta "done": True); ``train-ldm`` calls this for its text stage."""
    t0 = time.perf_counter()
    cfg = recipe.train
    captioner = Captioner.fit(train_set.images, train_set.labels, train_set.classes, recipe.data.name,
                              train_set.texts)
    test_captioner = Captioner(captioner.state, test_set.images, test_set.labels, test_set.texts)
    tokenizer = Tokenizer.train(captioner.vocabulary(), recipe.model.text.max_length)
    meta = {"model": recipe.model.model_dump(), "data": data_spec(recipe.data, train_set), "vocab_size": tokenizer.vocab_size,
            "tokenizer": tokenizer.to_json(), "captions": captioner.state, "prompts": captioner.prompts(),
            "recipe": recipe.model_dump(mode="json"), "done": False}
    with seeded_init(cfg.seed, "clip"):
        model = build_clip(meta)
    tokens: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def tokenize(captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        for c in captions:
            if c not in tokens:
                ids, mask = tokenizer.encode([c])
                tokens[c] = ids[0], mask[0]
        L = max(int(tokens[c][1].sum()) for c in captions)
        return torch.stack([F.pad(tokens[c][0], (0, L - len(tokens[c][0])))[:L] for c in captions]), \
            torch.stack([F.pad(tokens[c][1], (0, L - len(tokens[c][1])))[:L] for c in captions])  # (B, L) each

    def loss_fn(model: CLIP, batch):
        x, index = batch
        x = to_float(x)
        if cfg.shift:
            x = random_shift(x, cfg.shift)
        ids, mask = tokenize(draw_captions(captioner, index))
        logits = model(x, ids.to(x.device), mask.to(x.device))  # (B, B)
        loss = clip_loss(logits)
        return loss, {"temperature": model.scale().detach().double().reciprocal()}  # read on logging steps only

    def evaluate(model: CLIP, step: int) -> dict:
        return scores(model, tokenizer, test_captioner, test_set, device, cfg.eval_images)

    result = fit(model, loss_fn, (train_set.images, torch.arange(len(train_set))), cfg, run, kind="clip", meta=meta,
                 device=device, evaluate=evaluate, resume=resume, quiet=quiet)
    train_seconds = time.perf_counter() - t0

    ckpt = load_checkpoint(run.checkpoint, "clip")
    model, _ = load_clip(ckpt, device)
    metrics = scores(model, tokenizer, test_captioner, test_set, device)
    ckpt.meta.update(done=True, metrics={**ckpt.meta.get("metrics", {}), **metrics}, train_seconds=train_seconds)
    save_checkpoint(run.checkpoint, "clip", {k: ckpt.weights(k) for k in ("model", "ema") if ckpt.has(k)}, ckpt.meta)
    files = [run.checkpoint, show_retrieval(model, tokenizer, test_captioner, test_set, device, run.dir / "retrieval.png"),
             show_map(model, tokenizer, test_captioner, test_set, device, run.dir / "clip_map.png"), run.dir / "loss.png"]
    if not quiet:
        console.print(f"CLIP: zero-shot test accuracy {metrics['zero_shot_acc']:.2%}", soft_wrap=True)
    distributed.barrier()  # under torchrun: rank 0's finished checkpoint is on disk before the next stage reads it
    return CLIPSummary(run, metrics, result.step, train_seconds, files)
