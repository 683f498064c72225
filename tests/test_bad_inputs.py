"""Bad input never crashes and never costs work.

Every command is driven through the CLI with inputs a new user gets wrong: missing, empty, truncated
and mislabelled files, pickles, typos, wrong kinds, out-of-range options, impossible model shapes.
Each must end with exit code 2, no traceback, a short message that names what was wrong, and
nothing written or changed: the test folder and the trained checkpoints are snapshotted before and
compared after, so a refused training run that left its run folder behind fails here.
"""

import hashlib
import os
import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vdcli.cli import app

runner = CliRunner()

SYNTHETIC = "kind: {kind}\ndata:\n  name: synthetic\n  limit: 64\n  image_size: 16\n"


def vd(*args):
    return runner.invoke(app, [str(a) for a in args])


def train_tiny(folder: Path, kind: str, *sets: str) -> Path:
    """A real checkpoint of ``kind``, trained for 2 steps on generated shapes (a second or two)."""
    recipe = folder / f"{kind}.yaml"
    recipe.write_text(SYNTHETIC.format(kind=kind))
    args = [a for s in sets for a in ("--set", s)]
    result = vd(f"train-{kind}", recipe, "--out", folder / "runs", "--quiet", "--device", "cpu",
                "--set", "train.steps=2", "--set", "train.batch_size=16", *args)
    assert result.exit_code == 0, result.output
    return folder / "runs" / kind / "latest" / "checkpoint.safetensors"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trained")
    return {
        "vit": train_tiny(folder, "vit", "model.dim=16", "model.depth=1", "model.heads=2"),
        "vae": train_tiny(folder, "vae", "model.channels=8"),
        "ldm": train_tiny(folder, "ldm", "vae.model.channels=8", "vae.train.steps=2", "vae.train.batch_size=16",
                          "model.channels=16", "model.blocks_per_level=1", "sample.steps=2"),
        "folder": folder,
    }


def make_inputs(folder: Path, trained: dict) -> None:
    """The wrong (and a few right) files the cases below point at, in the test's own folder."""
    (folder / "folder").mkdir()
    (folder / "taken").write_text("a file where a folder is expected\n")
    Image.new("L", (16, 16), 255).save(folder / "image.png")
    Image.new("L", (16, 16), 0).save(folder / "black.png")
    (folder / "notimage.png").write_text("not a PNG\n")
    (folder / "model.pt").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    data = trained["vit"].read_bytes()
    (folder / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(folder / "plain.safetensors"))
    recipes = {
        "empty.yaml": "",
        "comments.yaml": "# a recipe, some day\n",
        "list.yaml": "- data\n- model\n",
        "broken.yaml": "kind: vit\ndata: [unclosed\n",
        "nowhere.yaml": "kind: {kind}\ndata:\n  name: folder\n  path: no_such_images\n  image_size: 16\n",
        "typo.yaml": "kind: {kind}\ntrian:\n  steps: 3\n",
        "other.yaml": "kind: {other}\n",
        "ok.yaml": SYNTHETIC,
        "size30.yaml": "kind: vae\ndata:\n  name: synthetic\n  image_size: 30\nmodel:\n  downsample: 4\n",
        "vae_typo.yaml": SYNTHETIC.format(kind="ldm") + "vae:\n  checkpoint: vae_chekpoint.safetensors\n",
        "tab.yaml": "kind: {kind}\ndata:\n\tname: synthetic\n",
        "kindlist.yaml": "kind: [{kind}]\n",
        "datafile.yaml": "kind: {kind}\ndata:\n  name: folder\n  path: taken\n  image_size: 16\n",
    }
    cn = "kind: controlnet\nbase: {base}\n"
    for name, base in (("cn_ok.yaml", trained["ldm"]), ("cn_missing.yaml", "no_such_run"), ("cn_vae.yaml", trained["vae"])):
        (folder / name).write_text(cn.format(base=base))
    (folder / "cn_nobase.yaml").write_text("kind: controlnet\ncontrol: edges\n")
    for kind, other in (("vit", "vae"), ("vae", "ldm"), ("ldm", "vit"), ("clip", "vit"), ("controlnet", "vit")):
        for name, text in recipes.items():
            (folder / f"{kind}_{name}").write_text(text.format(kind=kind, other=other))
        (folder / f"{kind}_binary.yaml").write_bytes(b"\xff\xfe\x00 not text\n")  # a file picked by mistake
    (folder / "recipe_folder.yaml").mkdir()
    for name, lines in (("meta_missing", ['{"file_name": "0.png", "text": "a square"}', '{"file_name": "gone.png", "text": "a disk"}']),
                        ("meta_broken", ['{"file_name": "0.png", "text": "a square"']),
                        ("meta_nofile", ['{"text": "a square"}'])):
        (folder / name).mkdir()
        for i in range(10):
            Image.new("RGB", (16, 16), (i * 20, 0, 0)).save(folder / name / f"{i}.png")
        (folder / name / "metadata.jsonl").write_text("\n".join(lines) + "\n")
        (folder / f"ldm_{name}.yaml").write_text(f"kind: ldm\ndata:\n  name: folder\n  path: {name}\n  image_size: 16\n  stream: true\n")


