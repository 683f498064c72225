"""The DiT denoiser: shape-preserving, adaLN-Zero at initialisation, conditioned on t and y."""

import pytest
import torch
from pydantic import ValidationError

from vdcli.conditioning import Cond
from vdcli.models import attention, vit
from vdcli.models.dit import DiT, DiTConfig

NUM_CLASSES = 10  # so y = 10 is the null class


def tiny(size=8, channels=4):
    torch.manual_seed(0)
    return DiT(DiTConfig(patch_size=2, dim=32, depth=2, heads=2), size, channels, NUM_CLASSES)


def batch(b=3, size=8, channels=4):
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, channels, size, size, generator=g), torch.tensor([0, 500, 999])[:b], torch.tensor([0, 9, 10])[:b]


def randomise_zero_layers(model):
    """What training does to adaLN-Zero's zero layers, without the training."""
    for block in model.blocks:
        torch.nn.init.normal_(block.ada[1].weight, std=0.1)
    torch.nn.init.normal_(model.ada[1].weight, std=0.1)
    torch.nn.init.normal_(model.out.weight, std=0.1)
    return model


@pytest.mark.parametrize("size,channels", [(8, 4), (4, 1), (16, 3)])
def test_output_has_the_input_shape(size, channels):
    x, t, y = batch(size=size, channels=channels)
    assert tiny(size, channels)(x, t, Cond(labels=y)).shape == x.shape


def test_untrained_dit_predicts_exactly_zero():
    # the final linear starts at zero: the untrained ε-predictor says "no noise" for any input
    x, t, y = batch()
    assert torch.count_nonzero(tiny()(x, t, Cond(labels=y))) == 0


def test_every_block_starts_as_the_identity():
    model = tiny()
    h, c = torch.randn(3, 16, 32), torch.randn(3, 32)  # (B, N, dim) tokens, (B, dim) condition
    assert all(torch.equal(block(h, c), h) for block in model.blocks)  # the gates start at zero


def test_the_first_step_can_only_move_the_output_layer():
    model = tiny()
    x, t, y = batch()
    (model(x, t, Cond(labels=y)) - torch.randn_like(x)).pow(2).mean().backward()
    moved = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert moved == {"out.weight", "out.bias"}  # everything upstream is multiplied by out's zero weights


def test_class_and_time_change_the_output_once_the_zero_layers_are_non_zero():
    model = randomise_zero_layers(tiny()).eval()
    x, t, y = batch(b=1)
    with torch.no_grad():
        base = model(x, t, Cond(labels=y))
        assert not torch.allclose(base, model(x, t, Cond(labels=(y + 1) % (NUM_CLASSES + 1))))
        assert not torch.allclose(base, model(x, t + 100, Cond(labels=y)))


def test_a_few_training_steps_make_the_output_depend_on_the_class():
    model = tiny()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, t, y = batch()
    target = torch.randn_like(x)
    for _ in range(3):  # two are the minimum: the first reaches only the output layer
        loss = (model(x, t, Cond(labels=y)) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert not torch.allclose(model(x[:1], t[:1], Cond(labels=y[:1])), model(x[:1], t[:1], Cond(labels=y[:1] + 1)))


def test_integer_and_float_timesteps_mean_the_same():
    model = randomise_zero_layers(tiny())
    x, t, y = batch()
    assert torch.allclose(model(x, t, Cond(labels=y)), model(x, t.float(), Cond(labels=y)))


def test_dit_is_built_from_the_one_attention_and_the_vit_mlp():
    block = tiny().blocks[0]
    assert type(block.attn) is attention.Attention and type(block.mlp) is vit.MLP


def test_latent_size_must_be_a_multiple_of_the_patch_size():
    with pytest.raises(ValueError, match="latent size 7 is not a multiple of model.patch_size 2"):
        DiT(DiTConfig(dim=32, heads=2), 7, 4, NUM_CLASSES)


def test_dim_must_be_a_multiple_of_heads():
    with pytest.raises(ValidationError, match=r"model\.dim \(30\) must be a multiple of model\.heads \(4\)"):
        DiTConfig(dim=30, heads=4)
