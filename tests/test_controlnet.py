"""ControlNet: control maps on hand-made images, the zero start, a frozen base, and the commands."""

from pathlib import Path

import pytest
import torch
from PIL import Image
from test_cli import TINY_LDM, ok, recipe, vd

from vdcli.conditioning import Cond
from vdcli.controls import CONTROLS, control_map
from vdcli.models.controlnet import ControlNet, Controlled, DiTControlNet, controlnet_for
from vdcli.models.dit import DiT, DiTConfig
from vdcli.models.unet import UNet, UNetConfig


def square(size: int = 16, lo: int = 4, hi: int = 12) -> torch.Tensor:
    image = torch.zeros(1, size, size, dtype=torch.uint8)
    image[:, lo:hi, lo:hi] = 255
    return image


def test_edges_of_a_square_are_its_outline():
    edges = control_map(square(), "edges")[0] > 127  # (16, 16)
    assert edges.shape == (16, 16) and edges.any()
    assert not edges[:2].any() and not edges[7:9, 7:9].any()  # nothing far outside, nothing in the flat middle
    rows, cols = edges.nonzero().T
    assert rows.min() >= 2 and rows.max() <= 13 and cols.min() >= 2 and cols.max() <= 13  # hugging the square's sides


def test_scribble_of_a_thick_line_is_its_one_pixel_centre_line():
    line = torch.zeros(1, 16, 16, dtype=torch.uint8)
    line[:, 6:11, 2:14] = 255  # a horizontal bar five pixels thick, centred on row 8
    skeleton = control_map(line, "scribble")[0] > 127
    assert skeleton[8, 5:11].all()  # the centre row (its ends fork towards the corners, as skeletons of rectangles do)
    assert skeleton.sum(0)[5:11].eq(1).all()  # one pixel thick
    assert not skeleton[:6].any() and not skeleton[11:].any()


def test_depth_rises_towards_the_middle_of_the_stroke_and_is_zero_outside():
    depth = control_map(square(16, 2, 14), "depth")[0].int()
    assert depth[0].eq(0).all() and depth[7:9, 7:9].max() == 255  # the centre is the deepest
    assert depth[8, 3] < depth[8, 5] < depth[8, 7]


@pytest.mark.parametrize("kind", CONTROLS)
def test_control_maps_move_with_the_stroke_and_invert_a_light_page(kind):
    image = square()
    moved = torch.roll(image, (2, 1), dims=(1, 2))  # the square two rows down, one column right, still inside
    assert torch.equal(control_map(moved, kind), torch.roll(control_map(image, kind), (2, 1), dims=(1, 2)))
    assert torch.equal(control_map(image, kind), control_map(255 - image, kind))  # dark square on white: the same map


def test_at_initialisation_the_controlled_model_is_exactly_the_base():
    torch.manual_seed(0)
    base = UNet(UNetConfig(channels=16, blocks_per_level=1), 8, 4, 3)
    for p in base.parameters():  # a "trained" base: no zero layers left
        torch.nn.init.normal_(p, std=0.05)
    net = ControlNet(base, factor=4)
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.tensor([0, 3])
    hint = torch.rand(1, 1, 32, 32)
    assert torch.equal(Controlled(base, net, hint)(x, t, Cond(labels=y)), base(x, t, Cond(labels=y)))
    residuals = net(x, t, hint.expand(2, -1, -1, -1), Cond(labels=y))
    assert all(r.abs().max() == 0 for r in residuals)
    # ... and yet every new weight is reachable: the zero convs get gradient from the first step
    Controlled(base, net, hint)(x, t, Cond(labels=y)).pow(2).sum().backward()
    assert all(z.weight.grad is not None and z.weight.grad.abs().sum() > 0 for z in net.zero)