def snapshot(*roots: Path) -> dict:
    """Every file (size and hash), folder and link under ``roots``."""
    seen = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                if path.is_symlink():
                    seen[str(path)] = ("link", os.readlink(path))
                elif path.is_dir():
                    seen[str(path)] = ("dir",)
                else:
                    seen[str(path)] = ("file", hashlib.sha1(path.read_bytes()).hexdigest())
    return seen


def message_lines(output: str) -> list[str]:
    """What the user reads: click's usage header and box borders around its own errors aside."""
    return [line for line in output.splitlines()
            if line.strip() and not line.startswith(("Usage:", "Try '")) and line.strip()[0] not in "╭╰"]


# (command and arguments, what the message must name). {vit}, {vae}, {ldm} are trained checkpoints.
PATCHIFY = [
    (["patchify", "nope.png"], "nope.png"),
    (["patchify", ""], "IMAGE ''"),
    (["patchify", "  "], "IMAGE '  '"),
    (["patchify", "folder"], "folder"),
    (["patchify", "notimage.png"], "notimage.png"),
    (["patchify", "model.pt"], "model.pt"),
    (["patchify", "synthetic:test:999"], "synthetic:test:999"),
    (["patchify", "synthetic:valid:0"], "synthetic:valid:0"),
    (["patchify", "image.png", "--patch", "0"], "--patch"),
    (["patchify", "image.png", "--patch", "5"], "5"),
    (["patchify", "image.png", "--size", "0"], "--size"),
    (["patchify", "image.png", "--out", "taken"], "--out taken"),
    (["patchify", "image.png", "--out", "taken/sub"], "taken"),
    (["patchify", "synthetic:test:0", "--data-root", "taken"], "--data-root taken"),
    (["patchify", "image.png", "--bogus"], "--bogus"),
]


