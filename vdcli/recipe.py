"""Recipes: the YAML files that say what to train, loaded into typed, validated objects.

A recipe has sections (``data``, ``model``, ``train``, ...). Each section is a config class
defined next to the code it configures (``ViTConfig`` in ``models/vit.py``, ``TrainConfig``
here), and each component is built from its own section; nothing deep in the core reads raw
dicts. Loading is strict: an unknown key, a wrong type or an out-of-range value is a
``VdError`` that names the file, the line, the key path and, for a typo, the nearest valid key.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, Discriminator, Field, Tag, ValidationError, model_validator

from vdcli.config import Section
from vdcli.diffusion import DiffusionConfig
from vdcli.errors import VdError
from vdcli.models.clip import CLIPConfig
from vdcli.models.dit import DiTConfig
from vdcli.models.unet import UNetConfig
from vdcli.models.vae import VAEConfig
from vdcli.models.vit import ViTConfig

DatasetName = Literal["mnist", "fashion-mnist", "cifar10", "folder", "synthetic"]


class DataConfig(Section):
    """Where images come from and the size every model sees them at."""

    name: DatasetName = "mnist"
    path: str | None = None  # the image-folder tree, for name: folder (one sub-folder per class)
    image_size: int = Field(28, gt=0)  # smaller datasets are padded to it (28 -> 32), larger ones resized
    channels: Literal[1, 3] | None = None  # None: the dataset's own (1 for MNIST, 3 for CIFAR-10)
    limit: int | None = Field(None, gt=0)  # use at most this many training images (smoke runs)
    shift: int = Field(0, ge=0)  # training images move by up to this many pixels (classifiers only)
    # The one rule: stream: true reads a folder's images from disk at every step (streaming.py)
    # instead of decoding them all into memory first; an LDM then caches its latents in shards on
    # disk too. For folders larger than RAM; the in-memory default is faster for small sets.
    stream: bool = False
    workers: int | None = Field(None, ge=0)  # processes decoding a streamed folder; None: min(4, CPU cores); 0: in the main process

    @model_validator(mode="after")
    def _folder_needs_path(self) -> DataConfig:
        if self.name == "folder" and not self.path:
            raise ValueError("data.name: folder needs data.path, the folder that holds one sub-folder per class")
        if self.stream and self.name != "folder":
            raise ValueError(f"data.stream streams an image folder (data.name: folder); {self.name} is small enough to "
                             "hold in memory, so leave data.stream: false")
        return self


class TrainConfig(Section):
    """The shared training loop's settings (``trainer.py``): AdamW, warm-up + cosine, EMA."""

    steps: int = Field(2000, gt=0)
    seed: int = Field(0, ge=0, lt=2**32)  # initial weights, batch order and every random draw of step s depend on (seed, s) only
    deterministic: bool = False  # torch.use_deterministic_algorithms: bitwise-repeatable on CUDA too, slower
    compile: bool = False  # torch.compile the network the loss runs through; pays a compile of minutes first (bench/RESULTS.md)
    batch_size: int = Field(128, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_steps: int = Field(100, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)  # None: no clipping
    ema_decay: float | None = Field(None, gt=0, lt=1)  # the decay once the warm-up, (1 + step) / (10 + step), passes it; None: no EMA
    log_every: int = Field(50, gt=0)
    eval_every: int = Field(500, gt=0)
    checkpoint_every: int = Field(500, gt=0)


class ViTTrainConfig(TrainConfig):
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class VAETrainConfig(TrainConfig):
    kl_weight: float = Field(1e-4, ge=0)  # beta in reconstruction + beta * KL


class LDMTrainConfig(TrainConfig):
    cond_drop_prob: float = Field(0.1, ge=0, le=1)  # labels dropped to the null class, for guidance
    # Autoguidance's bad model (Karras et al. 2024): the averaged weights at this fraction of the
    # steps, kept in the checkpoint as "guide"; unconditional samples are guided away from it.
    guide_at: float | None = Field(None, gt=0, lt=1)


class CLIPTrainConfig(TrainConfig):
    shift: int = Field(1, ge=0)  # training images move by up to this many pixels (the captions' attributes do not change)
    eval_images: int = Field(2000, gt=0)  # test images scored at the periodic evaluations (all of them at the end)


class SampleConfig(Section):
    """Defaults for ``vd sample`` and the grids written during training."""

    sampler: Literal["ddim", "ddpm", "dpmpp-2m"] = "ddim"
    steps: int = Field(50, gt=0)
    eta: float = Field(0.0, ge=0)  # DDIM only
    guidance: float = Field(3.0, ge=0)  # classifier-free guidance of a class or prompt; 1 = off
    autoguidance: float = Field(1.0, ge=0)  # w of unconditional samples against train.guide_at's weights; 1 = off
    prompts: list[str] | None = None  # a text model's rows in the training grids (default: the class names)


class UNetSection(UNetConfig):
    arch: Literal["unet"] = "unet"


class DiTSection(DiTConfig):
    arch: Literal["dit"] = "dit"


def _arch(value: Any) -> str:
    return value.get("arch", "unet") if isinstance(value, dict) else getattr(value, "arch", "unet")


# model.arch picks the denoiser; without it, the U-Net.
Denoiser = Annotated[Union[Annotated[UNetSection, Tag("unet")], Annotated[DiTSection, Tag("dit")]], Discriminator(_arch)]


class ViTRecipe(Section):
    kind: Literal["vit"] = "vit"
    data: DataConfig = DataConfig()
    model: ViTConfig = ViTConfig()
    train: ViTTrainConfig = ViTTrainConfig()


class VAERecipe(Section):
    kind: Literal["vae"] = "vae"
    data: DataConfig = DataConfig()
    model: VAEConfig = VAEConfig()
    train: VAETrainConfig = VAETrainConfig()


class CLIPRecipe(Section):
    kind: Literal["clip"] = "clip"
    data: DataConfig = DataConfig()
    model: CLIPConfig = CLIPConfig()
    train: CLIPTrainConfig = CLIPTrainConfig()


class CLIPStage(Section):
    """The text stage of a text LDM recipe: a trained CLIP, or the recipe to train one (on the LDM's data)."""

    checkpoint: str | None = None  # a CLIP checkpoint file or run folder (vd train-clip); None: train one first
    model: CLIPConfig = CLIPConfig()
    train: CLIPTrainConfig = CLIPTrainConfig()


class VAEStage(Section):
    """The first stage of an LDM recipe: a trained VAE, or the recipe to train one."""

    checkpoint: str | None = None  # a VAE checkpoint file or run folder; None: train one first
    model: VAEConfig = VAEConfig()
    train: VAETrainConfig = VAETrainConfig()


class LDMRecipe(Section):
    kind: Literal["ldm"] = "ldm"
    # class: the denoiser takes a class label (and a null label, for guidance); none: no label at all,
    # for image folders without classes (sampling then takes no --class and no guidance); text: the
    # frozen CLIP text tower's token states, through cross-attention (the clip: stage below)
    conditioning: Literal["class", "none", "text"] = "class"
    data: DataConfig = DataConfig()
    vae: VAEStage = VAEStage()
    clip: CLIPStage = CLIPStage()  # conditioning: text only
    model: Denoiser = UNetSection()
    diffusion: DiffusionConfig = DiffusionConfig()
    train: LDMTrainConfig = LDMTrainConfig()
    sample: SampleConfig = SampleConfig()


class ControlNetTrainConfig(TrainConfig):
    control_drop_prob: float = Field(0.1, ge=0, le=1)  # control maps dropped to an empty map, so that --control-scale has a base to scale from


class ControlNetRecipe(Section):
    """A ControlNet on a trained LDM: the base is frozen; its data, condition drop rate and sampler are the base's."""

    kind: Literal["controlnet"] = "controlnet"
    base: str  # the LDM run folder or checkpoint to control (vd train-ldm)
    control: Literal["edges", "scribble", "depth"] = "scribble"  # vdcli/controls.py
    train: ControlNetTrainConfig = ControlNetTrainConfig()


DENOISER_RECIPES = {"unet": "recipes/mnist_latent.yaml", "dit": "recipes/mnist_latent_dit.yaml"}
NAMES = {"unet": "U-Net", "dit": "DiT"}
RECIPES: dict[str, type[Section]] = {"vit": ViTRecipe, "vae": VAERecipe, "ldm": LDMRecipe, "clip": CLIPRecipe,
                                     "controlnet": ControlNetRecipe}
COMMANDS = {"vit": "vd train-vit", "vae": "vd train-vae", "ldm": "vd train-ldm", "clip": "vd train-clip",
            "controlnet": "vd train-controlnet"}
SHIPPED = {"vit": "recipes/mnist_vit.yaml", "vae": "recipes/mnist_vae.yaml", "ldm": "recipes/mnist_latent.yaml",
           "clip": "recipes/mnist_clip.yaml", "controlnet": "recipes/mnist_controlnet.yaml"}


# --- loading -------------------------------------------------------------------------------


def load_recipe(path: str | Path, kind: str, overrides: list[str] = (), notes: list[str] | None = None) -> Section:
    """Read a YAML recipe, apply ``--set key.path=value`` overrides and validate it as ``kind``.

    What loading changed besides the overrides (keys dropped by ``--set model.arch=...``) is
    appended to ``notes``, for the caller to show.
    """
    path = Path(path)
    if not path.is_file():
        hint = " (it is a folder)" if path.is_dir() else ""
        raise VdError(f"recipe {path} not found{hint}; the shipped recipes are in recipes/, e.g. {SHIPPED[kind]}")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise VdError(f"{path}: not a text file; a recipe is YAML, e.g. {SHIPPED[kind]}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise VdError(f"{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if raw is None:  # an empty file, or only comments: training "every default" is never what was meant
        raise VdError(f"{path}: the recipe is empty; it needs at least 'kind: {kind}' and the sections to change, "
                      f"e.g. {SHIPPED[kind]}")
    if not isinstance(raw, dict):
        raise VdError(f"{path}: a recipe is a mapping of sections (kind:, data:, model:, train:, ...), not a {type(raw).__name__}")
    return validate_recipe(raw, kind, source=str(path), overrides=overrides, lines=_key_lines(text), notes=notes)


def validate_recipe(
    raw: dict, kind: str, source: str = "<recipe>", overrides: list[str] = (), lines: dict | None = None,
    notes: list[str] | None = None,
) -> Section:
    """Validate a recipe given as a dict (what ``load_recipe`` does after reading the file).

    Each section is checked alone, then the constraints between sections (``_conflicts``); both
    name the file and line, or the ``--set``, that holds the offending value.
    """
    found = raw.get("kind", kind)
    if found != kind:
        hint = f"; train it with {COMMANDS[found]}" if isinstance(found, str) and found in COMMANDS else ""  # kind: [vit] is no key
        raise VdError(f"{source}: this is a '{found}' recipe, not a '{kind}' recipe{hint}")
    raw = dict(raw)
    set_lines = {}
    for item in overrides:
        keys = _apply_override(raw, item)
        set_lines[keys] = item
    if kind == "ldm":
        _switch_denoiser(raw, set_lines, source, lines or {}, notes)
    cls = RECIPES[kind]
    try:
        recipe = cls.model_validate(raw)
    except ValidationError as e:
        raise VdError(_explain(e, cls, source, lines or {}, set_lines)) from None
    for paths, problem in _conflicts(recipe):
        raise VdError(f"{_blame(paths, source, lines or {}, set_lines)}: {problem}")
    return recipe


def _switch_denoiser(raw: dict, set_lines: dict, source: str, lines: dict, notes: list[str] | None) -> None:
    """``--set model.arch=dit`` on a U-Net recipe (or the reverse): drop the file's keys the other
    denoiser does not have, with a note, so that the switch is one option as the README says.
    Keys given with --set are never dropped: a wrong one is still an error."""
    if ("model", "arch") not in set_lines or not isinstance(raw.get("model"), dict):
        return
    arch = raw["model"].get("arch")
    sections = {"unet": UNetSection, "dit": DiTSection}
    if arch not in sections:
        return  # the union's own error lists the valid values
    valid = sections[arch].model_fields
    dropped = [k for k in raw["model"] if k not in valid and ("model", k) not in set_lines]
    if not dropped:
        return
    raw["model"] = {k: v for k, v in raw["model"].items() if k not in dropped}
    where = f"{source}:{lines[('model',)]}" if ("model",) in lines else source
    if notes is not None:
        notes.append(f"note: --set {set_lines[('model', 'arch')]} ignores the other denoiser's keys in {where}: "
                     f"{', '.join('model.' + k for k in dropped)}; the {NAMES[arch]} recipe to start from: {DENOISER_RECIPES[arch]}")


def _apply_override(raw: dict, item: str) -> tuple[str, ...]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise VdError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=3e-4")
    keys = tuple(key.strip().split("."))
    if not all(keys):
        raise VdError(f"--set {item}: an empty key between dots; a key path looks like train.lr")
    node = raw
    for k in keys[:-1]:
        child = node.get(k) or {}
        if not isinstance(child, dict):
            raise VdError(f"--set {item}: {k} is a value, not a section")
        node[k] = node = dict(child)  # a copy: the caller's dict is never modified
    try:
        node[keys[-1]] = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        node[keys[-1]] = value
    return keys


def _explain(error: ValidationError, cls: type[BaseModel], source: str, lines: dict, set_lines: dict) -> str:
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


# --- constraints between sections ---------------------------------------------------------
# Each section validates itself (heads against widths, in the model configs); these need two
# sections at once. They are checked at load, so that a shape that cannot be built fails with the
# recipe's line before any data is read, instead of in a model constructor.


def _divisors(n: int, limit: int = 16) -> str:
    return ", ".join(str(d) for d in range(1, min(n, limit) + 1) if n % d == 0)


def _conflicts(recipe: Section) -> list[tuple[tuple[tuple[str, ...], ...], str]]:
    """(the key paths involved, what is wrong) for every constraint the recipe breaks."""
    out = []
    if isinstance(recipe, ControlNetRecipe):
        return out  # its shapes are the base's: checked when the base is read
    size = recipe.data.image_size
    if isinstance(recipe, (ViTRecipe, CLIPRecipe)):
        model = recipe.model if isinstance(recipe, ViTRecipe) else recipe.model.image  # CLIP's image tower is a ViT
        p, key = model.patch_size, ("model", "patch_size") if isinstance(recipe, ViTRecipe) else ("model", "image", "patch_size")
        if size % p:
            out.append(((key, ("data", "image_size")),
                        f"{'.'.join(key)} {p} does not divide data.image_size {size}: the ViT cuts the image into "
                        f"whole patches; use a divisor of {size} ({_divisors(size)}) or another image size"))
        return out
    vae, prefix = (recipe.model, "model") if isinstance(recipe, VAERecipe) else (recipe.vae.model, "vae.model")
    if isinstance(recipe, LDMRecipe) and recipe.vae.checkpoint:
        return out  # the latent size is the named VAE's: checked when the first stage is read
    f = vae.downsample
    if size % f:
        up = -(-size // f) * f
        out.append(((("data", "image_size"), tuple(f"{prefix}.downsample".split("."))),
                    f"data.image_size {size} is not a multiple of {prefix}.downsample {f}, so the latent grid would "
                    f"not be whole; use data.image_size {up} (smaller images are zero-padded to it) or a smaller {prefix}.downsample"))
        return out
    if isinstance(recipe, LDMRecipe):
        out += denoiser_conflicts(recipe.model, size // f, f"{size}/{f}")
    return out


def denoiser_conflicts(model: Section, latent: int, how: str = "") -> list[tuple[tuple[tuple[str, ...], ...], str]]:
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


def _blame(paths: tuple[tuple[str, ...], ...], source: str, lines: dict, set_lines: dict) -> str:
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


def _key_lines(text: str) -> dict[tuple, int]:
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


def recipe_to_yaml(recipe: BaseModel) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