def test_train_controlnet_keeps_the_base_frozen_and_steers_sampling(tmp_path):
    ok("train-ldm", recipe(tmp_path, "base", "ldm"), *TINY_LDM, "--quiet")
    base_ckpt = Path("runs/base/latest/checkpoint.safetensors")
    before = base_ckpt.read_bytes()
    cn = tmp_path / "cn.yaml"
    cn.write_text("kind: controlnet\nbase: runs/base/latest\ncontrol: edges\n")
    out = ok("train-controlnet", cn, "--set", "train.steps=6", "--set", "train.batch_size=16", "--set", "train.eval_every=6",
             "--set", "train.log_every=3")
    assert "ControlNet trained: 6 steps" in out
    run = Path("runs/cn/latest")
    assert (run / "samples_000006.png").is_file() and (run / "controls.safetensors").is_file()
    assert base_ckpt.read_bytes() == before  # the base is untouched

    from vdcli.checkpoint import load_checkpoint
    from vdcli.tasks.controlnet import embedded_base

    ckpt = load_checkpoint(run / "checkpoint.safetensors", "controlnet")
    base = load_checkpoint(base_ckpt, "ldm")
    carried = embedded_base(ckpt)
    assert all(torch.equal(carried.tensors[k], v) for k, v in base.tensors.items())  # the base travels along, unchanged

    out = ok("sample", "--controlnet", run, "--control", "synthetic:test:0", "--control", "synthetic:test:1",
             "--class", "all", "--n", 1, "--steps", 3, "--out", tmp_path / "s")
    assert "2 control maps" in out
    assert Image.open(tmp_path / "s" / "grid.png").height > 16 * 2
    zero = ok("sample", "--controlnet", run, "--control", "synthetic:test:0", "--control-scale", 0, "--class", "disk",
              "--n", 2, "--steps", 3, "--out", tmp_path / "z")
    assert "scale 0" in zero
    plain = ok("sample", "--checkpoint", "runs/base/latest", "--class", "disk", "--n", 2, "--steps", 3, "--out", tmp_path / "p")
    assert "2 images" in plain
    for i in range(2):  # scale 0 is exactly the base model
        assert Image.open(tmp_path / "z" / "images" / f"control0_{i}.png").tobytes() == \
            Image.open(tmp_path / "p" / "images" / f"disk_{i}.png").tobytes()
    ok("sample", "--controlnet", run, "--control", "synthetic:test:0", "--class", "disk", "--n", 2, "--steps", 3,
       "--out", tmp_path / "e")
    out = ok("sample", "--controlnet", run, "--control", "synthetic:test:0", "--class", "disk", "--n", 2, "--steps", 3,
             "--out", tmp_path / "c", "--compile")
    assert "compiled" in out
    from vdcli.data import read_image

    for i in range(2):  # the base and the ControlNet compiled: the same images, rounded differently
        eager, compiled = (read_image(tmp_path / d / "images" / f"control0_{i}.png").int() for d in "ec")
        assert (eager - compiled).abs().max() <= 2

    ok("control", "synthetic:test:0", "--type", "scribble", "--out", tmp_path / "m")
    out = ok("sample", "--controlnet", run, "--control", tmp_path / "m" / "scribble.png", "--class", "disk", "--n", 1,
             "--steps", 3, "--init", "synthetic:test:2", "--strength", "0.5", "--out", tmp_path / "i")
    assert "made anew" in out
    out = ok("inpaint", "synthetic:test:1", "--mask", "box:0,8,16,16", "--controlnet", run, "--control", "synthetic:test:1",
             "--class", "disk", "--n", 1, "--steps", 3, "--out", tmp_path / "f")
    assert "filled" in out
    result = vd("sample", "--controlnet", run, "--checkpoint", "runs/base/latest", "--control", "synthetic:test:0")
    assert result.exit_code == 2 and "carries its base" in result.output


def test_a_text_base_trains_a_controlnet_and_samples_a_row_per_map_a_column_per_prompt(tmp_path):
    from test_text_ldm import TINY_TEXT

    ok("train-ldm", recipe(tmp_path, "t", "ldm"), *TINY_LDM, *TINY_TEXT, "--quiet")
    cn = tmp_path / "cnt.yaml"
    cn.write_text("kind: controlnet\nbase: runs/t/latest\ncontrol: depth\n")
    out = ok("train-controlnet", cn, "--set", "train.steps=4", "--set", "train.batch_size=16", "--set", "train.eval_every=4")
    assert "ControlNet trained: 4 steps" in out
    out = ok("sample", "--controlnet", "runs/cnt/latest", "--control", "synthetic:test:0", "--prompt", "a disk", "--prompt", "square",
             "--n", 2, "--steps", 3, "--out", tmp_path / "s")
    assert "1 control maps x 4 images" in out and "a disk, square" in out
    result = vd("sample", "--controlnet", "runs/cnt/latest", "--control", "synthetic:test:0", "--class", "disk", "--prompt", "disk")
    assert result.exit_code == 2


