"""Recipes: the YAML files that say what to train, loaded into typed, validated objects.

A recipe has sections (``data``, ``model``, ``train``, ...). Each section is a config class
defined next to the code it configures (``ViTConfig`` in ``models/vit.py``, ``TrainConfig``
here), and each component is built from its own section; nothing deep in the core reads raw
dicts. Loading is strict: an unknown key, a wrong type or an out-of-range value is a
``VdError`` that names the file, the line, the key path and, for a typo, the nearest valid key;
those messages, and the constraints between sections, are written in ``recipe_errors.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from vdcli.conditioning import ConditioningKind
from vdcli.config import Section
from vdcli.controls import Control
from vdcli.diffusion import DiffusionConfig, Sampler
from vdcli.errors import VdError
from vdcli.imagefiles import colour
from vdcli.models.clip import CLIPConfig
from vdcli.models.cnn import CNNConfig
from vdcli.models.dit import DiTConfig
from vdcli.models.unet import UNetConfig
from vdcli.models.vae import VAEConfig
from vdcli.models.vit import ViTConfig
from vdcli.recipe_errors import blame, conflicts, explain, key_lines
from vdcli.recipe_errors import denoiser_conflicts  # noqa: F401 (tasks/stages.py checks a named VAE's latent grid with it)
from vdcli.samplers import Spacing
from vdcli.tracking import check_installed

# The one list of dataset names: data.py builds its references (mnist:test:42) from it.
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
    # What a transparent pixel of an image file is composited onto (imagefiles.py): white, black, #rrggbb.
    background: str = "white"

    @field_validator("background")
    @classmethod
    def _a_colour(cls, value: str) -> str:
        colour(value)  # a ValueError names the colour and what a colour looks like
        return value

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
    batch_size: int = Field(128, gt=0)  # the global batch of one optimiser step, over every process
    # Gradient accumulation (accumulate.py): the rows that go through the network at a time; None: the whole per-process batch
    micro_batch: int | None = Field(None, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_steps: int = Field(100, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)  # None: no clipping
    ema_decay: float | None = Field(None, gt=0, lt=1)  # the decay once the warm-up, (1 + step) / (10 + step), passes it; None: no EMA
    log_every: int = Field(50, gt=0)
    eval_every: int = Field(500, gt=0)
    checkpoint_every: int = Field(500, gt=0)
    log_to: Literal["tensorboard"] | None = None  # also write the scalars and sample grids for TensorBoard (tracking.py)

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        check_installed(self.log_to)
        if self.micro_batch and self.batch_size % self.micro_batch:
            raise ValueError(f"train.micro_batch {self.micro_batch} does not divide train.batch_size {self.batch_size}; use a divisor of it")
        return self


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

    @model_validator(mode="after")
    def _no_micro_batch(self) -> CLIPTrainConfig:
        if self.micro_batch:  # each image's negatives are the batch's other captions: split, the loss is another one
            raise ValueError("train.micro_batch: CLIP's contrastive loss compares every image with every caption of the batch, "
                             "so it cannot be accumulated over micro-batches; remove it")
        return self


class SampleConfig(Section):
    """Defaults for ``vd sample`` and the grids written during training."""

    sampler: Sampler = "ddim"
    steps: int = Field(50, gt=0)
    spacing: Spacing | None = None  # None: the sampler's own (diffusion.sampler_timesteps)
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


# model.arch picks the denoiser; without it, the U-Net. Each section's arch Literal is its one name.
DENOISERS: dict[str, type[Section]] = {c.model_fields["arch"].default: c for c in (UNetSection, DiTSection)}
Denoiser = Annotated[Union[tuple(Annotated[c, Tag(arch)] for arch, c in DENOISERS.items())], Discriminator(_arch)]


class ViTSection(ViTConfig):
    arch: Literal["vit"] = "vit"


class CNNSection(CNNConfig):
    arch: Literal["cnn"] = "cnn"


def _classifier_arch(value: Any) -> str:
    return value.get("arch", "vit") if isinstance(value, dict) else getattr(value, "arch", "vit")


# model.arch picks the classifier; without it, the ViT. The CNN is the inductive-bias baseline (models/cnn.py).
Classifier = Annotated[Union[Annotated[ViTSection, Tag("vit")], Annotated[CNNSection, Tag("cnn")]], Discriminator(_classifier_arch)]


class ViTRecipe(Section):
    kind: Literal["vit"] = "vit"
    init_from: str | None = None  # fine-tune: a run folder or checkpoint of this kind whose weights start the run (finetune.py)
    data: DataConfig = DataConfig()
    model: Classifier = ViTSection()
    train: ViTTrainConfig = ViTTrainConfig()


class VAERecipe(Section):
    kind: Literal["vae"] = "vae"
    init_from: str | None = None  # fine-tune: a run folder or checkpoint of this kind whose weights start the run (finetune.py)
    data: DataConfig = DataConfig()
    model: VAEConfig = VAEConfig()
    train: VAETrainConfig = VAETrainConfig()


class CLIPRecipe(Section):
    kind: Literal["clip"] = "clip"
    init_from: str | None = None  # fine-tune: a run folder or checkpoint of this kind whose weights start the run (finetune.py)
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
    init_from: str | None = None  # fine-tune: a run folder or checkpoint of this kind whose weights start the run (finetune.py)
    # class: the denoiser takes a class label (and a null label, for guidance); none: no label at all,
    # for image folders without classes (sampling then takes no --class and no guidance); text: the
    # frozen CLIP text tower's token states, through cross-attention (the clip: stage below)
    conditioning: ConditioningKind = "class"
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
    init_from: str | None = None  # fine-tune: a run folder or checkpoint of this kind whose weights start the run (finetune.py)
    base: str  # the LDM run folder or checkpoint to control (vd train-ldm)
    control: Control = "scribble"  # vdcli/controls.py
    train: ControlNetTrainConfig = ControlNetTrainConfig()


DENOISER_RECIPES = {"unet": "recipes/mnist_latent.yaml", "dit": "recipes/mnist_latent_dit.yaml"}
NAMES = {"unet": "U-Net", "dit": "DiT"}
RECIPES: dict[str, type[Section]] = {c.model_fields["kind"].default: c  # each recipe's kind Literal is its one name
                                     for c in (ViTRecipe, VAERecipe, LDMRecipe, CLIPRecipe, ControlNetRecipe)}
COMMANDS = {kind: f"vd train-{kind}" for kind in RECIPES}
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
    return validate_recipe(raw, kind, source=str(path), overrides=overrides, lines=key_lines(text), notes=notes)


def validate_recipe(
    raw: dict, kind: str, source: str = "<recipe>", overrides: list[str] = (), lines: dict | None = None,
    notes: list[str] | None = None,
) -> Section:
    """Validate a recipe given as a dict (what ``load_recipe`` does after reading the file).

    Each section is checked alone, then the constraints between sections (``recipe_errors.conflicts``);
    both name the file and line, or the ``--set``, that holds the offending value.
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
        raise VdError(explain(e, cls, source, lines or {}, set_lines)) from None
    for paths, problem in conflicts(recipe):
        raise VdError(f"{blame(paths, source, lines or {}, set_lines)}: {problem}")
    return recipe


def _switch_denoiser(raw: dict, set_lines: dict, source: str, lines: dict, notes: list[str] | None) -> None:
    """``--set model.arch=dit`` on a U-Net recipe (or the reverse): drop the file's keys the other
    denoiser does not have, with a note, so that the switch is one option as the README says.
    Keys given with --set are never dropped: a wrong one is still an error."""
    if ("model", "arch") not in set_lines or not isinstance(raw.get("model"), dict):
        return
    arch = raw["model"].get("arch")
    if arch not in DENOISERS:
        return  # the union's own error lists the valid values
    valid = DENOISERS[arch].model_fields
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


def recipe_to_yaml(recipe: BaseModel) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
