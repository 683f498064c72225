"""Image files: one function decodes a file to pixels, one fits pixels to the size a model sees.

``read_image`` is the only place vd opens an image file (training folders in memory or
streamed, ``--image`` inputs, masks), so every file is read the same way:

- Channels: C = 1 for grayscale files (modes 1, L, LA, 16-bit I), C = 3 for all others.
- Alpha: an image with transparency (RGBA, LA, a palette or a colour with a tRNS entry) is
  composited onto a background colour, white unless the recipe's ``data.background`` says
  otherwise: out = (a · colour + (255 − a) · background) / 255, rounded, with a the alpha in
  0..255 (the "over" operator, Porter & Duff 1984). Without it, the colours a file keeps under
  alpha 0 (often stripes left by the encoder) would be trained on as if they were drawn. A
  grayscale file on a coloured background becomes RGB. Palette images are converted through
  RGBA, which is also what keeps Pillow from warning about transparency expressed in bytes.
- Depth: 16-bit files (modes I;16, I;16B, I;16L, and I, which is how Pillow opens some 16-bit
  PNGs) are scaled from 0..65535 to 0..255 by x / 257 (65535 / 257 = 255), not clipped;
  clipping turns all but the darkest 0.4 % of the range white.

``fit_images`` brings uint8 images [N, C, H, W] to size x size and the asked channel count.
This module imports nothing of vdcli but its errors: the dataset module and the streaming
column both stand on it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image, ImageColor, UnidentifiedImageError

from vdcli.errors import VdError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
GRAY = {"1", "L", "LA", "La"}
SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
ALPHA = {"RGBA", "RGBa", "LA", "La", "PA"}


def colour(spec: str) -> tuple[int, int, int]:
    """A colour name ("white", "black") or "#rrggbb" (anything Pillow's ImageColor reads) -> (r, g, b)."""
    try:
        return ImageColor.getrgb(spec)[:3]
    except (ValueError, AttributeError):  # a ValueError, so that a recipe's validation names the key
        raise ValueError(f"{spec!r} is not a colour; use a name such as white or black, or #rrggbb") from None


def read_image(path, background: str = "white") -> torch.Tensor:
    """An image file as uint8 [C, H, W]: C = 1 for grayscale files, 3 otherwise; transparency
    composited onto ``background``, 16 bits scaled to 8 (see the module docstring)."""
    rgb = colour(background)
    try:
        with Image.open(path) as im:
            return _pixels(im, rgb)
    except FileNotFoundError:
        raise VdError(f"image {path} not found") from None
    except (UnidentifiedImageError, OSError) as e:
        raise VdError(f"{path} is not an image Pillow can read ({e})") from None


def _pixels(im: Image.Image, background: tuple[int, int, int]) -> torch.Tensor:
    if im.mode in SIXTEEN_BIT:
        raw = _as_tensor(im.convert("I"), torch.int32)  # (1, H, W), 0..65535 (convert reads every byte order)
        return (raw.double() / 257).round().clamp(0, 255).to(torch.uint8)
    if im.mode in ALPHA or "transparency" in im.info:
        gray = im.mode in GRAY and len(set(background)) == 1
        pixels = _as_tensor(im.convert("LA" if gray else "RGBA"), torch.uint8).int()  # (C + 1, H, W)
        ink, alpha = pixels[:-1], pixels[-1:]
        under = torch.tensor(background[:1] if gray else background, dtype=torch.int32).view(-1, 1, 1)
        # (x + 127) // 255 rounds x / 255 to the nearest integer: 255 is odd, so there are no ties
        return ((ink * alpha + under * (255 - alpha) + 127) // 255).to(torch.uint8)
    return _as_tensor(im.convert("L" if im.mode in GRAY | {"F"} else "RGB"), torch.uint8)


def _as_tensor(im: Image.Image, dtype: torch.dtype) -> torch.Tensor:
    data = torch.frombuffer(bytearray(im.tobytes()), dtype=dtype)
    return data.view(im.height, im.width, -1).permute(2, 0, 1).contiguous()  # (H, W, C) -> (C, H, W)


def fit_images(images: torch.Tensor, size: int, channels: int | None) -> torch.Tensor:
    """Bring uint8 images [N, C, H, W] to size x size and the asked channel count.

    Smaller square images are zero-padded (28 -> 32 keeps every MNIST pixel and makes the f4
    VAE latent exactly 8 x 8); others are resized on the short side and centre-cropped.
    """
    c, h, w = images.shape[1:]
    if channels and channels != c:
        if channels == 3:
            images = images.expand(-1, 3, -1, -1)
        else:  # ITU-R 601 luma
            weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            images = (images.float() * weights).sum(1, keepdim=True).round().to(torch.uint8)
    if h == w and h < size:
        total = size - h
        return F.pad(images, (total // 2, total - total // 2, total // 2, total - total // 2))
    if (h, w) != (size, size):
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        out = F.interpolate(images.float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        top, left = (nh - size) // 2, (nw - size) // 2
        images = out[:, :, top : top + size, left : left + size].round().clamp(0, 255).to(torch.uint8)
    return images