def _trained_dit(context_dim=None):
    torch.manual_seed(0)
    base = DiT(DiTConfig(patch_size=2, dim=32, depth=4, heads=4), 8, 4, 0 if context_dim else 3, context_dim=context_dim)
    for p in base.parameters():  # a "trained" base: no zero layers left
        torch.nn.init.normal_(p, std=0.05)
    return base


@pytest.mark.parametrize("context_dim", [None, 12], ids=["class", "text"])
def test_a_dit_controlnet_copies_the_first_blocks_and_starts_as_exactly_the_base(context_dim):
    base = _trained_dit(context_dim)
    net = controlnet_for(base, factor=4)
    assert isinstance(net, DiTControlNet) and len(net.blocks) == 2  # half the base's blocks
    assert all(torch.equal(a, b) for a, b in zip(net.blocks.state_dict().values(), base.blocks[:2].state_dict().values()))
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    cond = Cond(labels=torch.tensor([0, 3])) if context_dim is None else \
        Cond(states=torch.randn(2, 5, 12), mask=torch.ones(2, 5, dtype=torch.bool), pooled=torch.randn(2, 12))
    hint = torch.rand(1, 1, 32, 32)
    assert torch.equal(Controlled(base, net, hint)(x, t, cond), base(x, t, cond))
    # ... and every new weight is reachable: the zero linears get gradient from the first step
    Controlled(base, net, hint)(x, t, cond).pow(2).sum().backward()
    assert all(z.weight.grad is not None and z.weight.grad.abs().sum() > 0 for z in net.zero)


def test_a_dit_controlnet_steers_its_base_once_trained():
    base = _trained_dit()
    net = controlnet_for(base, factor=4)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, t, cond = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), Cond(labels=torch.tensor([0, 3]))
    a, b = torch.zeros(1, 1, 32, 32), torch.ones(1, 1, 32, 32)
    assert not torch.allclose(Controlled(base, net, a)(x, t, cond), Controlled(base, net, b)(x, t, cond))
    assert torch.equal(Controlled(base, net, b, scale=0.0)(x, t, cond), base(x, t, cond))


TINY_DIT = ["--set", "model.arch=dit", "--set", "model.dim=32", "--set", "model.depth=2", "--set", "model.heads=2"]


def test_a_text_dit_and_a_controlnet_on_a_dit_train_and_sample_through_the_same_commands(tmp_path):
    from test_text_ldm import TINY_TEXT

    unet_only = {"--set model.channels=16", "--set model.blocks_per_level=1"}
    tiny = [a for pair in zip(TINY_LDM[::2], TINY_LDM[1::2]) if f"{pair[0]} {pair[1]}" not in unet_only for a in pair]
    ok("train-ldm", recipe(tmp_path, "td", "ldm"), *tiny, *TINY_TEXT, *TINY_DIT, "--quiet")
    ckpt_meta = Path("runs/td/latest/checkpoint.safetensors")
    out = ok("sample", "--checkpoint", "runs/td/latest", "--prompt", "a disk", "--n", 2, "--steps", 3, "--out", tmp_path / "s")
    assert "2 images" in out and ckpt_meta.is_file()
    cn = tmp_path / "cnd.yaml"
    cn.write_text("kind: controlnet\nbase: runs/td/latest\ncontrol: edges\n")
    out = ok("train-controlnet", cn, "--set", "train.steps=4", "--set", "train.batch_size=16", "--set", "train.eval_every=4")
    assert "ControlNet trained: 4 steps" in out
    out = ok("sample", "--controlnet", "runs/cnd/latest", "--control", "synthetic:test:0", "--prompt", "a disk", "--n", 2,
             "--steps", 3, "--out", tmp_path / "c")
    assert "1 control maps x 2 images" in out
