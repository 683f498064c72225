"""``vd sample --sweep``: a grid in which only the swept value changes. Every cell is made as a plain
``vd sample`` with the cell's options makes its images (the same seed, the same initial draw), so
the cell matching a plain sample is that sample, bit for bit, and equal values give equal cells."""

import numpy
import pytest
import torch
from PIL import Image

from test_cli import TINY_LDM, ok, recipe, vd
from test_text_ldm import TINY_TEXT
from vdcli import images
from vdcli.checkpoint import load_checkpoint
from vdcli.data import load_input
from vdcli.tasks import sweep as sweeps
from vdcli.tasks.controlnet import load_controlled
from vdcli.tasks.ldm import load_ldm


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny class model and a ControlNet on it, trained once for this file."""
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("VD_DATA_ROOT", str(root / "data"))
        torch.manual_seed(0)
        ok("train-ldm", recipe(root, "c", "ldm"), *TINY_LDM, "--quiet")
        ok("train-ldm", recipe(root, "t", "ldm"), *TINY_LDM, *TINY_TEXT, "--quiet")
        (root / "cn.yaml").write_text(f"kind: controlnet\nbase: {root}/runs/c/latest\ncontrol: edges\n")
        ok("train-controlnet", root / "cn.yaml", "--set", "train.steps=4", "--set", "train.batch_size=16",
           "--set", "train.eval_every=4", "--quiet")
    return {"ldm": root / "runs" / "c" / "latest", "text": root / "runs" / "t" / "latest", "cn": root / "runs" / "cn" / "latest", "data": root / "data"}


@pytest.fixture
def ldm(runs, monkeypatch):
    monkeypatch.setenv("VD_DATA_ROOT", str(runs["data"]))
    return load_ldm(load_checkpoint(runs["ldm"] / "checkpoint.safetensors"), torch.device("cpu"))


def written(path) -> torch.Tensor:
    """A PNG vd wrote, back as uint8 [C, H, W]."""
    with Image.open(path) as image:
        return torch.from_numpy(numpy.array(image.convert("L")))[None]


def plain(requests, **options) -> sweeps.Plain:
    return sweeps.Plain(**{**dict(requests=requests, n=2, batch_size=256, seed=0, sampler="ddim", steps=3, eta=None,
                                  guidance=3.0), **options})


def test_one_axis_a_column_per_value_and_the_matching_column_is_the_plain_sample(runs, ldm, tmp_path):
    grid = sweeps.sweep(ldm, [sweeps.Axis("guidance", [1.0, 3.0, 3.0])], plain(ldm.request("disk,square", 3.0)[0], seed=4))
    assert grid.shape == (4, 3, 1, 16, 16)  # rows: 2 classes x n = 2 images; a column per value
    assert torch.equal(grid[:, 1], grid[:, 2])  # the same value, the same cells
    assert not torch.equal(grid[:, 0], grid[:, 1])  # only the swept value changes them
    ok("sample", "--checkpoint", runs["ldm"], "--class", "disk,square", "--n", 2, "--steps", 3, "--guidance", 3,
       "--seed", 4, "--out", tmp_path / "p")
    files = ["disk_0", "disk_1", "square_0", "square_1"]
    assert all(torch.equal(grid[r, 1], written(tmp_path / "p" / "images" / f"{f}.png")) for r, f in enumerate(files))


@pytest.mark.parametrize("axes, cell, flags", [
    ([("steps", [2, 4]), ("eta", [0.0, 1.0])], (1, 1), ["--steps", 4, "--eta", 1]),
    ([("sampler", ["ddim", "ddpm", "dpmpp-2m"]), ("seed", [0, 9])], (1, 1), ["--sampler", "ddpm", "--seed", 9]),
    ([("eta", [0.0, 1.0]), ("guidance", [2.0])], (1, 0), ["--eta", 1, "--guidance", 2]),
], ids=["steps x eta", "sampler x seed", "eta x guidance"])
def test_two_axes_rows_by_columns_and_every_cell_is_its_plain_sample(runs, ldm, tmp_path, axes, cell, flags):
    grid = sweeps.sweep(ldm, [sweeps.Axis(k, v) for k, v in axes], plain(ldm.request("disk", 3.0)[0], n=1))
    assert grid.shape[:2] == (len(axes[0][1]), len(axes[1][1]))
    base = {"--steps": 3, "--guidance": 3, "--seed": 0, "--sampler": "ddim"}
    base.update(dict(zip(flags[::2], flags[1::2])))
    ok("sample", "--checkpoint", runs["ldm"], "--class", "disk", "--n", 1, *[x for kv in base.items() for x in kv],
       "--out", tmp_path / "p")
    assert torch.equal(grid[cell], written(tmp_path / "p" / "images" / "disk_0.png"))
    # the tiny model's guidance may change nothing for one class (its class embedding barely trained), steps and eta do
    others = [grid[r, c] for r in range(grid.shape[0]) for c in range(grid.shape[1]) if (r, c) != cell]
    assert not any(torch.equal(grid[cell], other) for other in others)


def test_strength_and_control_scale_are_axes_too(runs, ldm, tmp_path):
    image, _ = load_input("synthetic:test:0", 16, 1, runs["data"])
    grid = sweeps.sweep(ldm, [sweeps.Axis("strength", [0.3, 0.7, 0.7])], plain(ldm.request("disk", 3.0)[0], strength=0.8), image=image)
    assert torch.equal(grid[:, 1], grid[:, 2]) and not torch.equal(grid[:, 0], grid[:, 1])
    ok("sample", "--checkpoint", runs["ldm"], "--init", "synthetic:test:0", "--class", "disk", "--strength", "0.7",
       "--n", 2, "--steps", 3, "--guidance", 3, "--out", tmp_path / "i")
    assert all(torch.equal(grid[i, 1], written(tmp_path / "i" / "images" / f"strength0.7_{i}.png")) for i in range(2))

    controlled = load_controlled(load_checkpoint(runs["cn"] / "checkpoint.safetensors"), torch.device("cpu"))
    hint, _ = load_input("synthetic:test:1", 16, 1, runs["data"])
    from vdcli.controls import control_maps

    hint = control_maps(hint[None], controlled.control)[0]
    grid = sweeps.sweep(controlled.ldm, [sweeps.Axis("control-scale", [0.0, 1.0])], plain(ldm.request("disk", 3.0)[0]), controlled=controlled, hint=hint)
    ok("sample", "--controlnet", runs["cn"], "--control", "synthetic:test:1", "--class", "disk", "--n", 2, "--steps", 3,
       "--guidance", 3, "--control-scale", 0, "--out", tmp_path / "c")
    assert all(torch.equal(grid[i, 0], written(tmp_path / "c" / "images" / f"control0_{i}.png")) for i in range(2))
    assert not torch.equal(grid[:, 0], grid[:, 1])


def test_prompt_is_an_axis_of_a_text_model(runs, tmp_path, monkeypatch):
    text = load_ldm(load_checkpoint(runs["text"] / "checkpoint.safetensors"), torch.device("cpu"))
    asked, cell = [], sweeps.cell
    with monkeypatch.context() as m:
        m.setattr(sweeps, "cell", lambda ldm, p, **where: asked.append(p.requests) or cell(ldm, p, **where))
        grid = sweeps.sweep(text, [sweeps.Axis("prompt", ["a disk", "a square"])], plain(["a disk"]))
    # the tiny text model barely reads its prompt, so the columns may look alike: what each column asked is checked
    assert grid.shape[:2] == (2, 2) and asked == [["a disk"], ["a square"]]
    ok("sample", "--checkpoint", runs["text"], "--prompt", "a square", "--n", 2, "--steps", 3, "--guidance", 3,
       "--out", tmp_path / "p")
    assert all(torch.equal(grid[i, 1], written(tmp_path / "p" / "images" / f"a_square_{i}.png")) for i in range(2))
    ok("sample", "--checkpoint", runs["text"], "--sweep", "prompt=a disk,a square", "--steps", 3, "--out", tmp_path / "s")
    assert images.read_meta(tmp_path / "s" / "sweep.png")["sweep"] == ["prompt=a disk,a square"]


def test_the_cli_writes_a_labelled_sweep_that_remembers_itself(runs, ldm, tmp_path):
    out = ok("sample", "--checkpoint", runs["ldm"], "--class", "disk", "--steps", 3,
             "--sweep", "guidance=1,2,3", "--sweep", "sampler=ddim,dpmpp-2m", "--out", tmp_path / "s")
    assert "sweep of guidance (3) x sampler (2): 3 x 2 images" in out
    picture = Image.open(tmp_path / "s" / "sweep.png").convert("L")
    bare = images.grid(torch.zeros(6, 1, 16, 16, dtype=torch.uint8), nrow=2)
    left, top = picture.width - bare.width, picture.height - bare.height
    assert left > 0 and top > 0  # room for the labels ...
    assert picture.crop((0, top, left, picture.height)).getextrema()[0] < 128  # ... and text in it: rows
    assert picture.crop((left, 0, picture.width, top)).getextrema()[0] < 128  # columns
    meta = images.read_meta(tmp_path / "s" / "sweep.png")
    assert meta["sweep"] == ["guidance=1,2,3", "sampler=ddim,dpmpp-2m"] and meta["guidance"] is None and meta["file"] == "sweep.png"
    ok("sample", "--from", tmp_path / "s" / "sweep.png", "--out", tmp_path / "again")
    assert Image.open(tmp_path / "again" / "sweep.png").tobytes() == Image.open(tmp_path / "s" / "sweep.png").tobytes()
    ok("sample", "--checkpoint", runs["ldm"], "--class", "disk,square", "--n", 2, "--steps", 3, "--sweep", "seed=1,2",
       "--out", tmp_path / "one")
    assert Image.open(tmp_path / "one" / "sweep.png").height > Image.open(tmp_path / "one" / "sweep.png").width  # 4 rows, 2 columns


@pytest.mark.parametrize("args, says", [
    (["--sweep", "guidanse=1,2"], "unknown key 'guidanse' (did you mean guidance?)"),
    (["--sweep", "steps=5,ten"], "'ten' is not a whole number"),
    (["--sweep", "guidance=1,x"], "'x' is not a number"),
    (["--sweep", "guidance=1", "--sweep", "guidance=2"], "given twice"),
    (["--sweep", "sampler=ddim,ddimm"], "no sampler 'ddimm'"),
    (["--sweep", "steps=1", "--sweep", "eta=0", "--sweep", "seed=1"], "at most two"),
    (["--sweep", "strength=0.3,0.5"], "give the image with --init"),
    (["--sweep", "control-scale=0,1"], "--controlnet"),
    (["--sweep", "strength=0.5,2", "--init", "synthetic:test:0"], "out of range"),
    (["--sweep", "guidance"], "give KEY=V1,V2"),
    (["--sweep", "guidance=1,2", "--guidance", 3], "given twice"),
    (["--sweep", "seed=1,2", "--seed", 3], "given twice"),
    (["--sweep", "steps=2", "--trajectory"], "--trajectory"),
], ids=lambda x: x if isinstance(x, str) else None)
def test_a_bad_sweep_is_one_line_exit_2_before_anything_is_loaded(tmp_path, args, says):
    result = vd("sample", "--checkpoint", tmp_path / "nothing_here", *args)  # never read: the sweep fails first
    assert result.exit_code == 2 and says in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("args, says", [
    (["--sweep", "prompt=a disk,a square"], "text"),
    (["--sweep", "steps=2,5000"], "steps"),
    (["--sweep", "eta=0,1", "--sampler", "ddpm"], "only the ddim sampler takes eta"),
    (["--sweep", "sampler=ddim,ddpm", "--eta", 0.5], "only the ddim sampler takes eta"),
    (["--sweep", "steps=2", "--sweep", "guidance=1,2", "--class", "disk,square"], "one image per cell"),
    (["--sweep", "steps=2", "--sweep", "guidance=1,2", "--n", 2], "one image per cell"),
], ids=lambda x: x if isinstance(x, str) else None)
def test_a_sweep_the_model_cannot_make_is_one_line_exit_2_before_sampling(runs, ldm, args, says):
    result = vd("sample", "--checkpoint", runs["ldm"], "--class", "disk", *args)
    assert result.exit_code == 2 and says in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