def train_cases(kind: str) -> list:
    cmd = f"train-{kind}"
    ok = f"{kind}_ok.yaml"
    return [
        ([cmd, "nope.yaml"], "nope.yaml"),
        ([cmd, "recipe_folder.yaml"], "recipe_folder.yaml"),
        ([cmd, f"{kind}_empty.yaml"], f"{kind}_empty.yaml: the recipe is empty"),
        ([cmd, f"{kind}_comments.yaml"], f"{kind}_comments.yaml: the recipe is empty"),
        ([cmd, f"{kind}_list.yaml"], f"{kind}_list.yaml"),
        ([cmd, f"{kind}_broken.yaml"], f"{kind}_broken.yaml:"),
        ([cmd, f"{kind}_other.yaml"], f"{kind}_other.yaml"),
        ([cmd, f"{kind}_typo.yaml"], f"{kind}_typo.yaml:2"),
        ([cmd, f"{kind}_nowhere.yaml"], "no_such_images"),
        ([cmd, ok, "--set", "train.steps"], "train.steps"),
        ([cmd, ok, "--set", "train.steps=0"], "--set train.steps=0"),
        ([cmd, ok, "--set", "train..steps=1"], "--set train..steps=1"),
        ([cmd, ok, "--set", "=3"], "--set '=3'"),
        ([cmd, ok, "--set", "train.seed=-1"], "--set train.seed=-1"),
        ([cmd, ok, "--seed", "-1"], "--seed"),
        ([cmd, ok, "--out", "taken"], "--out taken"),
        ([cmd, ok, "--out", "taken/runs"], "taken"),
        ([cmd, ok, "--device", "gpu7"], "--device gpu7"),
        ([cmd, ok, "--device", ""], "--device ''"),
        ([cmd, ok, "--data-root", "taken"], "--data-root taken"),
        ([cmd, ok, "--resume"], f"no runs of recipe '{kind}_ok'"),
        ([cmd, f"{kind}_tab.yaml"], f"{kind}_tab.yaml:3: not valid YAML"),
        ([cmd, f"{kind}_kindlist.yaml"], f"{kind}_kindlist.yaml: this is a"),
        ([cmd, f"{kind}_datafile.yaml"], "data.path taken is not a folder"),
        ([cmd, f"{kind}_binary.yaml"], f"{kind}_binary.yaml: not a text file"),
        ([cmd, ok, "--out", "/proc/vd-runs"], "cannot make the run folder /proc/vd-runs"),
    ]


