"""Writing what commands show: image grids, GIFs, heat-map overlays, curves and matrices.

Everything takes uint8 [.., C, H, W] tensors (see ``data.to_uint8``) and writes a file. Small
images (MNIST is 28 pixels) are enlarged with nearest-neighbour so that a person can see them.
Plots use matplotlib (Agg, imported on first use so the CLI starts fast).

Provenance: ``save(image, path, meta)`` is the one PNG writer, and a PNG written with ``meta``
remembers how it was made, as AUTOMATIC1111 and ComfyUI images do: one PNG text chunk per
parameter, keyed ``vd:<name>``, its value JSON (so numbers, lists and None come back as they
went in), plus ``vd:vd_version`` and ``vd:command`` (the full command line), which ``save`` adds
itself so that no call site can forget them. ``read_meta`` gives the dict back. Text chunks do
not touch the pixels.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from vdcli import __version__
from vdcli.checkpoint import atomic_write

META_PREFIX = "vd:"  # the text chunks vd writes; other tools' chunks are left alone


def to_pil(image: torch.Tensor) -> Image.Image:
    """uint8 [C, H, W] -> a PIL image (L or RGB)."""
    array = image.permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array, "L" if array.shape[2] == 1 else "RGB")


def upscale_for_viewing(size: int, target: int = 96) -> int:
    return max(1, target // size)


def grid(images: torch.Tensor, nrow: int, pad: int = 2, scale: int | None = None, fill: int = 64) -> Image.Image:
    """uint8 [N, C, H, W] -> one RGB image, nrow images per row, each enlarged ``scale`` times."""
    n, c, h, w = images.shape
    scale = scale or upscale_for_viewing(h)
    images = images.expand(-1, 3, -1, -1) if c == 1 else images
    rows = (n + nrow - 1) // nrow
    canvas = torch.full((3, rows * (h + pad) + pad, nrow * (w + pad) + pad), fill, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        canvas[:, top : top + h, left : left + w] = images[i]
    pil = to_pil(canvas)
    return pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST) if scale > 1 else pil


def with_row_labels(image: Image.Image, labels: list[str], row_height: int) -> Image.Image:
    """Write a label at the left of each row of a grid."""
    font = _font(max(10, min(row_height // 3, 18)))
    width = max(int(ImageDraw.Draw(image).textlength(s, font=font)) for s in labels) + 12
    out = Image.new("RGB", (image.width + width, image.height), (255, 255, 255))
    out.paste(image, (width, 0))
    draw = ImageDraw.Draw(out)
    for i, label in enumerate(labels):
        draw.text((6, i * row_height + row_height // 2), label, fill=(0, 0, 0), font=font, anchor="lm")
    return out


def with_column_labels(image: Image.Image, labels: list[str], column_width: int, left: int = 0) -> Image.Image:
    """Write a label (one or more lines) above each column of a grid whose columns start ``left`` pixels in."""
    size = max(10, min(column_width // 6, 15))
    font, line = _font(size), size + 4
    lines = max(label.count("\n") + 1 for label in labels)
    top = lines * line + 6
    out = Image.new("RGB", (image.width, image.height + top), (255, 255, 255))
    out.paste(image, (0, top))
    draw = ImageDraw.Draw(out)
    for i, label in enumerate(labels):
        for k, text in enumerate(label.split("\n")):
            draw.text((left + i * column_width + column_width // 2, 3 + k * line + line // 2), text, fill=(0, 0, 0), font=font, anchor="mm")
    return out


def save(image: Image.Image, path: Path, meta: dict | None = None) -> Path:
    """Write ``image``; a PNG with ``meta`` (JSON-able values) carries it, the vd version and the
    command line in text chunks (see the module docstring)."""
    path = Path(path)
    kind = path.suffix.lstrip(".").upper().replace("JPG", "JPEG")
    extra = {}
    if meta is not None and kind == "PNG":
        info = PngInfo()
        for key, value in {**meta, "vd_version": __version__, "command": command_line()}.items():
            info.add_text(META_PREFIX + key, json.dumps(value))  # ASCII JSON: a tEXt chunk for any prompt
        extra["pnginfo"] = info
    atomic_write(path, lambda tmp: image.save(tmp, format=kind, **extra))
    return path


def read_meta(path: Path) -> dict:
    """The parameters a PNG written by ``save(..., meta)`` carries ({} when it has none)."""
    with Image.open(path) as image:
        chunks = dict(getattr(image, "text", {}) or {})
    return {k[len(META_PREFIX):]: json.loads(v) for k, v in chunks.items() if k.startswith(META_PREFIX)}


def command_line() -> str:
    """The command as the user typed it (``vd`` and its arguments, shell-quoted)."""
    return shlex.join(["vd", *sys.argv[1:]])


def file_hash(path: Path, digits: int = 12) -> str:
    """The first ``digits`` hex digits of the sha256 of a file's bytes (a checkpoint: its weights and meta)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:digits]


