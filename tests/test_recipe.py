"""Recipe loading: every way a recipe can be wrong names the file, the line and the key; and every
set of choices a recipe offers (samplers, schedules, controls, kinds) is the set the code implements."""

import typing
from pathlib import Path

import pytest
import torch
import typer

import vdcli.recipe
from vdcli import checkpoint, diffusion
from vdcli.cli import app
from vdcli.controls import CONTROLS, control_map
from vdcli.errors import VdError
from vdcli.recipe import LDMRecipe, ViTRecipe, load_recipe, validate_recipe
from vdcli.tasks import diffuse, ldm

RECIPES = Path(__file__).parent.parent / "recipes"


def write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def error_of(*args, **kwargs) -> str:
    with pytest.raises(VdError) as e:
        load_recipe(*args, **kwargs)
    return str(e.value)


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    import yaml

    kind = yaml.safe_load(path.read_text())["kind"]
    assert load_recipe(path, kind).kind == kind


def test_unknown_recipe_key_names_the_nearest_valid_key(tmp_path):
    path = write(tmp_path, "train:\n  steps: 10\n  lrr: 0.1\n")
    message = error_of(path, "vit")
    assert f"{path}:3" in message
    assert "unknown key 'train.lrr'" in message
    assert "did you mean 'train.lr'" in message


def test_unknown_section_names_the_nearest_section(tmp_path):
    message = error_of(write(tmp_path, "modle:\n  dim: 64\n"), "vit")
    assert "unknown key 'modle'" in message and "did you mean 'model'" in message


def test_typo_inside_the_denoiser_union_names_the_key_without_the_tag(tmp_path):
    message = error_of(write(tmp_path, "kind: ldm\nmodel:\n  arch: unet\n  chanels: 32\n"), "ldm")
    assert "unknown key 'model.chanels'" in message and "did you mean 'model.channels'" in message


def test_wrong_type_names_the_key_and_the_value(tmp_path):
    message = error_of(write(tmp_path, "train:\n  steps: many\n"), "vit")
    assert "train.steps" in message and "'many'" in message and ":2" in message


def test_out_of_range_value_says_what_is_allowed(tmp_path):
    message = error_of(write(tmp_path, "train:\n  lr: -1\n"), "vit")
    assert "train.lr" in message and "greater than 0" in message


def test_override_sets_a_nested_key_with_its_yaml_type(tmp_path):
    recipe = load_recipe(write(tmp_path, "train:\n  steps: 10\n"), "vit", ["train.lr=3e-4", "data.name=fashion-mnist"])
    assert recipe.train.lr == 3e-4 and recipe.data.name == "fashion-mnist" and recipe.train.steps == 10


def test_typo_in_an_override_is_reported_as_the_override(tmp_path):
    message = error_of(write(tmp_path, "{}"), "vit", ["train.setps=5"])
    assert "--set train.setps=5" in message and "did you mean 'train.steps'" in message


def test_override_without_equals_sign_is_an_error(tmp_path):
    assert "KEY=VALUE" in error_of(write(tmp_path, "{}"), "vit", ["train.lr"])


def test_recipe_of_another_kind_names_the_right_command(tmp_path):
    assert "vd train-ldm" in error_of(write(tmp_path, "kind: ldm\n"), "vit")


def test_missing_recipe_file_names_a_shipped_recipe(tmp_path):
    message = error_of(tmp_path / "nope.yaml", "ldm")
    assert "not found" in message and "recipes/mnist_latent.yaml" in message
    assert (RECIPES.parent / "recipes" / "mnist_latent.yaml").is_file()


def test_invalid_yaml_names_the_line(tmp_path):
    assert "r.yaml:3: not valid YAML" in error_of(write(tmp_path, "train:\n  steps: 3\n  - oops\n"), "vit")


def test_folder_dataset_needs_a_path(tmp_path):
    assert "data.path" in error_of(write(tmp_path, "data:\n  name: folder\n"), "vit")


def test_dit_is_selected_by_one_key(tmp_path):
    recipe = load_recipe(write(tmp_path, "kind: ldm\ndata:\n  image_size: 32\nmodel:\n  arch: dit\n  depth: 2\n"), "ldm")
    assert isinstance(recipe, LDMRecipe) and recipe.model.arch == "dit" and recipe.model.depth == 2


def test_empty_recipe_is_an_error_not_every_default(tmp_path):
    for text in ("", "# only a comment\n", "---\n", "null\n"):
        assert "r.yaml: the recipe is empty" in error_of(write(tmp_path, text), "vit")


