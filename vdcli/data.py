"""Datasets: one place turns a recipe's ``data:`` section into image tensors.

Every dataset is held in memory as uint8 images [N, C, H, W] plus int64 labels, at the size the
recipe asks for. MNIST-sized data then costs ~50 MB and a training step is a tensor index, not
a Python loop over PIL images; on a 2-core machine that is the difference that matters. The one
exception is an image folder with ``data.stream: true``: its images stay on disk, a column of
files decoded when a row is read (``streaming.FolderImages``), and only file names and labels
are held in memory.

Image files are decoded and fitted in ``imagefiles.py``; an image folder's files, labels and
captions come from one listing in ``folders.py``. Models see images as floats in [-1, 1]
(``to_float``).
"""

from __future__ import annotations

import os
import re
import typing
from dataclasses import dataclass
from pathlib import Path

import torch

from vdcli.errors import VdError
from vdcli.folders import read_folder
from vdcli.imagefiles import fit_images, read_image
from vdcli.recipe import DataConfig, DatasetName
from vdcli.streaming import FolderImages

TORCHVISION = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}
LAYOUT = {"mnist": "MNIST/raw/", "fashion-mnist": "FashionMNIST/raw/", "cifar10": "cifar-10-batches-py/"}  # what torchvision looks for
NATIVE_SIZE = {"mnist": 28, "fashion-mnist": 28, "cifar10": 32, "synthetic": 28}


@dataclass
class ImageSet:
    images: torch.Tensor | FolderImages  # uint8 (N, C, H, W), in memory or read from disk row by row
    labels: torch.Tensor  # int64 (N,)
    classes: list[str]
    texts: list[list[str]] | None = None  # an image folder's own captions, per image (folders.FolderSplit.captions)

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, rows: torch.Tensor) -> ImageSet:
        """These rows (sorted, distinct) only; a streamed set stays on disk."""
        if len(rows) == len(self):  # all of them: no copy
            return self
        images = self.images.subset(rows.tolist()) if isinstance(self.images, FolderImages) else self.images[rows]
        texts = None if self.texts is None else [self.texts[i] for i in rows.tolist()]
        return ImageSet(images, self.labels[rows], self.classes, texts)


