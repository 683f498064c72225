"""Patches and the Vision Transformer: order, shapes, attention, rollout."""

import pytest
import torch
from pydantic import ValidationError

from vdcli.models.patches import patchify, unpatchify
from vdcli.models.vit import Attention, ViT, ViTConfig, attention_rollout


@pytest.mark.parametrize("c,h,w,p", [(1, 28, 28, 7), (3, 32, 48, 16), (3, 8, 12, 4)])
def test_patch_k_is_the_kth_row_major_block(c, h, w, p):
    img = torch.randn(c, h, w)
    seq = patchify(img[None], p)[0]
    cols = w // p
    assert seq.shape == ((h // p) * cols, c * p * p)
    for k in range(len(seq)):
        r, col = divmod(k, cols)
        assert torch.equal(seq[k], img[:, r * p : (r + 1) * p, col * p : (col + 1) * p].reshape(-1))


def test_unpatchify_inverts_patchify():
    x = torch.randn(2, 3, 16, 24)
    assert torch.equal(unpatchify(patchify(x, 4), 4, 3, 16, 24), x)


def test_indivisible_image_is_refused():
    with pytest.raises(ValueError, match="multiples of 5"):
        patchify(torch.zeros(1, 1, 28, 28), 5)


def tiny(**kw):
    torch.manual_seed(0)
    return ViT(ViTConfig(patch_size=4, dim=32, depth=3, heads=4, **kw), 16, 3, 5)


def test_vit_shapes_and_attention_maps():
    model = tiny()
    logits, attns = model(torch.randn(2, 3, 16, 16), return_attention=True)
    assert logits.shape == (2, 5) and model.num_patches == 16 and model.grid_size == 4
    assert len(attns) == 3 and all(a.shape == (2, 4, 17, 17) for a in attns)  # 1 class token + 16 patches
    assert model.features(torch.randn(2, 3, 16, 16)).shape == (2, 32)


def test_attention_rows_sum_to_one():
    _, attns = tiny()(torch.randn(2, 3, 16, 16), return_attention=True)
    for a in attns:
        assert torch.allclose(a.sum(-1), torch.ones(2, 4, 17), atol=1e-5)


def test_fused_attention_equals_explicit_probabilities():
    attn = Attention(32, 4).eval()
    x = torch.randn(2, 9, 32)
    out, _ = attn(x, need_weights=True)
    assert torch.allclose(attn(x), out, atol=1e-5)


def test_logits_do_not_depend_on_asking_for_attention():
    model = tiny().eval()
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(model(x), model(x, return_attention=True)[0], atol=1e-5)


def test_rollout_rows_sum_to_one_for_every_fusion_and_discard():
    _, attns = tiny()(torch.randn(2, 3, 16, 16), return_attention=True)
    for fusion in ("mean", "max", "min"):
        for discard in (0.0, 0.5):
            r = attention_rollout(attns, fusion, discard)
            assert r.shape == (2, 17, 17) and torch.allclose(r.sum(-1), torch.ones(2, 17), atol=1e-5)


def test_rollout_of_identity_attention_is_identity():
    eye = torch.eye(5).expand(1, 2, 5, 5)
    assert torch.allclose(attention_rollout([eye, eye, eye]), torch.eye(5)[None])


def test_dim_must_be_a_multiple_of_heads():
    with pytest.raises(ValidationError, match="model.dim"):
        ViTConfig(dim=30, heads=4)


def test_a_few_steps_learn_a_separable_problem():
    model = tiny()
    x = torch.randn(64, 3, 16, 16)
    y = (x[:, 0, :8].mean((1, 2)) > 0).long()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        first = first or loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