def test_a_recipe_of_only_its_kind_gets_the_defaults(tmp_path):
    assert load_recipe(write(tmp_path, "kind: vit\n"), "vit") == ViTRecipe()


# --- every set of choices is spelled once, and each name does something of its own -------------


LDM = {"data": {"image_size": 32}}  # an 8x8 latent grid, which every default denoiser fits


def choices(section, field: str) -> tuple:
    """The values a recipe field's Literal allows."""
    return typing.get_args(section.model_fields[field].annotation)


def test_the_recipe_offers_exactly_the_samplers_diffusion_implements():
    assert choices(vdcli.recipe.SampleConfig, "sampler") == diffusion.SAMPLERS
    for name in diffusion.SAMPLERS:
        assert validate_recipe({**LDM, "sample": {"sampler": name}}, "ldm").sample.sampler == name


def test_every_sampler_name_runs_a_sampler_of_its_own():
    schedule = diffusion.NoiseSchedule("linear", 100)
    noise = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))

    def model_fn(x, t):  # any smooth ε-prediction: the samplers then all part ways
        return 0.5 * x + 0.01 * t[:, None].float()

    made = {name: diffusion.sample(model_fn, noise, schedule, name, 5, generator=torch.Generator().manual_seed(1))
            for name in diffusion.SAMPLERS}
    for a in made:
        for b in made:
            assert a == b or not torch.allclose(made[a], made[b]), f"{a} and {b} are one sampler under two names"


def test_the_recipe_offers_exactly_the_noise_schedules_make_betas_makes():
    assert choices(diffusion.DiffusionConfig, "schedule") == diffusion.SCHEDULES == diffuse.SCHEDULES
    betas = {name: diffusion.make_betas(name, 100) for name in diffusion.SCHEDULES}  # an unknown name raises
    assert len({tuple(b.tolist()) for b in betas.values()}) == len(betas)
    with pytest.raises(ValueError, match="expected linear, scaled_linear or cosine"):
        diffusion.make_betas("quadratic", 100)


def test_the_recipe_offers_exactly_the_predictions_the_loss_knows():
    assert choices(diffusion.DiffusionConfig, "prediction") == diffusion.PREDICTIONS
    x0, eps = torch.ones(1, 2), torch.zeros(1, 2)
    targets = [diffusion.target(diffusion.NoiseSchedule("linear", 100, name), x0, eps, 50) for name in diffusion.PREDICTIONS]
    assert all(not torch.allclose(a, b) for i, a in enumerate(targets) for b in targets[i + 1:])
    with pytest.raises(ValueError, match="expected eps or v"):
        diffusion.NoiseSchedule("linear", 100, "x0")


def test_the_recipe_offers_exactly_the_control_maps_controls_computes():
    assert choices(vdcli.recipe.ControlNetRecipe, "control") == CONTROLS
    image = torch.zeros(1, 16, 16, dtype=torch.uint8)
    image[:, 4:12, 6:10] = 255  # a thick bar: its edges, skeleton and depth all differ
    maps = {name: control_map(image, name) for name in CONTROLS}
    assert len({m.numpy().tobytes() for m in maps.values()}) == len(maps), "two control names give one map"


def test_every_denoiser_arch_is_built_named_and_has_a_shipped_recipe():
    assert set(vdcli.recipe.DENOISERS) == set(ldm.ARCHS) == set(vdcli.recipe.NAMES) == set(vdcli.recipe.DENOISER_RECIPES)
    for arch, path in vdcli.recipe.DENOISER_RECIPES.items():
        assert load_recipe(RECIPES.parent / path, "ldm").model.arch == arch
        assert validate_recipe({**LDM, "model": {"arch": arch}}, "ldm").model.arch == arch


def test_every_recipe_kind_has_a_command_a_shipped_recipe_and_a_checkpoint_kind():
    commands = typer.main.get_command(app).commands
    assert set(vdcli.recipe.RECIPES) == set(vdcli.recipe.COMMANDS) == set(vdcli.recipe.SHIPPED) == set(checkpoint.KINDS)
    for kind, cls in vdcli.recipe.RECIPES.items():
        assert choices(cls, "kind") == (kind,)
        assert vdcli.recipe.COMMANDS[kind].removeprefix("vd ") in commands
        assert load_recipe(RECIPES.parent / vdcli.recipe.SHIPPED[kind], kind).kind == kind
