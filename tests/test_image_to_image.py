"""Image-to-image (SDEdit) through the one sampling loop, and the forward-process pictures."""

from pathlib import Path

import pytest
import torch
from PIL import Image
from test_cli import TINY_LDM, TINY_VAE, ok, recipe

from vdcli.conditioning import ClassLabels
from vdcli.data import synthetic_shapes, to_float
from vdcli.diffusion import SAMPLERS, NoiseSchedule, sampler_timesteps, strength_start
from vdcli.models.unet import UNet, UNetConfig
from vdcli.models.vae import AutoencoderKL, LatentNorm, VAEConfig
from vdcli.recipe import SampleConfig
from vdcli.tasks.diffuse import VAECodec, forward_process, levels, schedule_picture
from vdcli.tasks.ldm import LDM, generate, image_to_image


@pytest.fixture(scope="module")
def ldm():
    """An untrained but complete class-conditional LDM: what the identities below need."""
    torch.manual_seed(0)
    vae = AutoencoderKL(VAEConfig(channels=8), 16, 1).eval()
    shape = vae.latent_shape
    denoiser = UNet(UNetConfig(channels=16, blocks_per_level=1), shape[-1], shape[0], 2).eval()
    return LDM(denoiser, vae, LatentNorm(shape), NoiseSchedule("linear", 100, "v"), ClassLabels(["disk", "square"]), shape,
               SampleConfig(steps=10))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_strength_maps_to_timesteps_monotonically_from_the_input_to_pure_noise(sampler):
    steps, T = 20, 1000
    assert strength_start(sampler, steps, T, 0.0) == -1  # nothing to do: the input
    assert strength_start(sampler, steps, T, 1.0) is None  # the whole run: plain sampling
    starts = [strength_start(sampler, steps, T, s / 100) for s in range(3, 98)]
    assert starts == sorted(starts) and len(set(starts)) > 10
    assert set(starts) <= set(sampler_timesteps(sampler, steps, T))  # it starts on the run's own grid
    with pytest.raises(ValueError):
        strength_start(sampler, steps, T, 1.2)


def test_strength_zero_returns_the_decoded_input(ldm):
    image = synthetic_shapes(1, 16, seed=3).images[0]
    out = image_to_image(ldm, image, 1, [0.0], n=3, steps=10)  # (3, 1, C, H, W)
    assert torch.equal(out[:, 0], ldm.decode(ldm.encode(to_float(image)[None])).expand(3, -1, -1, -1))


@pytest.mark.parametrize("sampler, eta", [("ddim", 0.5), ("dpmpp-2m", 0.0), ("ddpm", 0.0)])
def test_strength_one_is_plain_sampling_with_the_same_seed(ldm, sampler, eta):
    image = synthetic_shapes(1, 16, seed=3).images[0]
    out = image_to_image(ldm, image, 0, [1.0, 0.5], n=2, sampler=sampler, steps=6, eta=eta, guidance=2.0, seed=11)
    plain, _ = generate(ldm, torch.zeros(2, dtype=torch.long), sampler=sampler, steps=6, eta=eta, guidance=2.0,
                        generator=torch.Generator().manual_seed(11))
    assert torch.equal(out[:, 0], plain)
    assert not torch.equal(out[:, 1], plain)  # half the strength starts from the image


def test_low_strength_keeps_the_input_and_high_strength_keeps_little():
    """Measured on the level SDEdit starts from: ᾱ is the share of the input's variance left."""
    schedule = NoiseSchedule("linear", 1000)
    lo, hi = (strength_start("ddim", 10, 1000, s) for s in (0.2, 0.9))
    assert (lo, hi) == (100, 800)
    assert schedule.alpha_bar(lo) > 0.85 and schedule.alpha_bar(hi) < 0.01


def test_forward_process_uses_one_noise_for_every_level_and_reaches_noise():
    schedule = NoiseSchedule("linear", 1000)
    image = synthetic_shapes(1, 16, seed=1).images[0]
    rows = forward_process(image, schedule, seed=0)
    pixels = rows["pixels"]
    assert pixels.shape == (9, 1, 16, 16) and list(rows) == ["pixels"]
    assert levels(1000) == [0, 125, 250, 375, 500, 624, 749, 874, 999]
    assert (pixels[0].int() - image.int()).abs().max() <= 8  # t = 0 is the image, up to noise of std √(1 − ᾱ_0) = 0.01
    # ε is drawn once: at the last level the columns of two images differ only by √ᾱ x_0 ≈ 0
    other = forward_process(synthetic_shapes(2, 16, seed=5).images[1], schedule, seed=0)["pixels"]
    assert (pixels[-1].int() - other[-1].int()).abs().max() <= 3


