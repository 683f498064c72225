"""Streaming: a folder read from disk at each step trains exactly as the same folder in memory.

Every test makes its own small folder of coloured shapes (bench/make_shapes.py) in tmp_path.
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_cli import ok

from vdcli.checkpoint import load_checkpoint
from vdcli.data import load_split
from vdcli.errors import VdError
from vdcli.recipe import DataConfig
from vdcli.shards import ShardColumn, open_shards, shard_matches, shard_path, shard_ranges, write_shard
from vdcli.streaming import FolderImages, step_batches
from vdcli.trainer import BatchOrder

ROOT = Path(__file__).parents[1]
_spec = importlib.util.spec_from_file_location("make_shapes", ROOT / "bench" / "make_shapes.py")
make_shapes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_shapes)

# An LDM small enough for a few seconds on one CPU thread, on a folder at 16x16.
TINY = ["--set", "data.image_size=16", "--set", "data.workers=0", "--set", "vae.model.downsample=4",
        "--set", "vae.model.channels=8", "--set", "vae.train.steps=3", "--set", "vae.train.batch_size=8",
        "--set", "vae.train.warmup_steps=1", "--set", "model.channels=16", "--set", "model.blocks_per_level=1",
        "--set", "train.steps=4", "--set", "train.batch_size=8", "--set", "train.warmup_steps=1",
        "--set", "train.log_every=1", "--set", "sample.steps=2", "--quiet"]


def folder(tmp_path, n=90, size=24, **options) -> Path:
    return make_shapes.make_shapes(tmp_path / "shapes", n, size, seed=0, **options)


def losses(run: Path) -> list[float]:
    return [row["loss"] for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in row]


def test_the_shapes_script_is_deterministic_and_writes_hugging_face_metadata(tmp_path):
    a = make_shapes.make_shapes(tmp_path / "a", 12, 16, seed=3)
    b = make_shapes.make_shapes(tmp_path / "b", 12, 16, seed=3)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.png")) and len(files) == 12
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    line = json.loads((a / "metadata.jsonl").read_text().splitlines()[0])
    assert (a / line["file_name"]).is_file() and line["text"].split()[-1] == line["file_name"].split("/")[0]
    assert Image.open(a / files[0]).mode == "RGB"


@pytest.mark.parametrize("options", [{}, {"captions": False}, {"flat": True}], ids=["metadata", "no-metadata", "flat"])
def test_a_streamed_folder_gives_the_images_and_labels_of_the_in_memory_loader(tmp_path, options):
    path = folder(tmp_path, **options)
    cfg = DataConfig(name="folder", path=str(path), image_size=16, channels=3)
    for split in ("train", "test"):
        memory, streamed = load_split(cfg, split), load_split(cfg.model_copy(update={"stream": True}), split)
        assert isinstance(streamed.images, FolderImages) and streamed.images.shape == memory.images.shape
        assert torch.equal(streamed.images[: len(streamed)], memory.images)
        assert torch.equal(streamed.labels, memory.labels) and streamed.classes == memory.classes


def test_a_streamed_folder_is_rgb_and_honours_the_limit(tmp_path):
    cfg = DataConfig(name="folder", path=str(folder(tmp_path)), image_size=16, stream=True, limit=10)
    data = load_split(cfg, "train")
    assert len(data) == 10 and data.images.shape == (10, 3, 16, 16)


@pytest.mark.parametrize("workers", [0, 2])
def test_workers_read_exactly_the_rows_of_each_step_from_the_step_a_run_resumes_at(tmp_path, workers):
    cfg = DataConfig(name="folder", path=str(folder(tmp_path)), image_size=16, channels=3)
    memory = load_split(cfg, "train")
    streamed = load_split(cfg.model_copy(update={"stream": True, "workers": workers}), "train")
    order = BatchOrder(len(memory), 8, seed=5)
    start, steps = 3, 14  # crosses an epoch: 81 training images make 10 batches of 8
    batches = list(step_batches((streamed.images, streamed.labels), order, start, steps, 0, 1, torch.device("cpu")))
    assert len(batches) == steps - start
    for step, (images, labels) in zip(range(start + 1, steps + 1), batches):
        rows = order(step - 1)
        assert torch.equal(images, memory.images[rows]) and torch.equal(labels, memory.labels[rows])


def test_latent_shards_round_trip_across_shard_boundaries(tmp_path):
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(20, 4, 2, 2, generator=g), torch.randn(20, 4, 2, 2, generator=g)
    labels = torch.randint(3, (20,), generator=g)
    paths = []
    for k, (first, end) in enumerate(shard_ranges(20, rows=7)):  # 7 + 7 + 6 rows
        paths.append(shard_path(tmp_path, k))
        write_shard(paths[-1], first, 20, mean[first:end], logvar[first:end], labels[first:end])
    assert [p.name for p in paths] == ["shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors"]
    columns = open_shards(paths)
    for rows in (torch.tensor([6, 7, 13, 14, 0, 19]), torch.randperm(20, generator=g), torch.tensor([2]), torch.tensor([0, 6])):
        for column, full in zip(columns, (mean, logvar, labels)):
            assert torch.equal(column[rows], full[rows])
    assert len(columns[0]) == 20 and columns[0].shape == (20, 4, 2, 2) and torch.equal(columns[1][5:16], logvar[5:16])


def test_a_shard_of_another_folder_is_refused_with_what_to_do(tmp_path):
    write_shard(tmp_path / "s.safetensors", 0, 5, torch.zeros(5, 1), torch.zeros(5, 1), torch.tensor([0, 0, 1, 1, 2]))
    assert shard_matches(tmp_path / "s.safetensors", 0, 5, torch.tensor([0, 0, 1, 1, 2]))
    with pytest.raises(VdError, match="different image folder.*delete"):
        shard_matches(tmp_path / "s.safetensors", 0, 5, torch.tensor([0, 0, 1, 2, 2]))


def test_a_shard_column_goes_to_a_spawned_worker_without_its_open_files(tmp_path):
    import pickle  # only to check what a spawned DataLoader worker is sent; vd never loads a pickle

    write_shard(tmp_path / "s.safetensors", 0, 3, torch.arange(3.0)[:, None], torch.zeros(3, 1), torch.zeros(3))
    column = ShardColumn([tmp_path / "s.safetensors"], "mean")
    assert column[torch.tensor([2])].item() == 2.0  # opens the file
    assert pickle.loads(pickle.dumps(column))[torch.tensor([1])].item() == 1.0


def test_a_streamed_ldm_run_trains_bitwise_like_the_same_folder_in_memory(tmp_path):
    path = folder(tmp_path, captions=False)
    shipped = ROOT / "recipes" / "folder_latent64.yaml"
    ok("train-ldm", shipped, "--set", f"data.path={path}", "--set", "data.stream=false", "--out", "memory", *TINY)
    ok("train-ldm", shipped, "--set", f"data.path={path}", "--out", "streamed", *TINY)
    memory, streamed = Path("memory/folder_latent64/latest"), Path("streamed/folder_latent64/latest")
    assert (streamed / "latents" / "shard-00000.safetensors").is_file() and not (memory / "latents").exists()
    assert losses(memory) == losses(streamed) and len(losses(streamed)) == 4
    a, b = load_checkpoint(memory / "checkpoint.safetensors"), load_checkpoint(streamed / "checkpoint.safetensors")
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)


def test_a_resumed_streamed_run_is_bitwise_the_uninterrupted_one(tmp_path):
    path = folder(tmp_path, captions=False)
    shipped = ROOT / "recipes" / "folder_latent64.yaml"
    ok("train-ldm", shipped, "--set", f"data.path={path}", "--out", "whole", *TINY)
    ok("train-ldm", shipped, "--set", f"data.path={path}", "--out", "parts", *TINY, "--set", "train.steps=2")
    shard = Path("parts/folder_latent64/latest/latents/shard-00000.safetensors")
    written = shard.stat().st_mtime_ns
    ok("train-ldm", shipped, "--set", f"data.path={path}", "--out", "parts", *TINY, "--resume")
    assert shard.stat().st_mtime_ns == written  # the shards were reused, not encoded again
    a = load_checkpoint(Path("whole/folder_latent64/latest/checkpoint.safetensors"))
    b = load_checkpoint(Path("parts/folder_latent64/latest/checkpoint.safetensors"))
    assert b.meta["step"] == 4 and all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)


def test_the_folder_recipe_trains_an_unconditional_model_on_a_flat_folder_and_samples(tmp_path):
    """recipes/folder_latent64.yaml as a user runs it, with its one path set, shrunk with --set."""
    path = make_shapes.make_shapes(tmp_path / "my_photos", 24, 64, flat=True, captions=False)
    shipped = ROOT / "recipes" / "folder_latent64.yaml"
    out = ok("train-ldm", shipped, "--set", f"data.path={path}", *TINY, "--set", "data.image_size=64",
             "--set", "vae.model.downsample=8")
    assert "denoiser trained" in out and "--n 16" in out
    ckpt = load_checkpoint(Path("runs/folder_latent64/latest/checkpoint.safetensors"))
    assert ckpt.meta["conditioning"] == "none" and ckpt.meta["data"]["channels"] == 3 and ckpt.meta["data"]["image_size"] == 64
    assert "2 images" in ok("sample", "--n", 2, "--steps", 2, "--out", tmp_path / "s")
    assert Image.open(tmp_path / "s" / "images" / "unconditional_0.png").mode == "RGB"
    out = ok("sample", "--init", str(path / "00000.png"), "--strength", "0.5", "--n", 1, "--steps", 2, "--out", tmp_path / "i")
    assert "made anew" in out


def test_the_cifar10_recipe_trains_a_class_model_on_a_folder_of_rgb_32x32_images_and_samples(tmp_path):
    path = make_shapes.make_shapes(tmp_path / "shapes32", 72, 32)
    shipped = ROOT / "recipes" / "cifar10_latent.yaml"
    out = ok("train-ldm", shipped, "--set", "data.name=folder", "--set", f"data.path={path}", *TINY, "--set", "data.image_size=32")
    assert "denoiser trained" in out
    ckpt = load_checkpoint(Path("runs/cifar10_latent/latest/checkpoint.safetensors"))
    assert ckpt.meta["conditioning"] == "class" and ckpt.meta["latent_shape"] == [4, 8, 8]
    assert ckpt.meta["data"]["classes"] == sorted(make_shapes.synthetic_shapes(6).classes)
    assert "2 images" in ok("sample", "--class", "disk", "--n", 2, "--steps", 2, "--out", tmp_path / "s")


def test_a_text_model_on_a_streamed_folder_learns_the_words_of_its_metadata_jsonl(tmp_path):
    from test_text_ldm import TINY_TEXT

    path = folder(tmp_path)
    shipped = ROOT / "recipes" / "folder_latent64.yaml"
    ok("train-ldm", shipped, "--set", f"data.path={path}", *TINY, *TINY_TEXT, "--set", "clip.train.batch_size=8")
    ckpt = load_checkpoint(Path("runs/folder_latent64/latest/checkpoint.safetensors"))
    assert ckpt.meta["conditioning"] == "text" and "shard-00000.safetensors" in str(list(Path("runs/folder_latent64/latest/latents").iterdir()))
    assert "orange" in json.dumps(ckpt.meta["clip"])  # a colour: only metadata.jsonl says it; class names are shapes
    assert "1 images" in ok("sample", "--prompt", "an orange disk", "--n", 1, "--steps", 2, "--out", tmp_path / "s")