TRAIN_VIT = train_cases("vit") + [
    (["train-vit", "vit_ok.yaml", "--set", "model.patch_size=5"], "--set model.patch_size=5"),
    (["train-vit", "vit_ok.yaml", "--set", "model.dim=30"], "--set model.dim=30"),
    (["train-vit", "vit_ok.yaml", "--set", "data.name=imagenet"], "--set data.name=imagenet"),
]
TRAIN_VAE = train_cases("vae") + [
    (["train-vae", "vae_size30.yaml"], "vae_size30.yaml:4: data.image_size 30"),
    (["train-vae", "vae_ok.yaml", "--set", "data.image_size=30"], "--set data.image_size=30"),
    (["train-vae", "vae_ok.yaml", "--set", "model.downsample=3"], "--set model.downsample=3"),
    (["train-vae", "vae_ok.yaml", "--set", "model.downsample=32"], "--set model.downsample=32"),
]
TRAIN_LDM = train_cases("ldm") + [
    (["train-ldm", "ldm_vae_typo.yaml"], "vae.checkpoint vae_chekpoint.safetensors not found"),
    (["train-ldm", "ldm_ok.yaml", "--set", "vae.checkpoint={vit}"], "{vit} is a ViT"),
    (["train-ldm", "ldm_ok.yaml", "--set", "vae.checkpoint={vae}", "--set", "data.image_size=32"], "16x16"),
    (["train-ldm", "ldm_ok.yaml", "--set", "vae.checkpoint={vae}", "--set", "model.arch=dit", "--set", "model.patch_size=3"],
     "model.patch_size 3"),
    (["train-ldm", "ldm_ok.yaml", "--set", "model.arch=dit", "--set", "model.patch_size=3"], "--set model.patch_size=3"),
    (["train-ldm", "ldm_ok.yaml", "--set", "model.arch=transformer"], "transformer"),
    (["train-ldm", "ldm_ok.yaml", "--set", "model.channel_mult=[1,2,2,2]"], "--set model.channel_mult=[1,2,2,2]"),
    (["train-ldm", "ldm_ok.yaml", "--set", "data.image_size=30"], "--set data.image_size=30"),
    (["train-ldm", "ldm_ok.yaml", "--set", "model.heads=3"], "--set model.heads=3"),
    (["train-ldm", "ldm_meta_missing.yaml"], "meta_missing/metadata.jsonl:2: file_name 'gone.png'"),
    (["train-ldm", "ldm_meta_broken.yaml"], "meta_broken/metadata.jsonl:1: not a JSON object"),
    (["train-ldm", "ldm_meta_nofile.yaml"], "meta_nofile/metadata.jsonl:1: each line needs 'file_name'"),
    (["train-ldm", "ldm_meta_missing.yaml", "--set", "data.stream=false"], "metadata.jsonl:2"),
    (["train-ldm", "ldm_ok.yaml", "--set", "data.stream=true"], "--set data.stream=true"),
    (["train-ldm", "ldm_ok.yaml", "--set", "data.workers=-1"], "--set data.workers=-1"),
]
TRAIN_CLIP = train_cases("clip") + [
    (["train-clip", "clip_ok.yaml", "--set", "model.text.heads=3"], "--set model.text.heads=3"),
    (["train-clip", "clip_ok.yaml", "--set", "model.image.patch_size=5"], "--set model.image.patch_size=5"),
    (["train-clip", "clip_ok.yaml", "--set", "model.text.max_length=1"], "--set model.text.max_length=1"),
]
ATTN_MAP = [
    (["attn-map", "nope.png", "--checkpoint", "{vit}"], "nope.png"),
    (["attn-map", "", "--checkpoint", "{vit}"], "IMAGE ''"),
    (["attn-map", "notimage.png", "--checkpoint", "{vit}"], "notimage.png"),
    (["attn-map", "synthetic:test:999", "--checkpoint", "{vit}"], "synthetic:test:999"),
    (["attn-map", "image.png", "--checkpoint", "nope.safetensors"], "nope.safetensors"),
    (["attn-map", "image.png", "--checkpoint", ""], "--checkpoint ''"),
    (["attn-map", "image.png", "--checkpoint", "folder"], "folder"),
    (["attn-map", "image.png", "--checkpoint", "model.pt"], "model.pt"),
    (["attn-map", "image.png", "--checkpoint", "truncated.safetensors"], "truncated.safetensors"),
    (["attn-map", "image.png", "--checkpoint", "plain.safetensors"], "plain.safetensors"),
    (["attn-map", "image.png", "--checkpoint", "{vae}"], "{vae} is a VAE"),
    (["attn-map", "image.png", "--checkpoint", "{vit}", "--layer", "9"], "--layer 9"),
    (["attn-map", "image.png", "--checkpoint", "{vit}", "--head", "7"], "--head 7"),
    (["attn-map", "image.png", "--checkpoint", "{vit}", "--mode", "heads"], "--mode heads"),
    (["attn-map", "image.png", "--checkpoint", "{vit}", "--fusion", "avg"], "--fusion avg"),
    (["attn-map", "image.png", "--checkpoint", "{vit}", "--discard", "1.5"], "--discard"),
    (["attn-map", "image.png", "--checkpoint", "{vit}", "--out", "taken"], "--out taken"),
    (["attn-map", "image.png", "--checkpoint", "{vit}", "--device", "gpu7"], "--device gpu7"),
]
INTERPOLATE = [
    (["interpolate", "nope.png", "image.png", "--checkpoint", "{vae}"], "nope.png"),
    (["interpolate", "image.png", "", "--checkpoint", "{vae}"], "B ''"),
    (["interpolate", "folder", "image.png", "--checkpoint", "{vae}"], "folder"),
    (["interpolate", "image.png", "synthetic:test:999", "--checkpoint", "{vae}"], "synthetic:test:999"),
    (["interpolate", "mnist:test", "image.png", "--checkpoint", "{vae}"], "mnist:test"),
    (["interpolate", "image.png", "image.png", "--checkpoint", "{vit}"], "{vit} is a ViT"),
    (["interpolate", "image.png", "image.png", "--checkpoint", "nope.safetensors"], "nope.safetensors"),
    (["interpolate", "image.png", "image.png", "--checkpoint", "model.pt"], "model.pt"),
    (["interpolate", "image.png", "image.png", "--checkpoint", ""], "--checkpoint ''"),
    (["interpolate", "image.png", "image.png", "--checkpoint", "{vae}", "--frames", "1"], "--frames"),
    (["interpolate", "image.png", "image.png", "--checkpoint", "{vae}", "--mode", "cubic"], "--mode cubic"),
    (["interpolate", "image.png", "image.png", "--checkpoint", "{vae}", "--fps", "0"], "--fps"),
    (["interpolate", "image.png", "image.png", "--checkpoint", "{ldm}", "--steps", "5000"], "--steps 5000"),
    (["interpolate", "image.png", "image.png", "--checkpoint", "{vae}", "--out", "taken"], "--out taken"),
    (["interpolate", "image.png", "image.png", "--checkpoint", "{vae}", "--out", "taken/x"], "taken"),
]
SAMPLE = [
    (["sample", "--checkpoint", "{ldm}", "--class", ""], "--class ''"),
    (["sample", "--checkpoint", "{ldm}", "--class", "3,,7"], "--class 3,,7"),
    (["sample", "--checkpoint", "{ldm}", "--class", ","], "--class ,"),
    (["sample", "--checkpoint", "{ldm}", "--class", "dsk"], "dsk"),
    (["sample", "--checkpoint", "{ldm}", "--class", "99"], "99"),
    (["sample", "--checkpoint", "nope.safetensors"], "nope.safetensors"),
    (["sample", "--checkpoint", ""], "--checkpoint ''"),
    (["sample", "--checkpoint", "{vae}"], "{vae} is a VAE"),
    (["sample", "--checkpoint", "truncated.safetensors"], "truncated.safetensors"),
    (["sample", "--checkpoint", "model.pt"], "model.pt"),
    (["sample", "--checkpoint", "{ldm}", "--sampler", "lms"], "--sampler lms"),
    (["sample", "--checkpoint", "{ldm}", "--sampler", "dpm"], "did you mean dpmpp-2m?"),
    (["sample", "--checkpoint", "{ldm}", "--steps", "5000"], "--steps 5000"),
    (["sample", "--checkpoint", "{ldm}", "--sampler", "ddpm", "--eta", "0.5"], "--eta 0.5"),
    (["sample", "--checkpoint", "{ldm}", "--n", "0"], "--n"),
    (["sample", "--checkpoint", "{ldm}", "--batch-size", "0"], "--batch-size"),
    (["sample", "--checkpoint", "{ldm}", "--seed", "-1"], "--seed"),
    (["sample", "--checkpoint", "{ldm}", "--out", "taken"], "--out taken"),
    (["sample", "--checkpoint", "{ldm}", "--out", "taken/x"], "taken"),
    (["sample", "--checkpoint", "{ldm}", "--device", "gpu7"], "--device gpu7"),
    (["sample", "--checkpoint", "{ldm}", "--strength", "0.5"], "--strength 0.5"),
    (["sample", "--checkpoint", "{ldm}", "--init", "image.png", "--strength", "1.5", "--class", "0"], "--strength 1.5"),
    (["sample", "--checkpoint", "{ldm}", "--init", "image.png", "--strength", "0.3,,0.5", "--class", "0"], "--strength 0.3,,0.5"),
    (["sample", "--checkpoint", "{ldm}", "--init", "image.png", "--strength", "half", "--class", "0"], "--strength half"),
    (["sample", "--checkpoint", "{ldm}", "--init", "nope.png", "--class", "0"], "nope.png"),
    (["sample", "--checkpoint", "{ldm}", "--init", ""], "--init ''"),
    (["sample", "--checkpoint", "{ldm}", "--init", "notimage.png", "--class", "0"], "notimage.png"),
    (["sample", "--checkpoint", "{ldm}", "--init", "image.png", "--class", "0,1"], "--class 0,1"),
    (["sample", "--checkpoint", "{ldm}", "--init", "image.png"], "--class 3"),
    (["sample", "--checkpoint", "{ldm}", "--init", "image.png", "--trajectory", "--class", "0"], "--trajectory"),
    (["sample", "--checkpoint", "{ldm}", "--control", "image.png"], "--control"),
    (["sample", "--checkpoint", "{ldm}", "--control-type", "edges"], "--control-type"),
    (["sample", "--controlnet", "{ldm}"], "--controlnet"),
    (["sample", "--controlnet", "{ldm}", "--control", "image.png"], "{ldm} is a latent diffusion model"),
    (["sample", "--controlnet", "nope", "--control", "image.png"], "nope"),
    (["sample", "--controlnet", "{ldm}", "--control", "image.png", "--control-type", "canny"], "--control-type canny"),
]
TRAIN_CONTROLNET = [
    (["train-controlnet", "nope.yaml"], "nope.yaml"),
    (["train-controlnet", "controlnet_empty.yaml"], "controlnet_empty.yaml: the recipe is empty"),
    (["train-controlnet", "controlnet_broken.yaml"], "controlnet_broken.yaml:"),
    (["train-controlnet", "controlnet_other.yaml"], "controlnet_other.yaml"),
    (["train-controlnet", "cn_nobase.yaml"], "base"),
    (["train-controlnet", "cn_missing.yaml"], "no_such_run"),
    (["train-controlnet", "cn_vae.yaml"], "is a VAE"),
    (["train-controlnet", "cn_ok.yaml", "--set", "control=canny"], "canny"),
    (["train-controlnet", "cn_ok.yaml", "--set", "train.steps=0"], "--set train.steps=0"),
    (["train-controlnet", "cn_ok.yaml", "--set", "train.control_drop_prob=2"], "control_drop_prob"),
    (["train-controlnet", "cn_ok.yaml", "--out", "taken"], "--out taken"),
    (["train-controlnet", "cn_ok.yaml", "--device", "gpu7"], "--device gpu7"),
]
CONTROL = [
    (["control", "nope.png"], "nope.png"),
    (["control", ""], "IMAGE ''"),
    (["control", "folder"], "folder"),
    (["control", "notimage.png"], "notimage.png"),
    (["control", "mnist:test"], "mnist:test"),
    (["control", "synthetic:test:999"], "synthetic:test:999"),
    (["control", "image.png", "--type", "canny"], "--type canny"),
    (["control", "image.png", "--size", "2"], "--size"),
    (["control", "image.png", "--out", "taken"], "--out taken"),
    (["control", "image.png", "--out", "taken/x"], "taken"),
]
DIFFUSE = [
    (["diffuse", "nope.png"], "nope.png"),
    (["diffuse", ""], "IMAGE ''"),
    (["diffuse", "folder"], "folder"),
    (["diffuse", "notimage.png"], "notimage.png"),
    (["diffuse", "mnist:test"], "mnist:test"),
    (["diffuse", "synthetic:test:999"], "synthetic:test:999"),
    (["diffuse", "image.png", "--schedule", "cosin"], "--schedule cosin"),
    (["diffuse", "image.png", "--timesteps", "1"], "--timesteps"),
    (["diffuse", "image.png", "--checkpoint", "{vit}"], "{vit} is a ViT"),
    (["diffuse", "image.png", "--checkpoint", "nope.safetensors"], "nope.safetensors"),
    (["diffuse", "image.png", "--checkpoint", "model.pt"], "model.pt"),
    (["diffuse", "image.png", "--out", "taken"], "--out taken"),
    (["diffuse", "image.png", "--seed", "-1"], "--seed"),
]
BOX = "box:0,8,16,16"
INPAINT = [
    (["inpaint", "image.png", "--mask", "", "--checkpoint", "{ldm}"], "--mask ''"),
    (["inpaint", "image.png", "--mask", "nope.png", "--checkpoint", "{ldm}"], "nope.png"),
    (["inpaint", "image.png", "--mask", "folder", "--checkpoint", "{ldm}"], "folder"),
    (["inpaint", "image.png", "--mask", "notimage.png", "--checkpoint", "{ldm}"], "notimage.png"),
    (["inpaint", "image.png", "--mask", "black.png", "--checkpoint", "{ldm}"], "--mask black.png"),
    (["inpaint", "image.png", "--mask", "box:0,8", "--checkpoint", "{ldm}"], "--mask box:0,8"),
    (["inpaint", "image.png", "--mask", "box:a,b,c,d", "--checkpoint", "{ldm}"], "--mask box:a,b,c,d"),
    (["inpaint", "image.png", "--mask", "box:20,20,30,30", "--checkpoint", "{ldm}"], "--mask box:20,20,30,30"),
    (["inpaint", "nope.png", "--mask", BOX, "--checkpoint", "{ldm}"], "nope.png"),
    (["inpaint", "", "--mask", BOX, "--checkpoint", "{ldm}"], "IMAGE ''"),
    (["inpaint", "image.png", "--mask", BOX, "--checkpoint", "{ldm}", "--class", ""], "--class ''"),
    (["inpaint", "image.png", "--mask", BOX, "--checkpoint", "{ldm}", "--class", "0,1"], "--class 0,1"),
    (["inpaint", "image.png", "--mask", BOX, "--checkpoint", "{ldm}", "--class", "dsk"], "dsk"),
    (["inpaint", "image.png", "--mask", BOX, "--checkpoint", "{ldm}", "--steps", "5000"], "--steps 5000"),
    (["inpaint", "image.png", "--mask", BOX, "--checkpoint", "{vit}"], "{vit} is a ViT"),
    (["inpaint", "image.png", "--mask", BOX, "--checkpoint", "{ldm}", "--n", "0"], "--n"),
    (["inpaint", "image.png", "--mask", BOX, "--checkpoint", "{ldm}", "--out", "taken"], "--out taken"),
]
CASES = {"patchify": PATCHIFY, "train-vit": TRAIN_VIT, "attn-map": ATTN_MAP, "train-vae": TRAIN_VAE,
         "interpolate": INTERPOLATE, "train-ldm": TRAIN_LDM, "sample": SAMPLE, "inpaint": INPAINT, "train-clip": TRAIN_CLIP,
         "diffuse": DIFFUSE, "train-controlnet": TRAIN_CONTROLNET, "control": CONTROL}
