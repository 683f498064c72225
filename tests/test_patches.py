"""Patches: the order in which an image becomes tokens, and the way back."""

import pytest
import torch

from vdcli.models.patches import PatchEmbed, patchify, unpatchify


@pytest.mark.parametrize(
    "c,h,w,p",
    [(1, 28, 28, 7), (3, 32, 48, 16), (3, 8, 12, 4), (2, 6, 4, 2)],
    ids=["gray-square", "rgb-wide", "rgb-small", "tall"],
)
def test_patch_k_is_the_kth_row_major_block(c, h, w, p):
    img = torch.randn(c, h, w)
    seq = patchify(img[None], p)[0]
    cols = w // p
    assert seq.shape == ((h // p) * cols, c * p * p)
    for k in range(len(seq)):
        r, col = divmod(k, cols)
        assert torch.equal(seq[k], img[:, r * p : (r + 1) * p, col * p : (col + 1) * p].reshape(-1))


def test_a_patch_is_flattened_channel_first():
    img = torch.arange(2 * 2 * 2).view(1, 2, 2, 2).float()  # one 2x2 patch of two channels
    assert patchify(img, 2)[0, 0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7]  # channel 0's rows, then channel 1's


def test_each_image_in_a_batch_is_cut_on_its_own():
    x = torch.randn(3, 3, 8, 12)
    assert all(torch.equal(patchify(x, 4)[i], patchify(x[i : i + 1], 4)[0]) for i in range(3))


@pytest.mark.parametrize("c,h,w,p", [(3, 16, 24, 4), (1, 28, 28, 7), (4, 8, 8, 1), (2, 8, 8, 8)])
def test_unpatchify_inverts_patchify(c, h, w, p):
    x = torch.randn(2, c, h, w)
    assert torch.equal(unpatchify(patchify(x, p), p, c, h, w), x)


def test_patchify_inverts_unpatchify():
    seq = torch.randn(2, 6, 3 * 4 * 4)
    assert torch.equal(patchify(unpatchify(seq, 4, 3, 8, 12), 4), seq)


@pytest.mark.parametrize("h,w", [(28, 30), (30, 28), (27, 27)])
def test_indivisible_image_is_refused_with_the_sizes_in_the_message(h, w):
    with pytest.raises(ValueError, match=rf"{h}x{w} image does not split into 4x4 patches"):
        patchify(torch.zeros(1, 1, h, w), 4)


def test_unpatchify_refuses_patches_that_do_not_tile_the_image():
    with pytest.raises(ValueError, match="do not tile"):
        unpatchify(torch.zeros(1, 5, 16), 4, 1, 8, 8)  # 8x8 needs 4 patches, not 5


def test_patch_embedding_is_one_linear_map_of_each_patch():
    embed = PatchEmbed(4, 3, 10)
    x = torch.randn(2, 3, 8, 12)
    expected = patchify(x, 4) @ embed.proj.weight.T + embed.proj.bias
    assert embed(x).shape == (2, 6, 10) and torch.allclose(embed(x), expected, atol=1e-6)