def save_gif(frames: list[Image.Image], path: Path, fps: float = 8.0, hold_ends: float = 0.0) -> Path:
    """An endlessly looping GIF, one frame per picture; the first and last stay ``hold_ends`` s longer."""
    duration = [max(20, int(1000 / fps))] * len(frames)
    duration[0] += int(1000 * hold_ends)
    duration[-1] += int(1000 * hold_ends)
    atomic_write(
        Path(path),
        lambda tmp: frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=duration, loop=0),
    )
    return Path(path)


def heat_overlay(image: torch.Tensor, heat: torch.Tensor, alpha: float = 0.5) -> Image.Image:
    """Blend a heat map (float [h, w], any range, upsampled to the image) over uint8 [C, H, W]."""
    import matplotlib

    _, h, w = image.shape
    heat = heat.float()[None, None]
    heat = torch.nn.functional.interpolate(heat, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    heat = (heat - heat.min()) / (heat.max() - heat.min() + 1e-12)
    colours = torch.from_numpy(matplotlib.colormaps["inferno"](heat.cpu().numpy())[..., :3]).permute(2, 0, 1).float()
    base = image.float().expand(3, -1, -1) / 255
    mixed = ((1 - alpha) * base + alpha * colours).clamp(0, 1)
    return to_pil((mixed * 255).round().to(torch.uint8))


def enlarge(image: Image.Image, min_side: int = 224) -> Image.Image:
    scale = max(1, min_side // min(image.size))
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST) if scale > 1 else image


def _font(size: int) -> ImageFont.ImageFont:
    """DejaVu Sans, which matplotlib ships (it has Greek: ᾱ, ε), else Pillow's default font."""
    try:
        import matplotlib

        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)
    except (ImportError, OSError):
        pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def patch_grid_image(image: torch.Tensor, patch: int, min_side: int = 448) -> Image.Image:
    """The image with its patch grid drawn and each patch numbered in row-major order."""
    _, h, w = image.shape
    scale = max(1, min_side // min(h, w))
    pil = to_pil(image).convert("RGB").resize((w * scale, h * scale), Image.NEAREST)
    draw = ImageDraw.Draw(pil)
    step = patch * scale
    rows, cols = h // patch, w // patch
    font = _font(max(8, min(step // 3, 20)))
    for r in range(rows + 1):
        draw.line([(0, r * step), (cols * step, r * step)], fill=(255, 64, 64), width=1)
    for c in range(cols + 1):
        draw.line([(c * step, 0), (c * step, rows * step)], fill=(255, 64, 64), width=1)
    for k in range(rows * cols):
        r, c = divmod(k, cols)
        draw.text((c * step + 3, r * step + 2), str(k), fill=(255, 230, 0), font=font, stroke_width=1, stroke_fill=(0, 0, 0))
    return pil


def loss_curve(metrics_path: Path, out: Path, keys: tuple[str, ...] = ("loss",)) -> Path | None:
    """Plot training loss (log scale) from metrics.jsonl."""
    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    for key in keys:
        points = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], label=key, linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if all(r["loss"] > 0 for r in rows):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if len(keys) > 1:
        ax.legend()
    fig.tight_layout()
    return _save_fig(fig, out)


def confusion_matrix_image(matrix: torch.Tensor, classes: list[str], out: Path) -> Path:
    plt = _pyplot()
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n), dpi=120)
    ax.imshow(matrix.numpy(), cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = matrix.max().item()
    for i in range(n):
        for j in range(n):
            value = int(matrix[i, j])
            if value:
                ax.text(j, i, str(value), ha="center", va="center", fontsize=7, color="white" if value > top / 2 else "black")
    fig.tight_layout()
    return _save_fig(fig, out)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_fig(fig, out: Path) -> Path:
    plt = _pyplot()
    atomic_write(Path(out), lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return Path(out)


def vstack(panels: list[Image.Image], gap: int = 6) -> Image.Image:
    """Pictures one above the other on white, centred."""
    width = max(p.width for p in panels)
    out = Image.new("RGB", (width, sum(p.height for p in panels) + gap * (len(panels) - 1)), (255, 255, 255))
    y = 0
    for p in panels:
        out.paste(p.convert("RGB"), ((width - p.width) // 2, y))
        y += p.height + gap
    return out


def hstack(panels: list[Image.Image], captions: list[str] | None = None, gap: int = 4) -> Image.Image:
    """Pictures side by side on white, top-aligned, each with an optional caption underneath."""
    font = _font(16)
    below = 24 if captions else 0
    width = sum(p.width for p in panels) + gap * (len(panels) - 1)
    out = Image.new("RGB", (width, max(p.height for p in panels) + below), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    x = 0
    for i, p in enumerate(panels):
        out.paste(p.convert("RGB"), (x, 0))
        if captions:
            draw.text((x + p.width // 2, p.height + 4), captions[i], fill=(0, 0, 0), font=font, anchor="mt")
        x += p.width + gap
    return out


def position_similarity_image(similarity: torch.Tensor, rows: int, cols: int, out: Path, title: str | None = None) -> Path:
    """The grid of Dosovitskiy et al. (2021) fig. 7 centre: tile (r, c) is patch (r, c)'s cosine similarity
    to every patch, itself a rows x cols map; ``similarity`` is [N, N], N = rows * cols, row-major."""
    import numpy as np

    plt = _pyplot()
    sim = similarity.float().view(rows, cols, rows, cols).cpu().numpy()
    gap = 1  # one blank pixel between tiles, drawn white (NaN)
    side_r, side_c = rows * (rows + gap) - gap, cols * (cols + gap) - gap
    canvas = np.full((side_r, side_c), np.nan)
    for r in range(rows):
        for c in range(cols):
            top, left = r * (rows + gap), c * (cols + gap)
            canvas[top : top + rows, left : left + cols] = sim[r, c]
    cmap = _colormap("viridis").with_extremes(bad="white")
    fig, ax = plt.subplots(figsize=(5.6, 4.8), dpi=120)
    fig.subplots_adjust(left=0.12, right=0.8, bottom=0.11, top=0.93)  # fixed margins: the layout engines cut the row label
    shown = ax.imshow(canvas, cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
    centres_r = [r * (rows + gap) + (rows - 1) / 2 for r in range(rows)]
    centres_c = [c * (cols + gap) + (cols - 1) / 2 for c in range(cols)]
    ax.set_yticks(centres_r, [str(r + 1) for r in range(rows)])
    ax.set_xticks(centres_c, [str(c + 1) for c in range(cols)])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_xlabel("input patch column")
    ax.set_ylabel("input patch row")
    if title:
        ax.set_title(title, fontsize=10)
    fig.colorbar(shown, cax=fig.add_axes((0.83, 0.11, 0.03, 0.82)), label="cosine similarity")
    return _save_fig(fig, out)


def _colormap(name: str):
    import matplotlib

    return matplotlib.colormaps[name]


def token_attention_image(matrices: list[torch.Tensor], tokens: list[str], titles: list[str], out: Path,
                          hidden: torch.Tensor | None = None) -> Path:
    """Attention between tokens, one panel per matrix [L, L] (row = query token, column = key token), on
    one 0-1 colour scale; ``hidden`` [L, L] bool marks the cells no query may see (a causal mask), drawn
    hatched grey so that the mask is visible rather than merely dark. Each cell shows its probability."""
    from matplotlib.patches import Rectangle

    plt = _pyplot()
    n = len(tokens)
    side = max(2.6, 0.42 * n + 1.2)
    fig, axes = plt.subplots(1, len(matrices), figsize=(side * len(matrices) + 1.0, side + 0.4), dpi=120, squeeze=False,
                             layout="constrained")
    for ax, matrix, title in zip(axes[0], matrices, titles):
        shown = ax.imshow(matrix.float().cpu().numpy(), cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        for i in range(n):
            for j in range(n):
                if hidden is not None and hidden[i, j]:
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="#e4e4e4", edgecolor="#a0a0a0", hatch="///", linewidth=0))
                elif n <= 16:
                    p = float(matrix[i, j])
                    ax.text(j, i, f"{p:.2f}".lstrip("0") if p < 1 else "1", ha="center", va="center", fontsize=6,
                            color="black" if p > 0.6 else "white")
        ax.set_xticks(range(n), tokens, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), tokens, fontsize=8)
        ax.set_xlabel("key: the token read")
        ax.set_title(title, fontsize=9)
    axes[0][0].set_ylabel("query: the token reading")
    fig.colorbar(shown, ax=list(axes[0]), fraction=0.03, pad=0.02, label="attention probability")
    return _save_fig(fig, out)


def compare_curves(runs: dict[str, Path], out: Path) -> Path:
    """Several runs' metrics.jsonl in one picture: the training losses on one axis (log scale when
    every loss is positive), then one axis per numeric evaluation metric any run logged, each run
    in the same colour on every axis. ``runs`` maps a label to its metrics.jsonl."""
    logs = {label: [json.loads(line) for line in Path(p).read_text().splitlines() if line.strip()] for label, p in runs.items()}
    metrics = sorted({k for rows in logs.values() for r in rows for k, v in r.get("eval", {}).items()
                      if isinstance(v, (int, float)) and not k.endswith("seconds")})  # timings are not quality
    plt = _pyplot()
    fig, axes = plt.subplots(1 + len(metrics), 1, figsize=(7, 3.2 * (1 + len(metrics))), dpi=110, squeeze=False)
    positive = True
    for i, (label, rows) in enumerate(logs.items()):
        colour = f"C{i % 10}"
        points = [(r["step"], r["loss"]) for r in rows if "loss" in r]
        positive = positive and all(v > 0 for _, v in points)
        axes[0, 0].plot([s for s, _ in points], [v for _, v in points], label=label, color=colour, linewidth=1.2)
        for ax, key in zip(axes[1:, 0], metrics):
            evals = [(r["step"], r["eval"][key]) for r in rows if key in r.get("eval", {})]
            ax.plot([s for s, _ in evals], [v for _, v in evals], marker="o", markersize=3, label=label, color=colour)
    axes[0, 0].set_ylabel("training loss")
    if positive:
        axes[0, 0].set_yscale("log")
    axes[0, 0].legend(fontsize=8)
    for ax, key in zip(axes[1:, 0], metrics):
        ax.set_ylabel(key)
    for ax in axes[:, 0]:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save_fig(fig, out)
