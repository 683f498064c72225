"""Every command end to end through the CLI, on generated data, checking the files it writes."""

import json
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from vdcli.cli import app
from vdcli.data import to_float
from vdcli.models.patches import patchify

runner = CliRunner()

TINY_VIT = [
    "--set", "data.name=synthetic", "--set", "data.limit=256",
    "--set", "model.dim=32", "--set", "model.depth=2", "--set", "model.heads=2", "--set", "model.patch_size=7",
    "--set", "train.steps=30", "--set", "train.batch_size=32", "--set", "train.eval_every=30",
    "--set", "train.warmup_steps=5", "--set", "train.log_every=10",
]
TINY_VAE = [
    "--set", "data.name=synthetic", "--set", "data.limit=256", "--set", "data.image_size=16",
    "--set", "model.channels=8", "--set", "train.steps=20", "--set", "train.batch_size=32",
    "--set", "train.warmup_steps=5", "--set", "train.log_every=10", "--set", "train.eval_every=20",
]

TINY_CLIP = [
    "--set", "data.name=synthetic", "--set", "data.limit=256", "--set", "data.image_size=16",
    "--set", "model.embed_dim=16", "--set", "model.image.patch_size=4", "--set", "model.image.dim=32",
    "--set", "model.image.depth=1", "--set", "model.image.heads=2", "--set", "model.text.dim=32",
    "--set", "model.text.depth=1", "--set", "model.text.heads=2", "--set", "train.steps=20",
    "--set", "train.batch_size=32", "--set", "train.eval_every=20", "--set", "train.warmup_steps=2",
    "--set", "train.eval_images=64",
]


