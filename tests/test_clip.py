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