def test_forward_process_in_latent_space_decodes_every_level():
    vae = AutoencoderKL(VAEConfig(channels=8), 16, 1).eval()
    rows = forward_process(synthetic_shapes(1, 16).images[0], NoiseSchedule("cosine", 50), VAECodec(vae, 1.3), ts=[0, 10, 49])
    assert list(rows) == ["pixels", "latents, decoded"] and rows["latents, decoded"].shape == (3, 1, 16, 16)


def test_schedule_picture_draws_the_plot_above_the_strip():
    picture = schedule_picture(synthetic_shapes(1, 16).images[0], 100, "cosine")
    assert picture.width > 600 and picture.height > 400


def test_vd_diffuse_without_and_with_a_checkpoint(tmp_path):
    out = ok("diffuse", "synthetic:test:0", "--out", tmp_path / "d", "--gif", "--timesteps", 200)
    assert "linear schedule, T = 200, in pixels" in out
    for name in ("forward_process.png", "schedule.png", "forward_process.gif"):
        assert (tmp_path / "d" / name).is_file(), name
    one_row = Image.open(tmp_path / "d" / "forward_process.png")
    assert one_row.width > 5 * one_row.height  # nine columns, one row

    ok("train-vae", recipe(tmp_path, "v", "vae"), *TINY_VAE, "--quiet")
    assert Image.open(Path("runs/v/latest/latent_map.png")).width > 300  # train-vae draws its latent map
    out = ok("diffuse", "synthetic:test:0", "--checkpoint", "runs/v/latest", "--schedule", "cosine", "--out", tmp_path / "dv")
    assert "in pixels and in latents" in out
    two_rows = Image.open(tmp_path / "dv" / "forward_process.png")
    assert two_rows.width > 5 * two_rows.height / 2  # nine columns, two rows


def test_train_ldm_draws_its_forward_process_then_sample_remakes_an_image(tmp_path):
    ok("train-ldm", recipe(tmp_path, "l", "ldm"), *TINY_LDM, "--quiet")
    run = Path("runs/l/latest")
    assert (run / "forward_process.png").is_file() and (run / "schedule.png").is_file()
    out = ok("diffuse", "synthetic:test:0", "--checkpoint", run, "--out", tmp_path / "d")
    assert "in pixels and in latents" in out
    out = ok("interpolate", "synthetic:test:0", "synthetic:test:1", "--frames", 3, "--steps", 3, "--out", tmp_path / "w")
    assert "latest ldm run" in out and "inversions" in out  # with an LDM run, its path is the default

    out = ok("sample", "--init", "synthetic:test:0", "--class", "disk", "--strength", "0,0.5,1", "--n", 2,
             "--steps", 4, "--out", tmp_path / "s")
    assert "made anew 2 ways at strength 0, 0.5, 1" in out
    grid = Image.open(tmp_path / "s" / "grid.png")
    assert grid.width > grid.height  # two rows: the input, then three strengths
    names = sorted(p.name for p in (tmp_path / "s" / "images").iterdir())
    assert names == ["strength0.5_0.png", "strength0.5_1.png", "strength0_0.png", "strength0_1.png",
                     "strength1_0.png", "strength1_1.png"]
    ok("sample", "--class", "disk", "--n", 2, "--steps", 4, "--out", tmp_path / "plain")
    same = [Image.open(tmp_path / "s" / "images" / f"strength1_{i}.png").tobytes() for i in range(2)]
    assert same == [Image.open(tmp_path / "plain" / "images" / f"disk_{i}.png").tobytes() for i in range(2)]


def test_a_grid_wraps_at_sixteen_images_a_row_and_long_names_make_short_safe_files(tmp_path):
    from PIL import Image

    from vdcli.tasks.ldm import file_stem, save_samples

    samples = torch.zeros(100, 1, 8, 8, dtype=torch.uint8)
    long = "a thin seven / leaning right " * 40
    written = save_samples(samples, [long, "none"], 50, tmp_path)
    grid = Image.open(written[0])
    assert grid.width < 17 * 10 * 12 + 500  # 16 columns of 12x-enlarged images and their pads, plus a cut label (50 would be 6000)
    assert grid.height > 4 * 8 * 12  # 50 images a name: 4 rows of 16 each
    names = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert len(names) == 100 and max(map(len, names)) < 50 and all("/" not in n for n in names)
    assert file_stem("seven") == "seven" and file_stem("a/b c") == "a_b_c" and file_stem("...") == "image"
