"""The KL autoencoder: latent shapes, the KL term, learning."""

import pytest
import torch
from pydantic import ValidationError

from vdcli.data import synthetic_shapes, to_float
from vdcli.models.vae import AutoencoderKL, VAEConfig, kl_divergence, vae_loss


@pytest.mark.parametrize("downsample", [1, 2, 4, 8])
@pytest.mark.parametrize("latent_channels", [1, 4])
def test_latent_grid_is_downsample_times_smaller(downsample, latent_channels):
    vae = AutoencoderKL(VAEConfig(downsample=downsample, latent_channels=latent_channels, channels=8), 32, 3)
    x = torch.randn(2, 3, 32, 32)
    mean, logvar = vae.encode(x)
    assert mean.shape == logvar.shape == (2, latent_channels, 32 // downsample, 32 // downsample)
    assert vae.latent_shape == mean.shape[1:]
    assert vae.decode(mean).shape == x.shape
    recon, *_ = vae(x)
    assert recon.shape == x.shape


def test_kl_of_an_exact_standard_normal_is_zero():
    assert kl_divergence(torch.zeros(3, 4, 8, 8), torch.zeros(3, 4, 8, 8)).item() == 0.0


def test_kl_matches_the_closed_form():
    # KL(N(1, e^1) || N(0, 1)) = 0.5 (1 + e - 1 - 1) per element; 4 elements per sample.
    mean, logvar = torch.ones(2, 4), torch.ones(2, 4)
    expected = 4 * 0.5 * (1 + torch.e - 1 - 1)
    assert kl_divergence(mean, logvar).item() == pytest.approx(expected, rel=1e-6)


def test_reconstruction_improves_within_a_few_steps():
    torch.manual_seed(0)
    x = to_float(synthetic_shapes(32, 16).images)
    vae = AutoencoderKL(VAEConfig(downsample=2, latent_channels=4, channels=16), 16, 1)
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        recon, mean, logvar = vae(x)
        loss, parts = vae_loss(recon, x, mean, logvar, kl_weight=1e-4)
        losses.append(parts["recon"].item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.3 * losses[0]


def test_image_size_must_divide_by_the_downsample_factor():
    with pytest.raises(ValueError, match="multiple of model.downsample"):
        AutoencoderKL(VAEConfig(downsample=8), 28, 1)


def test_downsample_must_be_a_power_of_two():
    with pytest.raises(ValidationError, match="power of 2"):
        VAEConfig(downsample=3)