def data_spec(cfg: DataConfig, data: ImageSet) -> dict:
    """What a checkpoint must know of its data to be used alone: size, channels, class names, and
    the background its transparent images were composited onto (an input file is read the same way)."""
    return {"name": cfg.name, "image_size": cfg.image_size, "channels": data.images.shape[1], "classes": data.classes,
            "background": cfg.background}


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], clamping what a model overshoots."""
    return ((images.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


def data_root(root: str | Path | None = None) -> Path:
    """--data-root, else $VD_DATA_ROOT, else the user's cache folder."""
    if root:
        return Path(root).expanduser()
    if os.environ.get("VD_DATA_ROOT"):
        return Path(os.environ["VD_DATA_ROOT"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "vd" / "data"


def load_split(cfg: DataConfig, split: str, root: str | Path | None = None) -> ImageSet:
    """The train or test split of the recipe's dataset, at cfg.image_size and cfg.channels."""
    if cfg.name == "synthetic":
        n = (cfg.limit or 2000) if split == "train" else 500
        data = synthetic_shapes(n, cfg.image_size, seed=0 if split == "train" else 1)
    elif cfg.name == "folder" and cfg.stream:
        return _streamed_folder(cfg, split)
    elif cfg.name == "folder":
        data = _folder(cfg, split)
    else:
        data = _torchvision(cfg.name, split, data_root(root))
    images = fit_images(data.images, cfg.image_size, cfg.channels)
    if split == "train" and cfg.limit:
        images, data.labels = images[: cfg.limit], data.labels[: cfg.limit]
        data.texts = None if data.texts is None else data.texts[: cfg.limit]
    return ImageSet(images.contiguous(), data.labels, data.classes, data.texts)


def _torchvision(name: str, split: str, root: Path) -> ImageSet:
    # Here, not at the top: importing torchvision takes seconds, and only these datasets need it,
    # not `vd --help`, a folder run or a command given an image file.
    import torchvision

    cls = getattr(torchvision.datasets, TORCHVISION[name])
    try:
        ds = cls(root=str(root), train=split == "train", download=True)
    except Exception as e:  # torchvision raises RuntimeError, URLError, OSError ... when offline
        raise VdError(
            f"{name} is not in {root / LAYOUT[name]} and could not be downloaded ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
            f"point --data-root or VD_DATA_ROOT at a folder that holds {LAYOUT[name]}"
        ) from None
    data = torch.as_tensor(ds.data)
    images = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)  # (N, C, H, W)
    labels = torch.as_tensor(ds.targets, dtype=torch.int64)
    return ImageSet(images.contiguous(), labels, [_class_name(c) for c in ds.classes])


def _class_name(name: str) -> str:
    # torchvision's MNIST classes read "7 - seven"; `--class seven` and `--class 7` both work.
    return name.split(" - ", 1)[1] if " - " in name else name


def _folder(cfg: DataConfig, split: str) -> ImageSet:
    """An image folder (``folders.py``) decoded into memory: RGB if any of its files is in colour."""
    folder = read_folder(cfg.path, split)
    images = [read_image(f, cfg.background) for f in folder.files]
    channels = 3 if any(im.shape[0] == 3 for im in images) else 1
    fitted = torch.cat([fit_images(im[None], cfg.image_size, channels) for im in images])
    return ImageSet(fitted, torch.tensor(folder.labels), folder.classes, folder.captions)


def _streamed_folder(cfg: DataConfig, split: str) -> ImageSet:
    """An image folder left on disk: its files, read and fitted to the recipe's size at each step.

    Without data.channels a streamed folder is RGB: finding out whether any of a million files is
    in colour would mean opening them all; a grayscale folder then trains on three equal channels.
    """
    folder = read_folder(cfg.path, split)
    files, labels, texts = folder.files, folder.labels, folder.captions
    if split == "train" and cfg.limit:
        files, labels, texts = files[: cfg.limit], labels[: cfg.limit], None if texts is None else texts[: cfg.limit]
    images = FolderImages(files, cfg.image_size, cfg.channels or 3, cfg.workers, cfg.background)
    return ImageSet(images, torch.tensor(labels), folder.classes, texts)


# A dataset reference names an image of a dataset vd downloads or makes (not a folder: it has a path).
REFERABLE = [name for name in typing.get_args(DatasetName) if name != "folder"]
_REF = re.compile(rf"^({'|'.join(map(re.escape, REFERABLE))}):(train|test):(\d+)$")


def is_reference(ref: str) -> bool:
    """Whether ``ref`` is a dataset reference such as ``mnist:test:42`` rather than a file."""
    return bool(_REF.match(ref)) and not Path(ref).exists()


def load_input(ref: str, image_size: int | None, channels: int | None, root: str | Path | None = None,
               background: str = "white") -> tuple[torch.Tensor, str]:
    """An image file or a dataset reference such as ``mnist:test:42``, fitted like training data.

    image_size None keeps the image's own size (a dataset's native size); a file's transparency is
    composited onto ``background``. Returns (uint8 [C, H, W], a short description).
    """
    match = _REF.match(ref)
    if match:
        name, split, index = match.group(1), match.group(2), int(match.group(3))
        size = image_size or NATIVE_SIZE[name]
        data = load_split(DataConfig(name=name, image_size=size, channels=channels), split, root)
        if index >= len(data):
            raise VdError(f"{ref}: the {name} {split} split has {len(data)} images (0..{len(data) - 1})")
        return data.images[index], f"{ref} (label {data.classes[data.labels[index]]})"
    if ref.split(":")[0] in REFERABLE and not Path(ref).exists():
        raise VdError(f"{ref}: a dataset reference looks like mnist:test:42 (dataset:split:index)")
    image = read_image(ref, background)
    return (fit_images(image[None], image_size, channels)[0] if image_size else image), ref


def read_mask(spec: str, size: int) -> torch.Tensor:
    """bool [size, size], True where to fill: from a mask image (white = fill) or ``box:X0,Y0,X1,Y1``."""
    if not spec.startswith("box:"):
        return fit_images(read_image(spec)[None], size, 1)[0, 0] > 127
    try:
        x0, y0, x1, y1 = (int(v) for v in spec[4:].split(","))
    except ValueError:
        raise VdError(f"--mask {spec}: a box is box:X0,Y0,X1,Y1 in pixels, e.g. box:0,{size // 2},{size},{size}") from None
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[max(y0, 0) : y1, max(x0, 0) : x1] = True
    return mask


# --- a dataset made in code, for tests and offline smoke runs -------------------------------

SHAPES = ["square", "disk", "ring", "cross", "bar", "diamond"]


def synthetic_shapes(n: int, size: int = 28, seed: int = 0) -> ImageSet:
    """n white shapes on black, one class per shape, with random position and size.

    Small enough to make in milliseconds, structured enough that a classifier, an autoencoder
    and a diffusion model all have something real to learn.
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(len(SHAPES), (n,), generator=g)
    radius = size * (0.18 + 0.12 * torch.rand(n, generator=g))  # (N,)
    centre = size / 2 + (torch.rand(n, 2, generator=g) - 0.5) * (size - 2 * radius[:, None] - 2)
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    dy = (coords[None, :, None] - centre[:, 0, None, None]) / radius[:, None, None]  # (N, H, 1)
    dx = (coords[None, None, :] - centre[:, 1, None, None]) / radius[:, None, None]  # (N, 1, W)
    ax, ay = dx.abs(), dy.abs()
    r = (dx**2 + dy**2).sqrt()
    masks = torch.stack(
        [
            torch.maximum(ax, ay) < 0.8,  # square
            r < 1.0,  # disk
            (r < 1.0) & (r > 0.6),  # ring
            ((ax < 0.3) & (ay < 1.0)) | ((ay < 0.3) & (ax < 1.0)),  # cross
            (ay < 0.3) & (ax < 1.0),  # bar
            ax + ay < 1.0,  # diamond
        ]
    )  # (S, N, H, W)
    images = masks[labels, torch.arange(n)].to(torch.uint8) * 255
    return ImageSet(images[:, None].contiguous(), labels, list(SHAPES))
