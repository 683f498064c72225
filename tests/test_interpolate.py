"""Interpolation starts at A and ends at B, in both rows."""

import torch

from vdcli.data import synthetic_shapes, to_float, to_uint8
from vdcli.models.vae import AutoencoderKL, VAEConfig
from vdcli.tasks.vae import interpolate


def test_first_and_last_frames_are_the_inputs_and_their_decodings():
    torch.manual_seed(0)
    vae = AutoencoderKL(VAEConfig(downsample=2, channels=8), 16, 1).eval()
    a, b = synthetic_shapes(2, 16).images
    result = interpolate(vae, a, b, frames=6, mode="slerp")
    assert result.pixels.shape == result.latents.shape == (6, 1, 16, 16)
    assert torch.equal(result.pixels[0], a) and torch.equal(result.pixels[-1], b)
    with torch.no_grad():
        decoded = [to_uint8(vae.decode(vae.encode(to_float(x)[None])[0]))[0] for x in (a, b)]
    assert (result.latents[0].int() - decoded[0].int()).abs().max() <= 1  # equal up to float rounding
    assert (result.latents[-1].int() - decoded[1].int()).abs().max() <= 1


def test_pixel_row_is_the_straight_blend():
    vae = AutoencoderKL(VAEConfig(downsample=2, channels=8), 16, 1).eval()
    a = torch.zeros(1, 16, 16, dtype=torch.uint8)
    b = torch.full((1, 16, 16), 255, dtype=torch.uint8)
    result = interpolate(vae, a, b, frames=3, mode="lerp")
    assert result.pixels[1].unique().tolist() == [128]  # halfway between black and white
