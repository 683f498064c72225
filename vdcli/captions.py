"""Captions for datasets that come without text: words from the label and from the pixels.

CLIP (and a text-conditioned LDM) needs an image–text pair for every training image. MNIST and
Fashion-MNIST have only labels, so this module writes captions from the label and from
attributes **measured on the pixels**, each a deterministic function of the image:

- ``thickness``: stroke width in pixels. The ink (pixels ≥ 128) is eroded with a 3x3 square
  until nothing is left; a pixel's depth d is how many erosions it survives. Across a straight
  stroke w pixels wide the depths run 1, 2, ..., 2, 1, whose mean is (w + 2) / 4, so
  w ≈ 4 · mean(d) − 2 (the erosion view of Morpho-MNIST's thickness, Castro et al. 2019).
- ``slant``: the horizontal shear of the ink, −cov(x, y) / var(y) from the intensity-weighted
  second moments (the measure deskewing undoes), with y pointing down: > 0 leans right.
- ``size``: the radius of gyration of the ink, sqrt(var(x) + var(y)), in pixels. Not the height:
  MNIST scales every digit's bounding box to 20 pixels, so heights hardly vary (``height`` is
  measured too, for reference).
- ``brightness``: the mean intensity (0..1) of the object's pixels (> 0.1), for Fashion-MNIST.

Each word holds for a real share of the training images: an attribute is cut into thirds at
its 1/3 and 2/3 quantiles over the training set, per class for thickness, size and brightness
(what is bold for a 1 is not what is bold for an 8) and over all images for slant (leaning
left means leaning left). The lowest third gets the first word (``thin``, ``small``,
``leaning left``, ``dark``), the highest the second (``bold``, ``large``, ``leaning right``,
``light``), the middle none, except slant's ``upright``. The quantiles are computed once, on
the training set, and travel in the CLIP checkpoint (``Captioner.state``), so that a caption
means the same thing wherever it is drawn.

Phrasings are drawn at training time from a ``torch.Generator``: the class as a numeral, a word
or "the digit seven", each attribute word present or left out (``a bold seven leaning right``,
``7``, ``a thin 7``); Fashion-MNIST uses its class names, their synonyms and dark/light.

An image folder brings its own captions, the ``text`` of its Hugging Face ``metadata.jsonl``
(read with its files in ``folders.py``, carried as ``ImageSet.texts``); files without a text,
and folders without the file, are captioned with their class name, as are the other datasets
(CIFAR-10, synthetic shapes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# (the attribute, the word for its lowest third, the word for its highest third, the middle's word)
DIGIT_WORDS = {"thickness": ("thin", "bold", None), "size": ("small", "large", None),
               "slant": ("leaning left", "leaning right", "upright")}
FASHION_WORDS = {"brightness": ("dark", "light", None)}
PER_CLASS = {"thickness": True, "size": True, "brightness": True, "slant": False}
# Fashion-MNIST's classes and what people call them; a trailing * marks a plural (no article).
FASHION = {
    "T-shirt/top": ["t-shirt", "top", "tee"],
    "Trouser": ["trousers*", "pants*"],
    "Pullover": ["pullover", "sweater", "jumper"],
    "Dress": ["dress"],
    "Coat": ["coat", "jacket"],
    "Sandal": ["sandal"],
    "Shirt": ["shirt", "blouse"],
    "Sneaker": ["sneaker", "trainer", "running shoe"],
    "Bag": ["bag", "handbag"],
    "Ankle boot": ["ankle boot", "boot"],
}


# --- measurements -----------------------------------------------------------------------------


def measure(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """uint8 images [N, C, H, W] -> {attribute: float [N]}: thickness, slant, size, height, brightness."""
    ink = images.float().mean(1) / 255.0  # (N, H, W) in [0, 1]
    N, H, W = ink.shape
    solid = (ink >= 0.5).to(torch.uint8)  # (N, H, W), 0 or 1
    depth, layer = torch.zeros_like(solid), solid
    while layer.any():  # erode until nothing is left: depth counts the erosions each ink pixel survives
        depth += layer
        layer = _erode(layer)
    area = solid.sum((1, 2)).float()
    thickness = torch.where(area > 0, 4 * depth.sum((1, 2)).float() / area.clamp(min=1) - 2, torch.zeros_like(area))

    mass = ink.sum((1, 2)).clamp(min=1e-6)  # (N,)
    y = torch.arange(H, dtype=torch.float32)[None, :, None]
    x = torch.arange(W, dtype=torch.float32)[None, None, :]
    my = (ink * y).sum((1, 2)) / mass
    mx = (ink * x).sum((1, 2)) / mass
    dy, dx = y - my[:, None, None], x - mx[:, None, None]  # (N, H, 1), (N, 1, W)
    var_y = (ink * dy**2).sum((1, 2)) / mass
    var_x = (ink * dx**2).sum((1, 2)) / mass
    cov = (ink * dx * dy).sum((1, 2)) / mass
    slant = -cov / var_y.clamp(min=1e-6)  # y grows downwards: a top to the right is a negative covariance
    size = (var_x + var_y).sqrt()

    rows = solid.any(2).float()  # (N, H): rows with ink
    first = rows.argmax(1)
    last = H - 1 - rows.flip(1).argmax(1)
    height = torch.where(rows.any(1), (last - first + 1).float(), torch.zeros(N))
    body = ink > 0.1
    brightness = (ink * body).sum((1, 2)) / body.sum((1, 2)).clamp(min=1)
    return {"thickness": thickness, "slant": slant, "size": size, "height": height, "brightness": brightness}


def _erode(mask: torch.Tensor) -> torch.Tensor:
    """3x3 binary erosion of 0/1 uint8 masks [N, H, W], as a row and then a column erosion; the
    border counts as ink."""
    padded = F.pad(mask, (1, 1, 1, 1), value=1)  # (N, H + 2, W + 2)
    rows = torch.minimum(torch.minimum(padded[:, :, :-2], padded[:, :, 1:-1]), padded[:, :, 2:])  # (N, H + 2, W)
    return torch.minimum(torch.minimum(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])  # (N, H, W)


def _thirds(values: torch.Tensor) -> list[float]:
    return torch.quantile(values.float(), torch.tensor([1 / 3, 2 / 3])).tolist() if len(values) else [0.0, 0.0]


def _words_for(dataset: str) -> dict[str, tuple]:
    return DIGIT_WORDS if dataset == "mnist" else FASHION_WORDS if dataset == "fashion-mnist" else {}


# --- the captioner ----------------------------------------------------------------------------


class Captioner:
    """Captions of one dataset's images, by index, drawn anew at every call.

    ``state`` (JSON: the dataset's name, class names and the quantile thresholds) is what the
    checkpoint keeps; ``images``/``labels`` are the images to caption (their attributes are
    measured once here, against the stored thresholds); ``texts`` are an image folder's own
    captions, per image (an empty list: use the class name).
    """

    def __init__(self, state: dict, images: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                 texts: list[list[str]] | None = None):
        self.state = state
        self.dataset: str = state["dataset"]
        self.classes: list[str] = state["classes"]
        self.words = _words_for(self.dataset)
        self.labels = labels
        self.texts = texts
        self.bins: dict[str, torch.Tensor] = {}
        if images is not None and state.get("thresholds"):  # a folder has nothing to measure (and may be streamed)
            self.bins = self.attribute_bins(images, labels)

    @classmethod
    def fit(cls, images: torch.Tensor, labels: torch.Tensor, classes: list[str], dataset: str,
            texts: list[list[str]] | None = None) -> Captioner:
        """Thresholds from these (training) images: the thirds of each attribute the dataset uses."""
        values = measure(images) if _words_for(dataset) else {}  # measured once: the thresholds, then the bins
        thresholds = {}
        for name in _words_for(dataset):
            if PER_CLASS[name]:
                thresholds[name] = [_thirds(values[name][labels == c]) for c in range(len(classes))]
            else:
                thresholds[name] = [_thirds(values[name])] * len(classes)
        captioner = cls({"dataset": dataset, "classes": list(classes), "thresholds": thresholds}, None, labels, texts)
        captioner.bins = captioner.attribute_bins(images, labels, values)
        return captioner

    def measure(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return measure(images)

    def attribute_bins(self, images: torch.Tensor, labels: torch.Tensor,
                       values: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """{attribute: int [N]}: −1 the lowest third, 0 the middle, +1 the highest (this class's thresholds)."""
        values = measure(images) if values is None else values
        out = {}
        for name, cuts in self.state["thresholds"].items():
            cuts = torch.tensor(cuts)[labels]  # (N, 2)
            v = values[name]
            out[name] = (v > cuts[:, 1]).long() - (v < cuts[:, 0]).long()
        return out

    def __len__(self) -> int:
        return 0 if self.labels is None else len(self.labels)

    def caption(self, index: int, generator: torch.Generator) -> str:
        """One phrasing for image ``index``, drawn from ``generator``."""
        return self.draw(index, generator)[0]

    def draw(self, index: int, generator: torch.Generator) -> tuple[str, dict[str, int]]:
        """(a caption of image ``index``, the attribute bins it mentions: {attribute: −1 / 0 / +1})."""
        if self.labels is None:
            raise ValueError("this Captioner holds thresholds only (no images to caption); build it with images and labels")
        label = int(self.labels[index])
        if self.texts is not None and self.texts[index]:
            options = self.texts[index]
            return options[_pick(len(options), generator)], {}
        mentioned = {}
        for name, (low, high, middle) in self.words.items():
            b = int(self.bins[name][index])
            if (b != 0 or middle) and _coin(generator):
                mentioned[name] = b
        return self.phrase(label, mentioned, generator), mentioned

    def phrase(self, label: int, mentioned: dict[str, int], generator: torch.Generator) -> str:
        """The words for class ``label`` with the attribute bins in ``mentioned``, in a drawn phrasing."""
        def word(name: str) -> str | None:
            if name not in mentioned:
                return None
            low, high, middle = self.words[name]
            return {-1: low, 0: middle, 1: high}[mentioned[name]]

        if self.dataset == "mnist":
            noun_forms = [str(label), DIGITS[label], f"the digit {DIGITS[label]}"]
            slant = word("slant")
            before = [w for w in (word("size"), word("thickness"), slant if slant == "upright" else None) if w]
            after = [slant] if slant and slant != "upright" else []
            if before or after:
                noun = [str(label), DIGITS[label], f"digit {DIGITS[label]}"][_pick(3, generator)]
                return " ".join([_article(before[0] if before else noun), *before, noun, *after])
            return noun_forms[_pick(3, generator)]
        if self.dataset == "fashion-mnist":
            names = FASHION.get(self.classes[label], [self.classes[label].lower()])
            noun = names[_pick(len(names), generator)]
            plural = noun.endswith("*")
            noun = noun.rstrip("*")
            before = [w for w in (word("brightness"),) if w]
            if plural or _coin(generator):
                return " ".join([*before, noun])
            return " ".join([_article(before[0] if before else noun), *before, noun])
        name = self.classes[label]
        return [name, f"{_article(name)} {name}", f"a picture of {_article(name)} {name}"][_pick(3, generator)]

    def prompts(self) -> list[str]:
        """One prompt per class for zero-shot classification ("the digit seven", or the class name)."""
        if self.dataset == "mnist" and len(self.classes) == 10:
            return [f"the digit {w}" for w in DIGITS]
        return [FASHION.get(c, [c])[0].rstrip("*") if self.dataset == "fashion-mnist" else c for c in self.classes]

    def vocabulary(self) -> list[str]:
        """Every text this captioner can write, up to the choice among phrasings: what a tokenizer is trained on."""
        out = list(self.prompts())
        g = torch.Generator().manual_seed(0)
        for label in range(len(self.classes)):
            for name, (low, high, middle) in self.words.items():
                for b in (-1, 0, 1):
                    if b or middle:
                        out += [self.phrase(label, {name: b}, g) for _ in range(6)]
            out += [self.phrase(label, {}, g) for _ in range(6)]
            if self.dataset == "mnist":
                out += [str(label), DIGITS[label], f"the digit {DIGITS[label]}", f"digit {DIGITS[label]}"]
            if self.dataset == "fashion-mnist":
                out += [n.rstrip("*") for n in FASHION.get(self.classes[label], [])]
        for options in self.texts or []:
            out += options
        for words in self.words.values():
            out += [w for w in words if w]
        return out


def _coin(generator: torch.Generator) -> bool:
    return bool(torch.rand((), generator=generator) < 0.5)


def _pick(n: int, generator: torch.Generator) -> int:
    return int(torch.randint(n, (), generator=generator))


def _article(word: str) -> str:
    vowel = word[0] in "aeiou8" and not word.startswith(("one", "uni", "use"))
    return "an" if vowel or word in ("11", "18") else "a"
