"""Image folders: one listing gives a split's files, labels, class names and captions together.

The convention is torchvision's ``ImageFolder`` with Hugging Face's ``imagefolder`` captions:

- ``path/<class>/**/*.png``: one class per sub-folder, classes in name order, files sorted; or a
  flat folder of images with no sub-folders: one class named after the folder (for
  ``conditioning: none``, or for captions alone).
- ``path/train/<class>/`` and ``path/test/<class>/``: the two splits. Without both, every 10th
  image of each class is the test split.
- ``metadata.jsonl`` beside the images (in ``path``, or in ``path/train`` and ``path/test``):
  one JSON object per line, ``{"file_name": "seven/001.png", "text": "a bold seven"}``, names
  relative to the folder that holds the file, ``text`` a string or a list of phrasings. A file
  without a line has no texts of its own (``[]``) and is captioned from its class name
  (``captions.Captioner``); a folder without any metadata.jsonl has ``captions`` None.

Every metadata.jsonl is checked when either split is listed, so a broken line fails before any
training, with the file and line number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vdcli.errors import VdError
from vdcli.imagefiles import IMAGE_SUFFIXES

METADATA = "metadata.jsonl"
EXAMPLE = '{"file_name": "seven/001.png", "text": "a bold seven"}'


@dataclass
class FolderSplit:
    files: list[Path]  # in the order they are read
    labels: list[int]  # per file: its class's index
    classes: list[str]
    captions: list[list[str]] | None  # per file: its metadata.jsonl texts ([] if it has no line); None: no metadata.jsonl


def read_folder(path: str | Path, split: str) -> FolderSplit:
    """The ``split`` ("train" or "test") of the image folder at ``path``: files, labels, classes, captions."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise VdError(f"data.path {path} is not a folder; it should hold the images, or one sub-folder of images per class")
    groups = _groups(path, split)
    files = [f for _, group in groups for f in group]
    if not files and split == "test" and any(group for _, group in _groups(path, "train")):
        raise VdError(f"{path} has no test images: every 10th image of each class is held out, so a class needs at least "
                      "10 images; add images, or put them in train/ and test/ sub-folders")
    if not files:
        raise VdError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {path}")
    texts = _metadata(path)
    labels = [label for label, (_, group) in enumerate(groups) for _ in group]
    captions = None if texts is None else [texts.get(f.resolve(), []) for f in files]
    return FolderSplit(files, labels, [name for name, _ in groups], captions)


def _groups(path: Path, split: str) -> list[tuple[str, list[Path]]]:
    """(class name, image files) of a split, in the order it is read."""
    has_splits = (path / "train").is_dir() and (path / "test").is_dir()
    base = path / split if has_splits else path
    groups = [(p.name, sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES))
              for p in sorted(base.iterdir()) if p.is_dir()]
    if not groups:  # a flat folder
        groups = [(base.resolve().name, sorted(f for f in base.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES))]
    if not has_splits:
        groups = [(name, [f for i, f in enumerate(files) if (i % 10 == 9) == (split == "test")]) for name, files in groups]
    return groups


def _metadata(root: Path) -> dict[Path, list[str]] | None:
    """{image path (resolved): its texts} from every metadata.jsonl of the folder, or None when there is none."""
    found = [p for p in (root / METADATA, root / "train" / METADATA, root / "test" / METADATA) if p.is_file()]
    if not found:
        return None
    out: dict[Path, list[str]] = {}
    for meta in found:
        for n, line in enumerate(meta.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise VdError(f"{meta}:{n}: not a JSON object ({e.msg}); each line is like {EXAMPLE}") from None
            if not isinstance(row, dict) or "file_name" not in row or "text" not in row:
                raise VdError(f"{meta}:{n}: each line needs 'file_name' and 'text', e.g. {EXAMPLE}")
            texts = row["text"] if isinstance(row["text"], list) else [row["text"]]
            if not all(isinstance(t, str) for t in texts):
                raise VdError(f"{meta}:{n}: 'text' is a string or a list of strings")
            image = meta.parent / str(row["file_name"])
            if not image.is_file():
                raise VdError(f"{meta}:{n}: file_name {row['file_name']!r} is not a file in {meta.parent}; "
                              "file names are relative to the folder that holds metadata.jsonl")
            out[image.resolve()] = [t.strip() for t in texts if t.strip()]
    return out
