"""The contrastive loss and the CLIP towers, before any training."""

import math

import torch

from vdcli.data import synthetic_shapes, to_float
from vdcli.models.clip import CLIP, CLIPConfig, clip_loss
from vdcli.tokenizer import Tokenizer
from vdcli.trainer import seeded_init


def test_clip_loss_is_symmetric_and_zero_for_a_perfect_match():
    logits = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(clip_loss(logits), clip_loss(logits.T))
    assert clip_loss(100 * torch.eye(8)) < 1e-6
    assert torch.isclose(clip_loss(torch.zeros(8, 8)), torch.tensor(math.log(8)))


def test_clip_loss_at_initialisation_is_about_log_batch():
    """An untrained CLIP cannot tell which caption is whose: every pairing is about equally likely."""
    batch = 32
    shapes = synthetic_shapes(batch, 16, seed=0)
    tokenizer = Tokenizer.train([f"a {c}" for c in shapes.classes], max_length=8)
    with seeded_init(0, "clip"):
        model = CLIP(CLIPConfig(), 16, 1, tokenizer.vocab_size).eval()
    ids, mask = tokenizer.encode([f"a {shapes.classes[int(y)]}" for y in shapes.labels])
    with torch.no_grad():
        loss = clip_loss(model(to_float(shapes.images), ids, mask))
    assert abs(loss.item() - math.log(batch)) < 0.3, loss.item()


def _text_tower():
    tokenizer = Tokenizer.train(["a red disk", "a blue square on top"], max_length=8)
    with seeded_init(0, "clip"):
        model = CLIP(CLIPConfig(), 16, 1, tokenizer.vocab_size).eval()
    ids, mask = tokenizer.encode(["a red disk", "a blue square on top"])
    return model.text, ids, mask


def test_text_attention_maps_are_causal_probabilities_one_per_layer():
    text, ids, mask = _text_tower()
    maps = text.attention_maps(ids, mask)
    B, L = ids.shape
    assert len(maps) == text.cfg.depth and all(m.shape == (B, text.cfg.heads, L, L) for m in maps)
    above = torch.ones(L, L, dtype=torch.bool).triu(1)
    for m in maps:
        assert torch.allclose(m.sum(-1), torch.ones(B, text.cfg.heads, L), atol=1e-6)
        assert m[..., above].abs().max() == 0 and (m[..., ~above] > 0).all()


def test_text_attention_maps_are_the_probabilities_the_tower_computes():
    """The second layer's map depends on the first layer's output: the maps are of the real forward."""
    text, ids, mask = _text_tower()
    maps = text.attention_maps(ids, mask)
    with torch.no_grad():
        block = text.blocks[0]
        x = text.token_embed(ids) + text.pos_embed[:, :ids.shape[1]]
        _, first = block.attn(block.norm1(x), need_weights=True)
        second_block = text.blocks[1]
        _, second = second_block.attn(second_block.norm1(block(x)), need_weights=True)
    assert torch.allclose(maps[0], first, atol=1e-6) and torch.allclose(maps[1], second, atol=1e-6)