PARAMS = [pytest.param(args, named, id=f"{command}:{' '.join(args[1:])}")
          for command, cases in CASES.items() for args, named in cases]


def test_every_command_has_at_least_ten_bad_inputs():
    assert all(len(cases) >= 10 for cases in CASES.values()) and len(PARAMS) > 80
    assert sorted(CASES) == sorted(c.name for c in app.registered_commands)  # a new command needs its cases


@pytest.mark.parametrize("args, named", PARAMS)
def test_bad_input_exits_2_with_a_short_message_naming_it_and_writes_nothing(args, named, trained, tmp_path):
    make_inputs(tmp_path, trained)
    paths = {k: str(v) for k, v in trained.items() if k != "folder"}
    args = [a.format(**paths) for a in args]
    named = named.format(**paths)
    before = snapshot(tmp_path, trained["folder"])

    result = vd(*args)

    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}{result.exception!r}"
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    lines = message_lines(result.output)
    assert 1 <= len(lines) <= 3, result.output
    assert named in result.output, result.output
    assert snapshot(tmp_path, trained["folder"]) == before, "a refused command wrote or changed files"


# --- what the table of the issue asked for, beyond refusing ---------------------------------


def test_dit_switch_from_the_command_line_drops_the_unet_keys_with_a_note(tmp_path):
    from vdcli.recipe import load_recipe

    recipes = Path(__file__).parent.parent / "recipes"
    notes = []
    recipe = load_recipe(recipes / "mnist_latent.yaml", "ldm", ["model.arch=dit", "model.depth=2"], notes)
    assert recipe.model.arch == "dit" and recipe.model.depth == 2
    assert len(notes) == 1 and "model.channel_mult" in notes[0] and "recipes/mnist_latent_dit.yaml" in notes[0]
    assert load_recipe(recipes / "mnist_latent_dit.yaml", "ldm").model.arch == "dit"


