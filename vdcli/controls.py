"""Control maps for ControlNet: the spatial condition computed from an image, in one place.

Every map is uint8 [1, H, W] (255 = the feature), deterministic, computed with scikit-image
(and scipy, which it builds on) on the grayscale image:

- ``edges``: Canny edges (Canny 1986; ``skimage.feature.canny``, σ = 1), the outline of the
  strokes: both sides of a digit's stroke, the contours of a photo's objects.
- ``scribble``: the one-pixel skeleton of the foreground (``skimage.morphology.skeletonize`` of the
  image thresholded by Otsu's method): the centre line of every stroke, what a person would draw.
- ``depth``: a depth-like height map, the Euclidean distance of every foreground pixel to the
  background (``scipy.ndimage.distance_transform_edt``), scaled so that the thickest point is
  255: a digit's stroke rises towards its centre line. No depth network can be downloaded here,
  so on photos this is an honest stand-in, not depth: it measures how far inside the Otsu
  foreground a pixel is.

Foreground is bright on dark (MNIST); an image whose border is mostly bright is inverted first,
so dark objects on a light page work the same.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import torch

Control = Literal["edges", "scribble", "depth"]  # spelled once: recipes (recipe.py) and the CLI derive from it
CONTROLS: tuple[str, ...] = get_args(Control)


def _gray(image: torch.Tensor) -> np.ndarray:
    """uint8 [C, H, W] -> float [H, W] in [0, 1], bright foreground."""
    x = image.float().mean(0).numpy() / 255.0
    border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
    return 1.0 - x if border.mean() > 0.5 else x


def _foreground(gray: np.ndarray) -> np.ndarray:
    from skimage.filters import threshold_otsu

    if gray.max() - gray.min() < 1e-6:
        return np.zeros_like(gray, dtype=bool)
    return gray > threshold_otsu(gray)


def control_map(image: torch.Tensor, kind: Control) -> torch.Tensor:
    """The ``kind`` control map of one uint8 image [C, H, W], as uint8 [1, H, W]."""
    if kind not in CONTROLS:
        raise ValueError(f"unknown control {kind!r}; expected one of {', '.join(CONTROLS)}")
    gray = _gray(image)
    if kind == "edges":
        from skimage.feature import canny

        out = canny(gray, sigma=1.0).astype(np.float64)
    elif kind == "scribble":
        from skimage.morphology import skeletonize

        out = skeletonize(_foreground(gray)).astype(np.float64)
    else:
        from scipy.ndimage import distance_transform_edt

        distance = distance_transform_edt(_foreground(gray))
        out = distance / distance.max() if distance.max() > 0 else distance
    return torch.from_numpy(np.round(out * 255).astype(np.uint8))[None]


def control_maps(images: torch.Tensor, kind: Control) -> torch.Tensor:
    """``control_map`` of every image of uint8 [N, C, H, W]: uint8 [N, 1, H, W]."""
    return torch.stack([control_map(x, kind) for x in images]) if len(images) else images[:, :1]
