"""Images that remember how they were made: every PNG vd writes from a model carries its parameters
in PNG text chunks, and ``vd sample --from IMAGE`` re-creates the image bit for bit (on the CPU,
with the same torch and threads)."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from test_cli import TINY_LDM, ok, recipe, vd
from test_text_ldm import TINY_TEXT
from vdcli import __version__, images


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny class model and a tiny text model, trained once for this file."""
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("VD_DATA_ROOT", str(root / "data"))
        torch.manual_seed(0)
        ok("train-ldm", recipe(root, "c", "ldm"), *TINY_LDM, "--quiet")
        ok("train-ldm", recipe(root, "t", "ldm"), *TINY_LDM, *TINY_TEXT, "--quiet")
    return {"class": root / "runs" / "c" / "latest", "text": root / "runs" / "t" / "latest", "data": root / "data"}


@pytest.fixture
def data(runs, monkeypatch):
    monkeypatch.setenv("VD_DATA_ROOT", str(runs["data"]))


def pixels(path) -> bytes:
    with Image.open(path) as image:
        return image.tobytes()


def test_metadata_round_trips_through_the_png_and_leaves_the_pixels_alone(tmp_path):
    picture = images.grid(torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8), nrow=2)
    meta = {"made_by": "sample", "seed": 7, "guidance": 2.5, "prompt": ["a bold seven", "ünïcode ✓"], "eta": None,
            "n": 3, "control": None, "strength": "0.3,0.5"}
    images.save(picture, tmp_path / "a.png", meta)
    images.save(picture, tmp_path / "plain.png")
    back = images.read_meta(tmp_path / "a.png")
    assert {k: back[k] for k in meta} == meta
    assert back["vd_version"] == __version__ and back["command"].startswith("vd")
    assert images.read_meta(tmp_path / "plain.png") == {}  # no meta asked for, none written
    assert pixels(tmp_path / "a.png") == pixels(tmp_path / "plain.png")


def test_every_file_of_a_sample_carries_checkpoint_hash_and_options(runs, data, tmp_path):
    ok("sample", "--checkpoint", runs["class"], "--class", "disk,0", "--n", 2, "--steps", 3, "--seed", 5,
       "--guidance", 2, "--out", tmp_path / "s")
    for file in ["grid.png", "images/disk_1.png"]:
        meta = images.read_meta(tmp_path / "s" / file)
        assert meta["file"] == file and meta["made_by"] == "sample"
        assert meta["checkpoint"].endswith("checkpoint.safetensors") and len(meta["checkpoint_sha256"]) == 12
        assert meta["checkpoint_sha256"] == images.file_hash(Path(meta["checkpoint"]))
        assert (meta["class"], meta["seed"], meta["steps"], meta["guidance"], meta["n"]) == ("disk,0", 5, 3, 2.0, 2)
        assert meta["sampler"] == "ddim" and "eta" in meta and "spacing" in meta and meta["vd_version"] == __version__
    assert images.read_meta(tmp_path / "s" / "images" / "disk_1.png")["image"] == "disk"
    assert images.read_meta(runs["class"] / "samples_000010.png")["made_by"] == "train-ldm"  # the training grids too


@pytest.mark.parametrize("model", ["class", "text"])
def test_from_re_creates_a_sample_bit_for_bit(runs, data, tmp_path, model):
    asked = ["--class", "disk,square"] if model == "class" else ["--prompt", "a disk", "--prompt", "a square"]
    ok("sample", "--checkpoint", runs[model], *asked, "--n", 3, "--steps", 3, "--seed", 11, "--guidance", 3,
       "--sampler", "ddpm", "--out", tmp_path / "a")  # ddpm: its per-step noise must be re-drawn the same too
    original = tmp_path / "a" / "images" / ("square_2.png" if model == "class" else "a_square_2.png")
    out = ok("sample", "--from", original, "--out", tmp_path / "b")
    assert "re-created" in out
    again = tmp_path / "b" / images.read_meta(original)["file"]
    assert pixels(again) == pixels(original)
    assert pixels(tmp_path / "b" / "grid.png") == pixels(tmp_path / "a" / "grid.png")
    # an option given with --from overrides the stored one
    ok("sample", "--from", original, "--seed", 12, "--out", tmp_path / "c")
    assert pixels(tmp_path / "c" / images.read_meta(original)["file"]) != pixels(original)


def test_from_re_creates_an_image_to_image_output(runs, data, tmp_path):
    ok("sample", "--checkpoint", runs["class"], "--init", "synthetic:test:0", "--class", "disk", "--strength", "0.5,0.8",
       "--n", 2, "--steps", 4, "--seed", 3, "--out", tmp_path / "a")
    original = tmp_path / "a" / "images" / "strength0.5_1.png"
    meta = images.read_meta(original)
    assert (meta["init"], meta["strength"], meta["image_strength"]) == ("synthetic:test:0", "0.5,0.8", 0.5)
    ok("sample", "--from", original, "--out", tmp_path / "b")
    assert pixels(tmp_path / "b" / "images" / "strength0.5_1.png") == pixels(original)


def test_inpaint_and_interpolate_write_their_parameters_and_from_refuses_them_in_one_line(runs, data, tmp_path):
    ok("inpaint", "synthetic:test:0", "--mask", "box:0,8,16,16", "--checkpoint", runs["class"], "--class", "disk",
       "--n", 2, "--steps", 3, "--out", tmp_path / "i")
    meta = images.read_meta(tmp_path / "i" / "inpaint_1.png")
    assert (meta["made_by"], meta["class"], meta["steps"]) == ("inpaint", "disk", 3) and "checkpoint_sha256" in meta
    ok("interpolate", "synthetic:test:0", "synthetic:test:1", "--checkpoint", runs["class"], "--frames", 3, "--steps", 3,
       "--out", tmp_path / "w")
    assert images.read_meta(tmp_path / "w" / "interpolation.png")["made_by"] == "interpolate"
    result = vd("sample", "--from", tmp_path / "i" / "inpaint_1.png")
    assert result.exit_code == 2 and "made by vd inpaint" in result.output and len(result.output.strip().splitlines()) == 1


def test_from_a_png_without_vd_parameters_is_one_line_exit_2(tmp_path):
    Image.new("L", (8, 8)).save(tmp_path / "foreign.png")
    result = vd("sample", "--from", tmp_path / "foreign.png")
    assert result.exit_code == 2 and "carries no vd parameters" in result.output
    assert len(result.output.strip().splitlines()) == 1