def test_dit_switch_keeps_keys_given_with_set_so_a_wrong_one_is_still_an_error(tmp_path):
    from vdcli.errors import VdError
    from vdcli.recipe import load_recipe

    recipe = Path(__file__).parent.parent / "recipes" / "mnist_latent.yaml"
    with pytest.raises(VdError, match="--set model.channels=8: unknown key 'model.channels'"):
        load_recipe(recipe, "ldm", ["model.arch=dit", "model.channels=8"])


def test_resuming_a_run_that_never_wrote_its_recipe_says_so(tmp_path):
    Path("r.yaml").write_text("kind: vit\n")
    Path("runs/r/20260101-000000").mkdir(parents=True)  # killed before it began, by an older vd
    result = vd("train-vit", "r.yaml", "--resume")
    assert result.exit_code == 2
    assert "cannot resume runs/r/20260101-000000: it has no recipe.yaml" in " ".join(message_lines(result.output))


def test_a_refused_run_puts_the_latest_pointer_back(tmp_path, trained):
    make_inputs(tmp_path, trained)
    assert vd("train-vit", "vit_ok.yaml", "--set", "train.steps=1", "--set", "model.dim=16", "--set", "model.heads=2",
              "--quiet").exit_code == 0
    latest = os.readlink("runs/vit_ok/latest")
    (tmp_path / "vit_ok.yaml").write_text("kind: vit\ndata:\n  name: folder\n  path: no_such_images\n")
    result = vd("train-vit", "vit_ok.yaml")
    assert result.exit_code == 2 and "no_such_images" in result.output
    assert os.readlink("runs/vit_ok/latest") == latest and len(list(Path("runs/vit_ok").iterdir())) == 2


