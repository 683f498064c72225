"""What is wrong with a recipe, in one line that says where: the error reporting of ``recipe.py``.

``recipe.py`` defines the sections and loads them; this module turns a failed load into the
``VdError`` line the CLI prints. Conventions:

- A place is a key path, a tuple such as ``("train", "lr")``, shown dotted (``train.lr``).
- ``lines`` maps each key path of the YAML file to its 1-based line (``key_lines``);
  ``set_lines`` maps each key path given with ``--set`` to the ``--set`` text that gave it.
- Blame goes to the ``--set`` first, the value just changed being the likeliest cause, then to
  the file's line, then to the file: ``--set model.heads=3: ...``, ``r.yaml:4: ...``.
- The first problem is explained and the others counted: "(and 2 more problems)". An unknown key
  names the nearest valid one (``difflib``), else lists the valid keys at that place.
- Constraints between sections (``conflicts``) are the checks pydantic cannot make one section
  at a time: they return (the key paths involved, the problem), and ``blame`` says where.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel, ValidationError

from vdcli.config import Section

Paths = tuple[tuple[str, ...], ...]  # the key paths a constraint involves


# --- one section's problem: pydantic's error, said for a recipe --------------------------------


def explain(error: ValidationError, cls: type[BaseModel], source: str, lines: dict, set_lines: dict) -> str:
    """One line for the first problem: where it is, what is wrong, and what would be right."""
    first = error.errors()[0]
    raw_loc = tuple(str(p) for p in first["loc"])
    loc, _ = _resolve(cls, raw_loc)
    dotted = ".".join(loc) or "(top level)"
    where = _where(loc, source, lines, set_lines)
    more = error.error_count() - 1
    tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    if first["type"] == "extra_forbidden":
        valid = sorted({k for c in _resolve(cls, raw_loc[:-1])[1] for k in c.model_fields})
        close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
        prefix = ".".join(loc[:-1] + (close[0],)) if close else None
        hint = f"; did you mean '{prefix}'?" if close else f"; valid keys here: {', '.join(sorted(valid))}"
        return f"{where}: unknown key '{dotted}'{hint}{tail}"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] in ("missing",):
        return f"{where}: '{dotted}' is required{tail}"
    got = first.get("input")
    shown = "" if isinstance(got, (dict, list)) or first["type"].startswith("value_error") else f" (got {got!r})"
    return f"{where}: {dotted}: {msg}{shown}{tail}"


def _section_fields(annotation: Any) -> list[type[BaseModel]]:
    """The config classes a field may hold (several for a tagged union such as the denoiser)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Annotated:
        return _section_fields(args[0])
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return [c for a in args for c in _section_fields(a)]
    return [annotation] if isinstance(annotation, type) and issubclass(annotation, BaseModel) else []


def _resolve(cls: type[BaseModel], loc: tuple) -> tuple[tuple, list[type[BaseModel]]]:
    """Follow an error path through the recipe classes: (the path without union tags, the classes there).

    pydantic names the member of a tagged union in the path, ('model', 'unet', 'chanels'); a user
    wrote model.chanels, so the tag is dropped from what we show.
    """
    shown: list[str] = []
    classes = [cls]
    for key in loc:
        if len(classes) > 1:
            tagged = [c for c in classes if getattr(c.model_fields.get("arch"), "default", None) == key]
            if tagged:
                classes = tagged
                continue
        shown.append(key)
        classes = [m for c in classes if key in c.model_fields for m in _section_fields(c.model_fields[key].annotation)]
    return tuple(shown), classes


# --- where: the --set or the file's line --------------------------------------------------------


def blame(paths: Paths, source: str, lines: dict, set_lines: dict) -> str:
    """Where a constraint broke: the --set that changed one of ``paths`` (the likeliest cause), else
    the first of them written in the file."""
    for path in paths:
        for n in range(len(path), 0, -1):
            if path[:n] in set_lines:
                return f"--set {set_lines[path[:n]]}"
    for path in paths:
        if path in lines:
            return f"{source}:{lines[path]}"
    return _where(paths[0], source, lines, set_lines)


