"""The Vision Transformer: shapes, attention, rollout, config, and that it learns."""

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from vdcli.models.attention import Attention
from vdcli.models.vit import ViT, ViTConfig, attention_rollout


def tiny(**kw):
    torch.manual_seed(0)
    return ViT(ViTConfig(patch_size=4, dim=32, depth=3, heads=4, **kw), 16, 3, 5)


def images(b=2):
    return torch.randn(b, 3, 16, 16)


# --- shapes -------------------------------------------------------------------------------------


def test_logits_have_one_score_per_class():
    assert tiny()(images()).shape == (2, 5)


def test_a_16px_image_in_4px_patches_is_a_4x4_grid_of_16_patches():
    model = tiny()
    assert model.grid_size == 4 and model.num_patches == 16
    assert model.pos_embed.shape == (1, 17, 32)  # one position for the class token, then the patches


def test_return_attention_gives_one_map_per_layer_over_class_token_and_patches():
    _, attns = tiny()(images(), return_attention=True)
    assert len(attns) == 3 and all(a.shape == (2, 4, 17, 17) for a in attns)  # (B, heads, 1 + 16, 1 + 16)


def test_features_are_the_normed_class_token_the_head_classifies():
    model = tiny().eval()
    x = images()
    assert model.features(x).shape == (2, 32)
    assert torch.allclose(model.head(model.features(x)), model(x), atol=1e-6)


def test_class_token_and_position_embedding_start_small_but_not_zero():
    model = tiny()
    for p in (model.cls_token, model.pos_embed):
        assert 0.01 < p.std() < 0.03 and p.abs().max() <= 0.04  # std 0.02, cut off at two std


def test_an_image_of_the_wrong_size_is_refused():
    with pytest.raises(ValueError, match="built for 16x16 images"):
        tiny()(torch.randn(1, 3, 20, 20))


# --- attention ----------------------------------------------------------------------------------


def test_attention_rows_sum_to_one():
    _, attns = tiny()(images(), return_attention=True)
    for a in attns:
        assert (a >= 0).all() and torch.allclose(a.sum(-1), torch.ones(2, 4, 17), atol=1e-5)


def test_fused_attention_equals_explicit_probabilities():
    attn = Attention(32, 4).eval()
    x = torch.randn(2, 9, 32)
    out, _ = attn(x, need_weights=True)
    assert torch.allclose(attn(x), out, atol=1e-5)


def test_logits_do_not_depend_on_asking_for_attention():
    model = tiny().eval()
    x = images()
    assert torch.allclose(model(x), model(x, return_attention=True)[0], atol=1e-5)


def test_a_block_asked_for_the_first_token_computes_what_the_full_block_gives_it():
    block = tiny().blocks[0]  # the forward pass asks the last block for the class token's state only
    x = torch.randn(2, 17, 32)
    assert block(x, queries=1).shape == (2, 1, 32)
    assert torch.allclose(block(x, queries=1), block(x)[:, :1], atol=1e-6)


# --- rollout (Abnar & Zuidema 2020) -------------------------------------------------------------


def test_rollout_rows_sum_to_one_for_every_fusion_and_discard():
    _, attns = tiny()(images(), return_attention=True)
    for fusion in ("mean", "max", "min"):
        for discard in (0.0, 0.5, 0.9):
            r = attention_rollout(attns, fusion, discard)
            assert r.shape == (2, 17, 17) and torch.allclose(r.sum(-1), torch.ones(2, 17), atol=1e-5)


def test_rollout_of_identity_attention_is_identity():
    eye = torch.eye(5).expand(1, 2, 5, 5)
    assert torch.allclose(attention_rollout([eye, eye, eye]), torch.eye(5)[None])


def test_one_layer_rollout_is_half_attention_half_residual():
    a = torch.rand(1, 1, 4, 4).softmax(-1)
    assert torch.allclose(attention_rollout([a]), 0.5 * a[:, 0] + 0.5 * torch.eye(4))


def test_rollout_multiplies_later_layers_on_the_left():
    a1, a2 = torch.rand(2, 1, 1, 4, 4).softmax(-1)
    step = lambda a: 0.5 * a[:, 0] + 0.5 * torch.eye(4)  # noqa: E731
    assert torch.allclose(attention_rollout([a1, a2]), step(a2) @ step(a1))


def test_discarding_never_removes_attention_to_the_class_token():
    a = 0.2 + 0.01 * torch.arange(16.0).view(1, 1, 4, 4)  # distinct weights, no ties
    a[..., 0] = 0.01  # the class-token column is the weakest everywhere
    a[..., [1, 2, 3], [1, 2, 3]] = 0.9  # strong diagonal: the discarded entries are all off it
    kept = attention_rollout([a], discard_ratio=0.5)[0]
    assert (kept[:, 0] > 0).all()  # every token still draws on the class token
    assert (kept == 0).sum() == 6  # half of the 4 x 3 entries outside the class-token column


def test_unknown_head_fusion_is_refused():
    with pytest.raises(ValueError, match="mean, max, min"):
        attention_rollout([torch.eye(3).expand(1, 1, 3, 3)], head_fusion="median")


# --- config -------------------------------------------------------------------------------------


def test_dim_must_be_a_multiple_of_heads():
    with pytest.raises(ValidationError, match=r"model\.dim \(30\) must be a multiple of model\.heads \(4\)"):
        ViTConfig(dim=30, heads=4)


def test_unknown_config_key_is_refused():
    with pytest.raises(ValidationError, match="n_layers"):
        ViTConfig(n_layers=3)


# --- learning -----------------------------------------------------------------------------------


def test_a_few_steps_learn_a_separable_problem():
    torch.manual_seed(0)
    model = ViT(ViTConfig(patch_size=4, dim=32, depth=2, heads=4), 8, 3, 2)
    x = torch.randn(32, 3, 8, 8)
    y = (x[:, 0, :4].mean((1, 2)) > 0).long()  # is the top half of the red channel bright?
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = F.cross_entropy(model(x), y)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.25 * losses[0]


def test_random_shift_moves_whole_images_by_at_most_the_limit():
    from vdcli.tasks.vit import random_shift

    x = torch.full((64, 1, 8, 8), -1.0)
    x[:, :, 3, 4] = 1.0  # one white pixel
    moved = random_shift(x, 1)
    where = (moved[:, 0] == 1.0).nonzero()[:, 1:]  # (row, col) of the white pixel in each image
    assert moved.shape == x.shape and len(where) == 64
    assert ((where - torch.tensor([3, 4])).abs() <= 1).all() and len(where.unique(dim=0)) > 3