def vd(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def ok(*args):
    result = vd(*args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def recipe(tmp_path, name="tiny", kind="vit"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"kind: {kind}\n")
    return path


def test_version_and_help_explain_themselves():
    assert "vd " in ok("--version")
    out = ok("--help")
    for command in ("patchify", "train-vit", "attn-map", "train-vae", "interpolate"):
        assert command in out
    assert "Example" in ok("train-vit", "--help")


def test_patchify_writes_grid_sequence_and_the_vit_patch_tensor(tmp_path):
    image = torch.randint(0, 256, (3, 32, 48), dtype=torch.uint8)
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / "x.png")
    out = ok("patchify", tmp_path / "x.png", "--patch", 16, "--out", tmp_path / "p")
    assert "2x3 = 6 patches" in out
    patches = load_file(tmp_path / "p" / "patches.safetensors")["patches"]
    assert patches.shape == (6, 3 * 16 * 16)
    assert torch.equal(patches, patchify(to_float(image)[None], 16)[0])
    assert torch.equal(patches[4].view(3, 16, 16), to_float(image)[:, 16:32, 16:32])  # k=4: row 1, column 1
    for name in ("grid.png", "sequence.png"):
        assert Image.open(tmp_path / "p" / name).size[0] > 48


def test_patchify_takes_a_dataset_reference(tmp_path):
    assert "16 patches of 7x7" in ok("patchify", "synthetic:test:0", "--patch", 7, "--out", tmp_path / "p")


def test_patchify_with_an_indivisible_patch_is_a_one_line_error(tmp_path):
    Image.new("L", (30, 30)).save(tmp_path / "x.png")
    result = vd("patchify", tmp_path / "x.png", "--patch", 16)
    assert result.exit_code == 2 and "--size" in result.output and "Traceback" not in result.output


def test_missing_image_is_a_one_line_error():
    result = vd("patchify", "nope.png")
    assert result.exit_code == 2 and "nope.png not found" in result.output


def test_recipe_typo_exits_2_naming_key_file_and_suggestion(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("kind: vit\ntrain:\n  stpes: 3\n")
    result = vd("train-vit", path)
    assert result.exit_code == 2
    assert f"{path}:3" in result.output and "train.stpes" in result.output and "train.steps" in result.output


def test_train_vit_then_attn_map(tmp_path):
    steps = ["--set", "train.steps=60", "--set", "train.eval_every=60"]  # TINY_VIT's 30 steps still guess one class
    out = ok("train-vit", recipe(tmp_path), *TINY_VIT, *steps, "--device", "cpu", "--seed", 1)
    assert "test accuracy" in out
    run = Path("runs/tiny/latest")
    for name in ("checkpoint.safetensors", "checkpoint.state.safetensors", "recipe.yaml", "metrics.jsonl",
                 "loss.png", "confusion.png"):
        assert (run / name).is_file(), name
    assert "seed: 1" in (run / "recipe.yaml").read_text()
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "eval" in line]
    # six shapes: chance is 1/6, and 0.25 is five standard errors above it on the 500 test images
    assert evals[-1]["step"] == 60 and evals[-1]["eval"]["test_accuracy"] > 0.25

    out = ok("attn-map", "synthetic:test:5", "--out", tmp_path / "a")
    assert "latest vit run" in out and "predicted" in out
    written = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert written == ["attention.png", "layer1_head0.png", "layer1_head1.png", "rollout.png"]
    assert Image.open(tmp_path / "a" / "rollout.png").size == (224, 224)

    result = vd("attn-map", "synthetic:test:5", "--layer", 7)
    assert result.exit_code == 2 and "2 layers" in result.output


def test_train_vit_resume_finishes_the_run(tmp_path):
    ok("train-vit", recipe(tmp_path), *TINY_VIT, "--set", "train.steps=10", "--quiet")
    out = ok("train-vit", recipe(tmp_path), "--resume", "--set", "train.steps=20", "--quiet")
    assert "after 20 steps" in out
    assert len(list(Path("runs/tiny").glob("2*"))) == 1


def test_attn_map_refuses_a_vae_checkpoint(tmp_path):
    ok("train-vae", recipe(tmp_path, "v", "vae"), *TINY_VAE, "--quiet")
    result = vd("attn-map", "synthetic:test:0", "--checkpoint", "runs/v/latest")
    assert result.exit_code == 2 and "is a VAE" in result.output and "needs a ViT" in result.output


def test_attn_map_without_any_run_says_to_train_first():
    result = vd("attn-map", "synthetic:test:0")
    assert result.exit_code == 2 and "train one first" in result.output


def test_train_vae_then_interpolate(tmp_path):
    out = ok("train-vae", recipe(tmp_path, "v", "vae"), *TINY_VAE)
    assert "PSNR" in out and "scale factor" in out
    run = Path("runs/v/latest")
    for name in ("checkpoint.safetensors", "reconstructions.png", "samples.png", "loss.png"):
        assert (run / name).is_file(), name
    from vdcli.checkpoint import load_checkpoint

    assert load_checkpoint(run / "checkpoint.safetensors").meta["scale_factor"] > 0

    ok("interpolate", "synthetic:test:0", "synthetic:test:1", "--frames", 5, "--out", tmp_path / "i")
    gif = Image.open(tmp_path / "i" / "interpolation.gif")
    assert gif.n_frames == 5
    png = Image.open(tmp_path / "i" / "interpolation.png")
    assert png.width > png.height


TINY_LDM = [
    "--set", "data.name=synthetic", "--set", "data.limit=128", "--set", "data.image_size=16",
    "--set", "vae.model.channels=8", "--set", "vae.train.steps=10", "--set", "vae.train.batch_size=32",
    "--set", "vae.train.warmup_steps=2", "--set", "vae.train.log_every=5",
    "--set", "model.channels=16", "--set", "model.blocks_per_level=1",
    "--set", "train.steps=10", "--set", "train.batch_size=32", "--set", "train.warmup_steps=2",
    "--set", "train.log_every=5", "--set", "train.eval_every=10", "--set", "sample.steps=4",
]


def test_train_ldm_from_nothing_then_sample_from_the_checkpoint_alone(tmp_path):
    out = ok("train-ldm", recipe(tmp_path, "l", "ldm"), *TINY_LDM)
    assert "training the VAE first" in out and "denoiser trained" in out
    run = Path("runs/l/latest")
    for name in ("checkpoint.safetensors", "latents.safetensors", "samples_000010.png", "vae/checkpoint.safetensors"):
        assert (run / name).is_file(), name

    # The checkpoint alone: moved away from its run, with the VAE run deleted.
    alone = tmp_path / "alone.safetensors"
    (run / "checkpoint.safetensors").rename(alone)
    import shutil

    shutil.rmtree(run.resolve())
    out = ok("sample", "--checkpoint", alone, "--steps", 3, "--class", "disk,0", "--n", 3, "--trajectory",
             "--out", tmp_path / "s", "--seed", 7)
    assert "6 images" in out
    grid = Image.open(tmp_path / "s" / "grid.png")
    assert grid.height < grid.width  # two rows of three
    assert sorted(p.name for p in (tmp_path / "s" / "images").iterdir())[:2] == ["disk_0.png", "disk_1.png"]
    gif = Image.open(tmp_path / "s" / "trajectory.gif")
    assert 1 < gif.n_frames <= 3  # one frame per step (Pillow merges identical neighbours)
    from vdcli.checkpoint import load_checkpoint
    from vdcli.tasks.ldm import generate, load_ldm

    _, frames = generate(load_ldm(load_checkpoint(alone), torch.device("cpu")), torch.tensor([0, 1]), steps=3, trajectory=True)
    assert len(frames) == 3 and frames[0].shape == (2, 1, 16, 16)

    again = tmp_path / "again"
    ok("sample", "--checkpoint", alone, "--steps", 3, "--class", "disk,0", "--n", 3, "--out", again, "--seed", 7)
    assert Image.open(again / "grid.png").tobytes() == Image.open(tmp_path / "s" / "grid.png").tobytes()  # same seed, same images (the files differ in their --out)

    out = ok("sample", "--checkpoint", alone, "--sampler", "ddpm", "--steps", 5, "--class", "none", "--n", 2, "--out", tmp_path / "u")
    assert "unconditional" in out and "DDPM 5 steps" in out

    out = ok("inpaint", "synthetic:test:2", "--mask", "box:0,8,16,16", "--checkpoint", alone, "--class", "disk",
             "--n", 2, "--steps", 4, "--out", tmp_path / "f")
    assert "filled 128 of 256 pixels 2 ways" in out
    from vdcli.data import load_input, read_image

    original, _ = load_input("synthetic:test:2", 16, 1)
    filled = read_image(tmp_path / "f" / "inpaint_0.png")
    assert torch.equal(filled[:, :8], original[:, :8])  # the kept top half is untouched
    assert Image.open(tmp_path / "f" / "inpaint.png").width > 4 * 16
    result = vd("inpaint", "synthetic:test:2", "--mask", "box:0,8", "--checkpoint", alone)
    assert result.exit_code == 2 and "box:X0,Y0,X1,Y1" in result.output
    result = vd("inpaint", "synthetic:test:2", "--mask", "box:0,8,16,16", "--checkpoint", alone, "--class", "0,1")
    assert result.exit_code == 2 and "one class" in result.output

    out = ok("interpolate", "synthetic:test:0", "synthetic:test:1", "--checkpoint", alone, "--steps", 4, "--frames", 4,
             "--out", tmp_path / "i")
    assert "DDIM-4 inversions" in out and Image.open(tmp_path / "i" / "interpolation.gif").n_frames >= 2


def test_sample_compile_draws_what_eager_sampling_draws_to_float_tolerance(tmp_path):
    ok("train-ldm", recipe(tmp_path, "l", "ldm"), *TINY_LDM, "--quiet")
    ok("sample", "--class", "disk", "--n", 2, "--steps", 3, "--out", tmp_path / "eager")
    out = ok("sample", "--class", "disk", "--n", 2, "--steps", 3, "--out", tmp_path / "compiled", "--compile")
    assert "compiled" in out
    from vdcli.data import read_image

    for name in ("disk_0.png", "disk_1.png"):
        eager, compiled = (read_image(tmp_path / d / "images" / name).int() for d in ("eager", "compiled"))
        assert (eager - compiled).abs().max() <= 2  # of 255: the same images, rounded differently


def test_sample_with_an_unknown_class_names_the_nearest(tmp_path):
    ok("train-ldm", recipe(tmp_path, "l", "ldm"), *TINY_LDM, "--quiet")
    result = vd("sample", "--class", "dsk", "--steps", 2)
    assert result.exit_code == 2 and "did you mean 'disk'" in result.output


def test_sample_refuses_a_vit_checkpoint(tmp_path):
    ok("train-vit", recipe(tmp_path), *TINY_VIT, "--quiet")
    result = vd("sample", "--checkpoint", "runs/tiny/latest")
    assert result.exit_code == 2 and "is a ViT classifier" in result.output and "needs a latent diffusion model" in result.output


def test_train_clip_reports_zero_shot_accuracy_and_writes_its_pictures(tmp_path):
    steps = ["--set", "train.steps=40", "--set", "train.eval_every=40"]  # TINY_CLIP's 20 steps are still at chance
    out = ok("train-clip", recipe(tmp_path, "c", "clip"), *TINY_CLIP, *steps, "--out", tmp_path / "runs", "--device", "cpu")
    assert "zero-shot test accuracy" in out and "recall@5" in out
    run = tmp_path / "runs" / "c" / "latest"
    for name in ("checkpoint.safetensors", "retrieval.png", "clip_map.png", "loss.png"):
        assert (run / name).is_file(), name
    from vdcli.checkpoint import load_checkpoint

    meta = load_checkpoint(run / "checkpoint.safetensors", "clip").meta
    assert meta["metrics"]["zero_shot_acc"] > 0.25  # six shapes: chance is 1/6 (see test_train_vit_then_attn_map)


# --- the ViT part of the lecture: position embeddings, the CNN baseline, attention between words ---

TINY_CLASSIFIER_DATA = [
    "--set", "data.name=synthetic", "--set", "data.limit=256", "--set", "train.steps=20", "--set", "train.batch_size=32",
    "--set", "train.eval_every=20", "--set", "train.warmup_steps=2", "--set", "train.log_every=10",
]


def test_train_vit_writes_the_position_similarity_and_attn_map_positions_draws_it(tmp_path):
    ok("train-vit", recipe(tmp_path), *TINY_VIT, "--quiet")
    assert Image.open("runs/tiny/latest/position_similarity.png").size[0] > 200
    out = ok("attn-map", "--positions", "--out", tmp_path / "p")
    assert "latest vit run" in out and "16 patches" in out  # synthetic 28x28 in 7x7 patches: 4x4
    assert (tmp_path / "p" / "position_similarity.png").is_file()
    result = vd("attn-map", "synthetic:test:0", "--positions")
    assert result.exit_code == 2 and "leave IMAGE" in result.output


def test_a_clip_checkpoint_shows_its_position_embeddings_and_its_words_attending_to_words(tmp_path):
    ok("train-clip", recipe(tmp_path, "c", "clip"), *TINY_CLIP, "--quiet")
    out = ok("attn-map", "--positions", "--checkpoint", "runs/c/latest", "--out", tmp_path / "p")
    assert "image tower" in out and (tmp_path / "p" / "position_similarity.png").is_file()
    out = ok("attn-map", "--text", "a large disk", "--checkpoint", "runs/c/latest", "--out", tmp_path / "t")
    assert "4 tokens (a large disk <end>)" in out and "1 layer(s), heads averaged" in out
    assert Image.open(tmp_path / "t" / "text_attention.png").size[0] > 300
    assert "head 1" in ok("attn-map", "--text", "disk", "--head", 1, "--out", tmp_path / "h")  # the newest CLIP run
    result = vd("attn-map", "--text", "disk", "--head", 2)
    assert result.exit_code == 2 and "2 heads (0..1)" in result.output


def test_attn_map_positions_and_text_refuse_a_vae_in_one_line(tmp_path):
    ok("train-vae", recipe(tmp_path, "v", "vae"), *TINY_VAE, "--quiet")
    result = vd("attn-map", "--positions", "--checkpoint", "runs/v/latest")
    assert result.exit_code == 2 and "is a VAE" in result.output and "needs a ViT" in result.output
    result = vd("attn-map", "--text", "a bold seven", "--checkpoint", "runs/v/latest")
    assert result.exit_code == 2 and "no text tower" in result.output and "needs a CLIP" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_train_vit_trains_the_cnn_option_and_attn_map_refuses_it_in_one_line(tmp_path):
    path = tmp_path / "cnn.yaml"
    path.write_text("kind: vit\nmodel:\n  arch: cnn\n  channels: [8, 16]\n  convs: 1\n")
    out = ok("train-vit", path, *TINY_CLASSIFIER_DATA, "--device", "cpu")
    assert "test accuracy" in out
    run = Path("runs/cnn/latest")
    for name in ("checkpoint.safetensors", "metrics.jsonl", "loss.png", "confusion.png"):
        assert (run / name).is_file(), name
    assert not (run / "position_similarity.png").exists()  # a CNN has no position embeddings
    for args in (("synthetic:test:0",), ("--positions",)):
        result = vd("attn-map", *args, "--checkpoint", run)
        assert result.exit_code == 2 and "convolutional" in result.output and "needs a ViT" in result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    result = vd("attn-map", "--text", "a bold seven", "--checkpoint", run)  # an image classifier has no words
    assert result.exit_code == 2 and "no text tower" in result.output