def _where(loc: tuple, source: str, lines: dict, set_lines: dict) -> str:
    """The --set or file:line that holds ``loc``. A problem with a whole section (model.heads against
    model.dim) is blamed on a --set inside it, if any: the value just changed is the likeliest cause."""
    for n in range(len(loc), 0, -1):
        if loc[:n] in set_lines:
            return f"--set {set_lines[loc[:n]]}"
    inside = [keys for keys in set_lines if len(keys) > len(loc) and keys[: len(loc)] == loc]
    if loc and inside:
        return f"--set {set_lines[inside[-1]]}"
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return f"{source}:{lines[loc[:n]]}"
    return source


def key_lines(text: str) -> dict[tuple, int]:
    """Map each key path in a YAML document to its 1-based line, for error messages."""
    out: dict[tuple, int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return out

    def visit(node: yaml.Node, path: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = path + (str(key.value),)
                out[child] = key.start_mark.line + 1
                visit(value, child)

    if root is not None:
        visit(root, ())
    return out


# --- constraints between sections ---------------------------------------------------------
# Each section validates itself (heads against widths, in the model configs); these need two
# sections at once. They are checked at load, so that a shape that cannot be built fails with the
# recipe's line before any data is read, instead of in a model constructor.


def _divisors(n: int, limit: int = 16) -> str:
    return ", ".join(str(d) for d in range(1, min(n, limit) + 1) if n % d == 0)


def conflicts(recipe: Section) -> list[tuple[Paths, str]]:
    """(the key paths involved, what is wrong) for every constraint the recipe breaks."""
    out = []
    if recipe.kind == "controlnet":
        return out  # its shapes are the base's: checked when the base is read
    size = recipe.data.image_size
    if recipe.kind in ("vit", "clip"):
        model = recipe.model if recipe.kind == "vit" else recipe.model.image  # CLIP's image tower is a ViT
        p, key = model.patch_size, ("model", "patch_size") if recipe.kind == "vit" else ("model", "image", "patch_size")
        if size % p:
            out.append(((key, ("data", "image_size")),
                        f"{'.'.join(key)} {p} does not divide data.image_size {size}: the ViT cuts the image into "
                        f"whole patches; use a divisor of {size} ({_divisors(size)}) or another image size"))
        return out
    vae, prefix = (recipe.model, "model") if recipe.kind == "vae" else (recipe.vae.model, "vae.model")
    if recipe.kind == "ldm" and recipe.vae.checkpoint:
        return out  # the latent size is the named VAE's: checked when the first stage is read
    f = vae.downsample
    if size % f:
        up = -(-size // f) * f
        out.append(((("data", "image_size"), tuple(f"{prefix}.downsample".split("."))),
                    f"data.image_size {size} is not a multiple of {prefix}.downsample {f}, so the latent grid would "
                    f"not be whole; use data.image_size {up} (smaller images are zero-padded to it) or a smaller {prefix}.downsample"))
        return out
    if recipe.kind == "ldm":
        out += denoiser_conflicts(recipe.model, size // f, f"{size}/{f}")
    return out


def denoiser_conflicts(model: Section, latent: int, how: str = "") -> list[tuple[Paths, str]]:
    """Whether the denoiser fits a latent grid of side ``latent``: whole DiT patches, or a U-Net that can halve it."""
    side = f"the {latent}x{latent} latent grid" + (f" ({how})" if how else "")
    if model.arch == "dit" and latent % model.patch_size:
        return [((("model", "patch_size"),), f"model.patch_size {model.patch_size} does not divide {side}; "
                 f"use a divisor of {latent} ({_divisors(latent)})")]
    levels = len(getattr(model, "channel_mult", ()))
    if model.arch == "unet" and latent % 2 ** (levels - 1):
        return [((("model", "channel_mult"),), f"model.channel_mult has {levels} levels, so the U-Net halves {side} "
                 f"{levels - 1} times, which does not come out whole; use fewer levels or a larger image")]
    return []