def control_model(size: int = 32):
    from types import SimpleNamespace

    return SimpleNamespace(image_size=size, control="scribble")


def test_a_control_map_far_smaller_than_the_model_is_refused(tmp_path):
    from vdcli.cli.control import load_control_maps
    from vdcli.errors import VdError

    Image.new("L", (5, 5), 255).save(tmp_path / "tiny.png")
    with pytest.raises(VdError, match=r"--control .*tiny.png is 5x5, far smaller than the model's 32x32 input; draw or resize it to 32x32"):
        load_control_maps(control_model(), [str(tmp_path / "tiny.png")], None, None)


def test_a_control_map_half_the_model_size_is_used_with_a_one_line_warning(tmp_path, capsys):
    from vdcli.cli.control import load_control_maps

    Image.new("L", (16, 16), 255).save(tmp_path / "half.png")
    (m,) = load_control_maps(control_model(), [str(tmp_path / "half.png")], None, None)
    assert m.shape == (1, 32, 32)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "half.png is 16x16, smaller than the model's 32x32: it is centred on a black 32x32" in err[0]


def test_a_control_map_at_mnist_size_for_a_32_model_is_padded_silently(tmp_path, capsys):
    from vdcli.cli.control import load_control_maps

    Image.new("L", (28, 28), 255).save(tmp_path / "digit.png")
    (m,) = load_control_maps(control_model(), [str(tmp_path / "digit.png")], None, None)
    assert m.shape == (1, 32, 32) and capsys.readouterr().err == ""
